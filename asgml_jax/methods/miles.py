"""MILES (Guerra-Manzanares & Shamout, 2025): each encoder's learning rate set
once per epoch from the validation utilization of its modality.

Stage `post` (`asgml_jax.transforms.miles`: encoder m's final update ×
`miles_lr_scale[m]`, a per-encoder learning rate). The factors come from an
epoch hook reading the validation accuracies (fused and per unimodal head).
Its variant gives each modality a separate head, judged on validation.

Reference: no official code; the rule as a third-party reimplementation does
it (docs/methods.md, the baselines); the reference protocol is its variant's settings.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Epoch, Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms import miles as miles_lib
from asgml_jax.transforms.miles import miles


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      tau=0.2,               # rebalance only when max u − min u > tau
      mu=0.5,                # the dominant encoder's learning-rate factor
  ))


def check_block(config) -> None:
  cc.at_least(config, "method.miles.tau", 0)
  cc.positive(config, "method.miles.mu")


def preset(config) -> None:
  config.model.unimodal_heads = "separate"  # its unimodal heads, judged on validation
  config.loss.unimodal_weight = 1.0


def transform(ctx):
  return [miles()]


class LearningRateFactors:
  """The epoch hook: after each evaluation, the next epoch's factors."""

  def __init__(self, ctx):
    self.names = ctx.names
    self.block = ctx.config.method.miles

  def prepare(self, state, data_key) -> dict:
    return {}

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    u = miles_lib.utilization_rates(
        validation["accuracy"], {m: validation[f"unimodal_accuracy_{m}"] for m in self.names})
    scales = miles_lib.next_lr_scales(u, self.block.tau, self.block.mu)
    return {"miles_lr_scale": {m: np.float32(v) for m, v in scales.items()},
            "miles_utilization": {m: np.float32(v) for m, v in u.items()}}


MILES = Method(
    name="miles", summary="MILES: per-encoder learning rates from validation utilization",
    settings=Settings(block="miles", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(
        reference=(("model.unimodal_heads", "separate"), ("loss.unimodal_weight", 1.0))),
    optax=Optax(stage="post", transform=transform),
    epoch=Epoch(hook=LearningRateFactors),
    logging=Logging(
        signals=(Signal("miles_lr_scale", "miles/lr_scale", "MILES learning-rate factor"),
                 Signal("miles_utilization", "miles/utilization"))))
