"""DWA (Liu et al., CVPR 2019): loss weights from each loss's descent rate
over the last two epochs, softmax with a temperature.

Stage `combine` (`asgml_jax.transforms.multitask.dwa`); tasks: the fused
and every unimodal loss (γ = 1 in its variant).

Reference: the paper's rule (lorenmt/mtan); the reference protocol is its
variant's settings.
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms.multitask import dwa


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(temperature=2.0))


def check_block(config) -> None:
  cc.positive(config, "method.dwa.temperature")


def preset(config) -> None:
  config.loss.unimodal_weight = 1.0


def transform(ctx):
  return [dwa(ctx.steps_per_epoch, ctx.config.method.dwa.temperature)]


DWA = Method(
    name="dwa", summary="DWA: loss weights from each loss's descent rate",
    settings=Settings(block="dwa", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 1.0),)),
    optax=Optax(stage="combine", transform=transform),
    logging=Logging(signals=(Signal("task_weights", "task_weight", "loss weight (DWA)"),)))
