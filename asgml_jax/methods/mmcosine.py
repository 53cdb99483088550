"""MMCosine (Xu et al., ICASSP 2023): each modality's logits are the scaled
cosine between its features and its block of the fusion weight.

logits_m = s · normalize(f_m) · normalize(W_m)   (features per example, W_m's
class columns each to unit norm; W_m the fusion kernel's rows of modality m,
no bias), and the model is trained on CE(Σ_m logits_m) alone. Normalising
both sides equalises the modalities' logit magnitudes, so the dominant one
can no longer win the fused softmax by growing its features or weights.

Reference: GeWu-Lab/MMCosine_ICASSP23, main_CD.py (`train_epoch`: the cosine
logits times `--scaling`, loss CE(out_a + out_v) + λ·NCE, λ = 0 by default,
so the NCE term is not reproduced; `valid`: the fused prediction is the
model's *plain* fused output, with bias and unnormalised, while the unimodal
accuracies use the cosine logits). BalanceBenchmark's `MMCosine_trainer.py`
trains the same way (its default scale is 15) but evaluates with the cosine
logits, the logits the model was trained on; that is this module's default
(`eval_logits="cosine"`), and `method.protocol=reference` evaluates as the
ICASSP repository does (`eval_logits="plain"`).

N modalities: the sum runs over every modality (the reference has 2; its
BalanceBenchmark port writes out 3). In a stack, the signals other methods
read (OGM-GE's scores, the probes) still come from the model's plain split
heads and features; the cosine logits are the loss's and the prediction's. Needs concat fusion straight to the
classes: the logits are read off the fusion kernel's per-modality rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import (Evaluation, Logging, Method, Plot, Protocols,
                                    ReferenceOptimizer, Requirement, Settings, Step,
                                    steplr_milestones)

EVAL_LOGITS = ("cosine", "plain")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      scaling=10.0,          # s (the reference's --scaling default; BalanceBenchmark: 15)
      eval_logits="cosine",  # cosine: predict with what was trained | plain: the fusion layer
  ))


def check_block(config) -> None:
  cc.positive(config, "method.mmcosine.scaling")
  cc.one_of(config.method.mmcosine.eval_logits, EVAL_LOGITS, "method.mmcosine.eval_logits")


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "mmcosine reads each modality's class weights off the fusion layer, which must "
             "map straight to the classes: use None")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # CE(Σ_m cosine logits) alone


NORMALIZE_EPS = 1e-12   # torch.nn.functional.normalize's default eps


def _normalize(x, axis):
  """torch.nn.functional.normalize: x / max(‖x‖₂, eps) along `axis`, with its
  gradient. At an all-zero row (a dead feature vector after ReLU) torch's
  gradient is g / eps through the numerator and 0 through the clamped norm;
  a plain sqrt would put 0/0 = NaN there, so ‖x‖ is taken on a squared norm
  that is replaced by 1 where it is 0 (the value is unchanged, the gradient of
  the discarded branch is 0)."""
  squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  nonzero = squared > 0
  norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
  return x / jnp.maximum(norm, NORMALIZE_EPS)


def cosine_logits(features, kernel, names, scaling: float) -> dict:
  """{m: s·normalize(f_m)·normalize(W_m)}; `kernel` (Σ_m D_m, C) is the concat
  fusion's kernel, its rows in the order of `names` (sorted, as the model)."""
  out, offset = {}, 0
  for m in names:
    f = features[m].astype(jnp.float32)
    block = kernel[offset:offset + f.shape[-1]].astype(jnp.float32)
    out[m] = scaling * _normalize(f, 1) @ _normalize(block, 0)
    offset += f.shape[-1]
  return out


def _logits(ctx, params, outputs) -> dict:
  return cosine_logits(outputs["features"], params["fusion"]["kernel"], ctx.names,
                       ctx.config.method.mmcosine.scaling)


def fused_loss(ctx):
  scaling = ctx.config.method.mmcosine.scaling

  def loss(step_ctx, variables, outputs):
    logits = _logits(ctx, variables["params"], outputs)
    fused = sum(logits[m] for m in ctx.names)
    true = jax.nn.one_hot(step_ctx.labels, fused.shape[-1])
    metrics = {f"mmcosine/true_cos_{m}": jnp.mean(jnp.sum(logits[m] * true, -1)) / scaling
               for m in ctx.names}
    return cross_entropy(fused, step_ctx.labels), {"metrics": metrics}
  return loss


def unimodal_logits(ctx):
  """The unimodal CE terms (γ > 0) on each modality's cosine logits."""
  def logits(step_ctx, params, outputs):
    return _logits(ctx, params, outputs)
  return logits


def eval_logits(ctx):
  """Validation/test predict with Σ_m cosine logits (or the plain fusion output);
  the unimodal accuracies with each modality's cosine logits (both protocols)."""
  plain = ctx.config.method.mmcosine.eval_logits == "plain"

  def replace(state, batch, outputs):
    logits = _logits(ctx, state.params, outputs)
    fused = outputs["logits"] if plain else sum(logits[m] for m in ctx.names)
    return {**outputs, "logits": fused, "unimodal_logits": logits}
  return replace


# GeWu-Lab/MMCosine_ICASSP23 main_CD.py:60-66 (batch 32, 200 epochs, sgd, lr 1e-3,
# StepLR(100, 0.1)), :262 (SGD momentum 0.9, weight decay 1e-4), :265, :310 (stepped
# after each epoch); CREMA-D is the only dataset of main_CD.py (:159-163).
OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="GeWu-Lab/MMCosine_ICASSP23 main_CD.py:60-66,262,265,310",
    kind="sgd", learning_rate=1e-3, weight_decay=1e-4, num_epochs=200, batch_size=32,
    lr_milestones=steplr_milestones(100, 0.1, 200))}


MMCOSINE = Method(
    name="mmcosine", summary="MMCosine: scaled cosine logits per modality, trained on their sum",
    settings=Settings(
        block="mmcosine", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement(
            "model.fusion", "concat",
            "mmcosine reads each modality's class weights off the fusion kernel"),),
        preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 0.0), ("method.mmcosine.eval_logits", "plain"))),
    step=Step(fused_loss=fused_loss, unimodal_logits=unimodal_logits),
    evaluation=Evaluation(eval_logits=eval_logits),
    logging=Logging(plots=(Plot("mmcosine/true_cos", "MMCosine: mean cosine to the true class"),)))
