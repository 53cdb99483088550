"""GradNorm (Chen et al., ICML 2018): loss weights learned so that each
loss's gradient norm on a shared layer trains at a common relative rate.

Stage `combine` (`asgml_jax.transforms.multitask.gradnorm`). The shared
layer is the fusion layer (shared by every loss only with split heads of a
concat/sum fusion straight to classes) or the encoders.

Reference: the paper's algorithm (Chen et al., 2018); the reference protocol
is its variant's settings.
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms.multitask import gradnorm


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=1.5, lr=0.025,
      layer="fusion",        # fusion (shared by every loss with split heads) | encoders
  ))


def check_block(config) -> None:
  cc.positive(config, "method.gradnorm.lr")
  cc.require(config.method.gradnorm.alpha >= 0, "method.gradnorm.alpha", "must be >= 0")
  cc.one_of(config.method.gradnorm.layer, ("fusion", "encoders"), "method.gradnorm.layer")


def check(config) -> None:
  if config.method.gradnorm.layer == "fusion":
    cc.require(config.model.fusion in ("concat", "sum") and config.model.unimodal_heads == "split"
               and config.model.fusion_dim is None, "method.gradnorm.layer",
               "'fusion' is shared by every loss only with split unimodal heads of a concat/sum "
               "fusion straight to classes; use 'encoders'")


def preset(config) -> None:
  config.loss.unimodal_weight = 1.0
  if config.model.fusion_dim is not None:
    config.method.gradnorm.layer = "encoders"


def transform(ctx):
  g = ctx.config.method.gradnorm
  return [gradnorm(g.alpha, g.lr, g.layer)]


GRADNORM = Method(
    name="gradnorm", summary="GradNorm: loss weights that balance the losses' gradient norms",
    settings=Settings(
        block="gradnorm", defaults=defaults, check_block=check_block, check=check, preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 1.0),)),
    optax=Optax(stage="combine", transform=transform),
    logging=Logging(signals=(Signal("task_weights", "task_weight", "loss weight (GradNorm)"),)))
