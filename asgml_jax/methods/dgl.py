"""DGL, decoupled gradient learning (ICCV 2025, shicaiwei123/ICCV2025-GDL): the
fused loss trains only the fusion layer, the encoders learn only from their
unimodal losses.

One step of the reference (`main_dgl.py` `train_epoch`, `ConcatFusion_DGL`):

    fused = fc(cat(sg(x_1), …, sg(x_N)))        sg: no gradient to the encoders
    u_m   = fc(cat(0, …, x_m, …, 0)) = W_m x_m + b
    α·Σ_m CE(u_m) is back-propagated first and its gradient on the fusion
    layer is dropped; then CE(fused) is back-propagated (fusion layer only);
    the global gradient norm is clipped to 40; SGD (momentum, weight decay).

Here that is one backward pass of CE(fc(sg(x))) + α·Σ_m CE(sg(W_m) x_m + sg(b)):
the same gradient on every parameter. The stop-gradient on the features is a
feature gate (so it composes like OPM's, and the probes and unimodal heads
still read the plain features); α is `loss.unimodal_weight` (the reference's
`--alpha 4`, the variant's preset); the clip is the last gradient edit (after
boost when stacked). N modalities: every u_m with the others zeroed, as the
reference's two. Needs the concat fusion (the reference's CREMA-D runs; its
sum/FiLM/gated variants are not ported).

Evaluation as the reference's `valid` (main_dgl.py:200-210): the fused
prediction is fc(cat(x_1, …, x_N)) and each modality's is the same u_m as in
training, fc on that modality with the others zeroed (fusion_modules.py:57-58),
so with the layer's whole bias b, not the split heads' b/N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (Evaluation, Method, Optax, Protocols, ReferenceOptimizer,
                                    Requirement, Settings, Step)


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      clip_norm=40.0,       # global gradient-norm clip (the reference's clip_grad_norm_)
  ))


def check_block(config) -> None:
  cc.positive(config, "method.dgl.clip_norm")


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "dgl's unimodal logits are the fusion layer on one modality's features, which "
             "must map straight to the classes: use None")


def preset(config) -> None:
  config.loss.unimodal_weight = 4.0         # α of the reference's runs (cramed_dgl.sh)


def feature_gate(ctx):
  """The fused logits see the features without their gradient."""
  def gate_for(step_ctx):
    def gate(features, unimodal_logits):
      return {m: jax.lax.stop_gradient(f) for m, f in features.items()}, None
    return gate
  return gate_for


def decoupled_unimodal_logits(features: dict, kernel, bias, names) -> dict:
  """{m: x_m · sg(W_m) + sg(b)}: the concat layer on modality m alone, with no
  gradient into the layer (W_m: the kernel's rows of modality m)."""
  kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
  out, start = {}, 0
  for m in names:
    width = features[m].shape[-1]
    rows = kernel[start:start + width].astype(jnp.float32)
    out[m] = features[m].astype(jnp.float32) @ rows + bias.astype(jnp.float32)
    start += width
  return out


def unimodal_logits(ctx):
  names = ctx.names

  def logits(step_ctx, params, outputs):
    fusion = params["fusion"]
    return decoupled_unimodal_logits(outputs["features"], fusion["kernel"], fusion["bias"],
                                     names)
  return logits


def eval_logits(ctx):
  """Validation/test unimodal logits: u_m with the whole bias (the fused ones
  are the model's, fc on all features)."""
  names = ctx.names

  def replace(state, batch, outputs):
    fusion = state.params["fusion"]
    return {**outputs, "unimodal_logits": decoupled_unimodal_logits(
        outputs["features"], fusion["kernel"], fusion["bias"], names)}
  return replace


def transform(ctx):
  return [optax.clip_by_global_norm(ctx.config.method.dgl.clip_norm)]


# shicaiwei123/ICCV2025-GDL cramed_dgl.sh:9 and ks_dgl.sh:11 (--learning_rate 0.002),
# main_dgl.py:40-46 (batch 64, 100 epochs, sgd, MultiStepLR([70], 0.1)), :249-250 (SGD
# momentum 0.9, weight decay 1e-4), :72-74 (`scheduler.step()` at the start of each
# epoch: the decay comes at epoch 69).
_DGL_OPTIMIZER = ReferenceOptimizer(
    source="shicaiwei123/ICCV2025-GDL cramed_dgl.sh:9, ks_dgl.sh:11, "
           "main_dgl.py:40-46,72-74,249-250",
    kind="sgd", learning_rate=2e-3, weight_decay=1e-4, num_epochs=100, batch_size=64,
    lr_milestones=((69, 0.1),))
OPTIMIZERS = {"cremad": _DGL_OPTIMIZER, "kinetics_sounds": _DGL_OPTIMIZER}


DGL = Method(
    name="dgl",
    summary="DGL: the fused loss trains the fusion layer only; the encoders learn from their "
            "unimodal losses (fusion layer on one modality, no gradient into it)",
    settings=Settings(
        block="dgl", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.fusion", "concat",
                              "dgl's unimodal logits are the concat layer on one modality"),),
        preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 4.0),)),
    optax=Optax(stage="edit", rank=80, transform=transform),
    step=Step(feature_gate=feature_gate, unimodal_logits=unimodal_logits),
    evaluation=Evaluation(eval_logits=eval_logits))
