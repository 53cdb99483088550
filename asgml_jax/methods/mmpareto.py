"""MMPareto (Wei & Hu, ICML 2024): Pareto-weighted fused and unimodal
gradients on the shared encoders.

Stage `combine` (`asgml_jax.transforms.mmpareto`): the step hands it the
gradient of every loss. Its variant gives each modality a separate
Linear(D, C) head, as the reference.

Reference: GeWu-Lab/MMPareto_ICML2024, code/MMPareto.py; the reference
protocol is its variant's settings.
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms.mmpareto import mmpareto


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(scale=1.5))   # gamma_s of the reference


def check_block(config) -> None:
  cc.positive(config, "method.mmpareto.scale")


def preset(config) -> None:
  config.model.unimodal_heads = "separate"  # Linear(D, C) per modality, as the reference
  config.loss.unimodal_weight = 1.0


def transform(ctx):
  return [mmpareto(ctx.config.method.mmpareto.scale)]


MMPARETO = Method(
    name="mmpareto", summary="MMPareto: Pareto-weighted fused and unimodal gradients",
    settings=Settings(block="mmpareto", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(
        reference=(("model.unimodal_heads", "separate"), ("loss.unimodal_weight", 1.0))),
    optax=Optax(stage="combine", transform=transform),
    logging=Logging(signals=(Signal("pareto_cosines", "mmpareto/cos"),
                             Signal("pareto_gammas", "mmpareto/gamma",
                                    "MMPareto weight of the fused gradient"))))
