"""Probe-guided boost (docs/methods.md): the encoders the decoupled probes find
under-used get their gradients scaled up.

Math: `asgml_jax.transforms.boost`. Stage `edit`, after OGM-GE (rank 60):
OGM-GE throttles the dominant, boost then pushes the weak (docs/methods.md, composition).

Reference: ASGML's own method (the research team's design, docs/methods.md); the
reference protocol is the design.
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms.boost import boost


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=0.5, scale_max=2.0, ema_alpha=0.3,
      noise_sigma=0.0,       # seeds' code: N(0, sigma*std(g)) on conv gradients
  ))


def check_block(config) -> None:
  b = config.method.boost
  cc.at_least(config, "method.boost.alpha", 0)
  cc.at_least(config, "method.boost.scale_max", 1)
  cc.require(0 < b.ema_alpha <= 1, "method.boost.ema_alpha",
             f"must be in (0, 1], got {b.ema_alpha!r}")
  cc.at_least(config, "method.boost.noise_sigma", 0)


def preset(config) -> None:
  config.method.boost.alpha = 0.5


def transform(ctx):
  b = ctx.config.method.boost
  return [boost(b.alpha, b.scale_max, b.ema_alpha, noise_sigma=b.noise_sigma,
                seed=ctx.config.seed + 1)]


BOOST = Method(
    name="boost", summary="probe-guided boost of the under-used encoders' gradients",
    settings=Settings(block="boost", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(
        seed_code=(("method.boost.ema_alpha", 0.3), ("method.boost.noise_sigma", 0.1))),
    optax=Optax(stage="edit", rank=60, transform=transform),
    logging=Logging(signals=(Signal("scales", "boost/scale", "boost scale"),)))
