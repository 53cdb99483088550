"""PCGrad (Yu et al., NeurIPS 2020): each loss's gradient projected off the
others it conflicts with, in a random order per step.

Stage `combine` (`asgml_jax.transforms.multitask.pcgrad`); the tasks are the
fused loss and every unimodal loss, so the variant sets γ = 1.

Reference: the paper's algorithm (tianheyu927/PCGrad); the reference protocol
is its variant's settings.
"""

from __future__ import annotations

from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms.multitask import pcgrad


def preset(config) -> None:
  config.loss.unimodal_weight = 1.0         # the tasks: fused + every unimodal CE


def transform(ctx):
  return [pcgrad(seed=ctx.config.seed + 2)]


PCGRAD = Method(
    name="pcgrad", summary="PCGrad: conflicting per-loss gradients projected off each other",
    settings=Settings(preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 1.0),)),
    optax=Optax(stage="combine", transform=transform),
    logging=Logging(
        signals=(Signal("conflicts", "pcgrad/conflicts", "PCGrad projections per step"),)))
