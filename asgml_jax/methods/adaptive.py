"""Adaptive staleness (docs/methods.md): each encoder's update period τ_m from its
normalised gradient-norm and loss-descent signals (or the probes').

Stage `schedule` (`asgml_jax.transforms.schedule`, mode "adaptive",
`AdaptiveConfig`); every key of `method.adaptive` is a field of that config.

Reference: ASGML's own method (docs/methods.md); its reference protocol is the design.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Method, Optax, Protocols, Settings
from asgml_jax.transforms.schedule import AdaptiveConfig, modality_schedule


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      tau_base=2.0, tau_max=8.0, beta=0.5, lam=0.1, window=10, kappa=3.0,
      warmup_steps=0,
      source="dual",         # dual | probe | both
      threshold_delta=0.0, update_ratio_min=0.0,
      compensation="multiply",  # multiply | divide (seeds' code)
      kappa_mode="relative",    # relative | absolute (seeds' code)
      signals="design",         # design | seed_code
      grad_norm_ema=0.1,
      off_steps="skip",         # skip | soft_mask (seeds' code: ×soft_mask_scale, optimizer acts)
      soft_mask_scale=0.1,
  ))


def check_block(config) -> None:
  ad = config.method.adaptive
  cc.one_of(ad.source, ("dual", "probe", "both"), "method.adaptive.source")
  cc.one_of(ad.compensation, ("multiply", "divide", "none"), "method.adaptive.compensation")
  cc.one_of(ad.off_steps, ("skip", "soft_mask"), "method.adaptive.off_steps")
  cc.in_range(config, "method.adaptive.soft_mask_scale", 0, 1)
  cc.one_of(ad.kappa_mode, ("relative", "absolute"), "method.adaptive.kappa_mode")
  cc.one_of(ad.signals, ("design", "seed_code"), "method.adaptive.signals")
  cc.at_least(config, "method.adaptive.tau_max", 1)
  cc.in_range(config, "method.adaptive.beta", 0, 1)
  cc.at_least(config, "method.adaptive.kappa", 1)
  cc.positive(config, "method.adaptive.window", integer=True)
  cc.require(0 <= ad.update_ratio_min <= 1, "method.adaptive.update_ratio_min",
             "must be in [0, 1]")


def schedule(ctx, inner):
  ad = ctx.config.method.adaptive
  cfg = AdaptiveConfig(**{f.name: ad[f.name] for f in dataclasses.fields(AdaptiveConfig)})
  return modality_schedule(inner, "adaptive", adaptive=cfg)


ADAPTIVE = Method(
    name="adaptive", summary="ASGML adaptive: per-encoder update periods from training signals",
    settings=Settings(block="adaptive", defaults=defaults, check_block=check_block),
    protocols=Protocols(seed_code=(("method.adaptive.compensation", "none"),
                                   ("method.adaptive.off_steps", "soft_mask"),
                                   ("method.adaptive.kappa_mode", "absolute"),
                                   ("method.adaptive.signals", "seed_code"))),
    optax=Optax(stage="schedule", schedule=schedule))
