"""AMCo (adaptive mask co-learning, as BalanceBenchmark implements it): the
modality that takes more than σ of the prediction mass has a growing share
of its class logits masked, so the others must carry the prediction.

Per batch b of epoch e (both 0-based), with C classes and u_m = f_m·W_m + b/N
the split logits of the concat fusion:

    l = b · e / 10;  p = sin(π/2 · min(ε, l) / ε);  n = ⌊p · C⌋
    mask: C − n ones and n zeros in a random order (one draw per batch)
    ũ_m = u_m ⊙ mask  if m is "dependent", else u_m
    loss = CE(M(Σ_m ũ_m)) + Σ_m CE(ũ_m)           (M: a learned Linear(C → C))

and m is dependent for the next batch when its share of the softmax over
the concatenated [ũ_1 … ũ_N] (batch mean) exceeds σ; at each epoch's start
no modality is. So nothing is masked in epoch 0, and from epoch 1 on a
dependent modality loses all its logits within a few batches (l reaches ε
= 0.3 after 3 batches). Prediction: Σ_m u_m, no mask and no M, as the
reference evaluates (`eval_logits="sum"`, below); `eval_logits="mixer"`
predicts with M(Σ_m u_m), the output the fused loss trains.

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/AMCo_trainer.py
(`train_loop`: the mask and l_t; `training_step`: the losses, each backward'ed,
and the dependent flags) and balancemm/models/avclassify_model.py
(`BaseClassifierAMCoModel`: `linear_star`, the masked sum). σ = 0.5, ε = 0.3.
Evaluation: the AMCo model inherits `BaseClassifierModel.validation_step`
(avclassify_model.py:303-324), which runs the forward pass and then calls
`self.unimodality_calculate()` again (:311); the AMCo model's version
(:357-385, no mask, no dependent modality) rebuilds the output as Σ_m u_m
and `linear_star` is not applied, so the loss and predictions the reference
reports are those of Σ_m u_m. That is this module's default, so published
AMCo numbers are comparable.
Deviation: the reference expands its mask to shape (2, C) and multiplies the
(B, C) logits with it, which only broadcasts for a batch of 2 (or 1): as
written it stops with a shape error on the first batch after a modality
exceeds σ. Here the one mask applies to every example of the batch, which is
what drawing one mask per batch means. N modalities: shares over all.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import (Evaluation, Logging, Method, Optax, Protocols, Requirement,
                                    Settings, Signal, Step)
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK

_MASK_SALT = 0xA3C0
EVAL_LOGITS = ("sum", "mixer")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      sigma=0.5,             # σ: share of the prediction mass that makes a modality dependent
      eps=0.3,               # ε: l at which the whole mask is on
      eval_logits="sum",     # sum: predict with Σ_m u_m (the reference) | mixer: M(Σ_m u_m)
  ))


def check_block(config) -> None:
  cc.in_range(config, "method.amco.sigma", 0, 1)
  cc.positive(config, "method.amco.eps")
  cc.one_of(config.method.amco.eval_logits, EVAL_LOGITS, "method.amco.eval_logits")


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "amco masks the split logits of the fusion layer, which must map straight to the "
             "classes: use None")


def preset(config) -> None:
  config.model.logit_mixer = True
  config.loss.unimodal_weight = 1.0         # CE(fused) + Σ_m CE(masked unimodal_m)


def class_mask(rng, step, steps_per_epoch: int, num_classes: int, eps: float):
  """The batch's class mask (C,) and its masked fraction p."""
  epoch, batch = step // steps_per_epoch, step % steps_per_epoch
  level = batch.astype(jnp.float32) * epoch.astype(jnp.float32) / 10.0
  p = jnp.sin(jnp.pi / 2 * jnp.minimum(eps, level) / eps)
  masked = jnp.floor(p * num_classes).astype(jnp.int32)
  key = jax.random.fold_in(jax.random.fold_in(rng, _MASK_SALT), step)
  order = jax.random.permutation(key, num_classes)
  return (order >= masked).astype(jnp.float32), p


