"""ARL (Wei et al., ICCV 2025): encoder gradients ×(1 + w_m) from entropy and
logit-magnitude coefficients, a raised unimodal-loss weight after start_epoch,
then a global gradient-norm clip.

Reference: shicaiwei123/ICCV2025-ARL, main_arl_variance.py (`train_epoch`),
models/basic_model.py (`AVClassifier_AUXI_Weight`), models/backbone.py.

Parts: the transformation `asgml_jax.transforms.arl` followed by
`optax.clip_by_global_norm` (stage `edit`, last: the clip sees every other
edit), a γ schedule (γ_eff = the config's weight up to start_epoch, then
`method.arl.gamma`), and the unimodal CE terms on the reference's unimodal
logits, fc(cat(x_m, 0)): the split head plus the rest of the fusion bias. It reads each modality's logits off the shared fusion
layer, so it needs split unimodal heads. Variants: `arl` (the reference's
coefficients) and `arl_fixed` (the seeds' fixed ×1.5).
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (Logging, Method, Optax, Protocols, Requirement, Settings,
                                    Signal, Step)
from asgml_jax.transforms.arl import arl, zero_other_logits


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      gamma=4.0,             # unimodal-loss weight after start_epoch (1 before)
      temperature=8.0,       # T of softmax(T·d_other·q)
      start_epoch=5,         # modulation for epoch indices > start_epoch
      scaling="coefficients",  # coefficients: ×(1 + w_m) | fixed: ×1.5 (seeds' code)
      clip_norm=40.0,        # global gradient-norm clip
  ))


def check_block(config) -> None:
  cc.at_least(config, "method.arl.gamma", 0)
  cc.positive(config, "method.arl.temperature")
  cc.positive(config, "method.arl.clip_norm")
  cc.non_negative_int(config, "method.arl.start_epoch")
  cc.one_of(config.method.arl.scaling, ("coefficients", "fixed"), "method.arl.scaling")


def preset(config) -> None:
  config.loss.unimodal_weight = 1.0         # γ_eff = 1 up to start_epoch, method.arl.gamma after
  config.model.unimodal_heads = "split"
  config.method.arl.scaling = "coefficients"


def preset_fixed(config) -> None:
  """The seeds' code: every encoder gradient ×1.5 instead of ×(1 + w_m)."""
  preset(config)
  config.method.arl.scaling = "fixed"


def transform(ctx):

  a = ctx.config.method.arl
  return [arl(ctx.steps_per_epoch, a.temperature, a.start_epoch, a.scaling),
          optax.clip_by_global_norm(a.clip_norm)]


def unimodal_logits(ctx):
  """CE_m of the reference: the fusion layer on modality m's features with the
  others zeroed, fc(cat(x_m, 0)), so the full fusion bias (not the split head's
  b/N)."""

  def logits(step_ctx, params, outputs):
    return zero_other_logits(outputs["unimodal_logits"], params["fusion"])
  return logits


def unimodal_weight(ctx):
  per_epoch, after = ctx.steps_per_epoch, ctx.config.method.arl.start_epoch
  later = ctx.config.method.arl.gamma

  def weight(step, base):
    return jnp.where(step // per_epoch > after, later, base).astype(jnp.float32)
  return weight


def label(config: Mapping) -> str:
  return "arl_fixed" if config["method"].get("arl", {}).get("scaling") == "fixed" else "arl"


ARL = Method(
    name="arl", summary="ARL: encoder gradients ×(1 + w_m), γ raised after start_epoch, clip",
    settings=Settings(
        block="arl", defaults=defaults, check_block=check_block,
        requires=(Requirement("model.unimodal_heads", "split",
                              "arl reads each modality's logits off the shared fusion layer"),),
        preset=preset, variants={"arl_fixed": preset_fixed}),
    protocols=Protocols(reference=(("model.unimodal_heads", "split"), ("loss.unimodal_weight", 1.0),
                                   ("method.arl.scaling", "coefficients"))),
    optax=Optax(stage="edit", rank=70, transform=transform),
    step=Step(unimodal_logits=unimodal_logits, unimodal_weight=unimodal_weight),
    logging=Logging(signals=(Signal("arl_weight", "arl/weight", "ARL coefficient w"),
                             Signal("arl_scale", "arl/grad_scale")), label=label))