def shares(masked_logits: dict, names) -> dict:
  """Each modality's share of softmax([ũ_1 … ũ_N]) over classes, batch mean."""
  cat = jnp.concatenate([masked_logits[m].astype(jnp.float32) for m in names], -1)
  prob = jax.nn.softmax(cat, -1)
  c = masked_logits[names[0]].shape[-1]
  return {m: jnp.sum(prob[:, i * c:(i + 1) * c]) / prob.shape[0] for i, m in enumerate(names)}


class DependentState(NamedTuple):
  amco_dependent: dict     # {m: 1.0 if m is masked in the next batch}
  amco_share: dict         # {m: its share in the last batch}


def track_dependence(sigma: float, steps_per_epoch: int):
  """Keeps the dependent flags for the next batch (reset at epoch starts)."""
  def init_fn(params):
    zero = {m: jnp.float32(0.0) for m in sorted(params["encoders"])}
    return DependentState(zero, dict(zero))

  def update_fn(updates, state, params=None, *, step=None, amco_shares=None, **extra):
    if amco_shares is None:
      return updates, state
    epoch_ends = (step + 1) % steps_per_epoch == 0
    flags = {m: jnp.where(epoch_ends, 0.0, (s > sigma).astype(jnp.float32))
             for m, s in amco_shares.items()}
    return updates, DependentState(flags, dict(amco_shares))
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  a = ctx.config.method.amco
  return [track_dependence(a.sigma, ctx.steps_per_epoch)]


def _masked(ctx, step_ctx, outputs):
  a = ctx.config.method.amco
  state = step_ctx.state
  unimodal = outputs["unimodal_logits"]
  num_classes = unimodal[ctx.names[0]].shape[-1]
  mask, p = class_mask(state.rng, state.step, ctx.steps_per_epoch, num_classes, a.eps)
  dependent = optax.tree_utils.tree_get(state.opt_state, "amco_dependent")
  dependent = {m: jnp.where(state.step % ctx.steps_per_epoch == 0, 0.0, dependent[m])
               for m in ctx.names}
  masked = {m: jnp.where(dependent[m] > 0, unimodal[m] * mask, unimodal[m]) for m in ctx.names}
  return masked, p


def fused_loss(ctx):

  def loss(step_ctx, variables, outputs):
    masked, p = _masked(ctx, step_ctx, outputs)
    mixer = variables["params"]["logit_mixer"]
    fused = sum(masked[m] for m in ctx.names) @ mixer["kernel"] + mixer["bias"]
    return cross_entropy(fused, step_ctx.labels), {
        "metrics": {"amco/masked_fraction": p},
        "tx_args": {"amco_shares": jax.lax.stop_gradient(shares(masked, ctx.names))}}
  return loss


def unimodal_logits(ctx):
  def logits(step_ctx, params, outputs):
    return _masked(ctx, step_ctx, outputs)[0]
  return logits


def eval_logits(ctx):
  """Validation/test predict with Σ_m u_m (the concat fusion's output, before
  M), or with M's output (`eval_logits="mixer"`); unimodal accuracies read u_m."""
  mixer = ctx.config.method.amco.eval_logits == "mixer"

  def replace(state, batch, outputs):
    if mixer:
      return outputs
    fused = sum(outputs["unimodal_logits"][m] for m in ctx.names)
    return {**outputs, "logits": fused}
  return replace


AMCO = Method(
    name="amco", summary="AMCo: the dominant modality's class logits masked, more every batch",
    settings=Settings(
        block="amco", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.fusion", "concat",
                              "amco masks the concat fusion's split logits"),
                  Requirement("model.unimodal_heads", "split",
                              "amco masks the split logits of the fusion layer"),
                  Requirement("model.logit_mixer", True, "amco predicts with M(Σ_m u_m)")),
        preset=preset),
    protocols=Protocols(
        optimizers=BALANCEBENCHMARK,
        reference=(("loss.unimodal_weight", 1.0), ("method.amco.eval_logits", "sum"))),
    optax=Optax(stage="post", transform=transform),
    step=Step(fused_loss=fused_loss, unimodal_logits=unimodal_logits),
    evaluation=Evaluation(eval_logits=eval_logits),
    logging=Logging(
        signals=(Signal("amco_dependent", "amco/dependent", "AMCo: modality masked (dependent)"),
                 Signal("amco_share", "amco/share"))))
