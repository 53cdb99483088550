"""MLA, Multimodal Learning with Alternating unimodal adaptation (Zhang et al.,
CVPR 2024): the modalities take turns through one shared head, and the
head's gradient is projected so that one modality's turn does not undo the
previous one's; predictions fuse the modalities by their confidence.

Each batch: one forward of every encoder, then for each modality m in turn
(sorted order) one optimizer update on CE(head(f_m)) that trains encoder m
and the head only (the other encoders are skipped: no momentum, no weight
decay, as PyTorch >= 2.0 skips parameters without a gradient). The reference
pins torch 1.8.1 (requirements.txt), whose `optimizer.zero_grad()` leaves
zero gradients: a later turn of the batch steps the earlier turns' encoders
too (weight decay and momentum on a zero gradient) until `del p.grad` at the
batch's end; `method.protocol=reference` sets that
(`optimizer.zero_grad=zeros_per_batch`, asgml_jax/transforms/zero_grad.py).
Turn k of the batch sees the head after turns < k. Before each update but
the run's very first, the head's weight gradient goes through the
gradient-search projector P
(orthogonal weight modification), with r the mean of f_m over the batch and
α = 0.1^(b / steps_per_epoch + 1) for batch b of the epoch:

    k = P rᵀ;   P ← P − (k kᵀ) ⊘ (α + k r);   P ← P / ‖P‖_F
    projection "replace":  ∇W ← ∇W Pᵀ      "add":  ∇W ← ∇W + ∇W Pᵀ

(⊘ is elementwise: the reference divides by `torch.mm(k, r)`, a D×D matrix,
not by the scalar r k of OWM; reproduced as written.) At evaluation the
prediction is Σ_m w_m·head(f_m), w = softmax over modalities of −H_m, H_m the
entropy of modality m's softmax for that example.

Reference: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation,
main.py (`train_epoch`, `gs_flag` branch; `valid`, `--dynamic`), utils/utils.py
(`GSPlugin.before_update`: ∇W ← ∇W Pᵀ) — there the projection is guarded by
`n == "module.weight"` while it iterates over `fc_out.named_parameters()`,
whose names are "weight" and "bias", so as executed the repository never
projects; and its `calculate_entropy` takes the softmax over the *batch* axis,
one entropy per evaluation batch, so a prediction depends on its batch-mates.
BalanceBenchmark's `MLA_trainer.py` projects (with ∇W + ∇W Pᵀ) and uses the
per-example entropy. Options: `projection` = replace (default: the
repository's intended rule) | add (BalanceBenchmark) | none (the repository
as executed; `method.protocol=reference`). The batch-level entropy is not
reproduced (it would make the project's padded evaluation batches matter);
the per-example one is used in every protocol.

Cost: every turn runs a backward pass through the model (N per step). N
modalities: turns over all of them, as the reference's 3-modality branch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import (Evaluation, Logging, Method, Optax, Plot, Protocols,
                                    ReferenceOptimizer, Requirement, Settings, Step, SubStepResult,
                                    steplr_milestones)
from asgml_jax.methods.common import forward_with_vjp

PROJECTIONS = ("replace", "add", "none")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      projection="replace",  # replace: ∇W Pᵀ | add: ∇W + ∇W Pᵀ (BalanceBenchmark) | none
  ))


def check_block(config) -> None:
  cc.one_of(config.method.mla.projection, PROJECTIONS, "method.mla.projection")


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "mla's shared head maps features straight to the classes: use None")


def preset(config) -> None:
  config.model.fusion = "shared"
  config.model.unimodal_heads = "split"


# ------------------------------------------------------------------ the projector


def projector_step(p, r, alpha):
  """One update of P (D, D) from the batch-mean feature r (D,), as the reference."""
  k = p @ r
  p = p - jnp.outer(k, k) / (alpha + jnp.outer(k, r))
  return p / jnp.sqrt(jnp.sum(jnp.square(p)))


def project_kernel_grad(grad_kernel, p, mode: str):
  """The head's kernel gradient (D, C) = ∇Wᵀ: ∇W Pᵀ is P ∇Wᵀ."""
  projected = p @ grad_kernel
  return projected if mode == "replace" else grad_kernel + projected


class GradientSearchState(NamedTuple):
  mla_projector: jnp.ndarray      # P (D, D)
  mla_turns: jnp.ndarray          # int32: updates made (the reference's exp_count)


def gradient_search(steps_per_epoch: int, mode: str):
  """Projects the shared head's kernel gradient (stage edit). Extra args:
  `mla_feature_mean` (D,) of the modality of this turn, `step` (the batch)."""

  def init_fn(params):
    width = params["fusion"]["kernel"].shape[0]
    return GradientSearchState(jnp.eye(width, dtype=jnp.float32), jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, *, step=None, mla_feature_mean=None, **extra):
    if mla_feature_mean is None or mode == "none":
      return updates, state._replace(mla_turns=state.mla_turns + 1)
    alpha = 0.1 ** ((step % steps_per_epoch).astype(jnp.float32) / steps_per_epoch + 1.0)
    active = state.mla_turns != 0
    new_p = projector_step(state.mla_projector, mla_feature_mean.astype(jnp.float32), alpha)
    p = jnp.where(active, new_p, state.mla_projector)
    kernel = updates["fusion"]["kernel"]
    projected = project_kernel_grad(kernel.astype(jnp.float32), p, mode).astype(kernel.dtype)
    fusion = {**updates["fusion"], "kernel": jnp.where(active, projected, kernel)}
    return {**updates, "fusion": fusion}, GradientSearchState(p, state.mla_turns + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [gradient_search(ctx.steps_per_epoch, ctx.config.method.mla.projection)]


# ------------------------------------------------------------------ the turns


def _head_logits(head, features):
  return features.astype(jnp.float32) @ head["kernel"] + head["bias"]


def sub_steps(ctx):
  """One update per modality through the shared head (module docstring)."""
  names = ctx.names

  def run(sub):
    labels = sub.step.labels
    (outputs, new_batch_stats), vjp_fn = forward_with_vjp(sub.forward, sub.params)
    probe_state = sub.refresh_probes(outputs)
    feats = outputs["features"]
    params, opt_state = sub.params, sub.opt_state
    total_grads = jax.tree.map(jnp.zeros_like, params)
    losses = {}
    for m in names:
      def turn_loss(head, f):
        return cross_entropy(_head_logits(head, f), labels)
      loss, (g_head, g_feat) = jax.value_and_grad(turn_loss, argnums=(0, 1))(
          params["fusion"], feats[m])
      cotangent = {n: (g_feat if n == m else jnp.zeros_like(feats[n])) for n in names}
      grads = {**vjp_fn(cotangent)[0], "fusion": g_head}
      losses[m] = loss
      so_far = {n: losses.get(n, jnp.float32(0.0)) for n in names}
      updates, opt_state = sub.update(
          grads, opt_state, params, outputs, so_far, probe_state,
          encoder_mask={n: jnp.bool_(n == m) for n in names},
          mla_feature_mean=jnp.mean(jax.lax.stop_gradient(feats[m]), 0))
      params = optax.apply_updates(params, updates)
      total_grads = jax.tree.map(jnp.add, total_grads, grads)
    fused = cross_entropy(outputs["logits"], labels)
    loss = sum(losses.values()) / len(names)
    return SubStepResult(params=params, batch_stats=new_batch_stats, opt_state=opt_state,
                         probe_state=probe_state, loss=loss, fused_loss=fused, unimodal=losses,
                         outputs=outputs, grads=total_grads,
                         extras={"metrics": {f"mla/turn_loss_{m}": v for m, v in losses.items()}})
  return run


# ------------------------------------------------------------------ evaluation


def entropy_weights(unimodal_logits: dict, names) -> dict:
  """{m: w_m (B, 1)}: softmax over modalities of minus each example's entropy."""
  entropy = []
  for m in names:
    logp = jax.nn.log_softmax(unimodal_logits[m].astype(jnp.float32), -1)
    entropy.append(-jnp.sum(jnp.exp(logp) * logp, -1))
  w = jax.nn.softmax(-jnp.stack(entropy, 0), axis=0)
  return {m: w[i][:, None] for i, m in enumerate(names)}


def eval_logits(ctx):
  names = ctx.names

  def replace(state, batch, outputs):
    w = entropy_weights(outputs["unimodal_logits"], names)
    fused = sum(w[m] * outputs["unimodal_logits"][m] for m in names)
    return {**outputs, "logits": fused}
  return replace


# Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation: README.md:62
# (CREMA-D: --batch_size 64 --epochs 100 --lorb base), main.py:31-34 (sgd, lr 1e-3,
# StepLR(70, 0.1)), main.py:749 (SGD momentum 0.9, weight decay 1e-4), main.py:760,481
# (StepLR stepped after each epoch).
OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation README.md:62, "
           "main.py:28-34,481,749,760",
    kind="sgd", learning_rate=1e-3, weight_decay=1e-4, num_epochs=100, batch_size=64,
    lr_milestones=steplr_milestones(70, 0.1, 100))}


MLA = Method(
    name="mla",
    summary="MLA: modalities take turns through a shared head, projected; entropy-fused",
    settings=Settings(
        block="mla", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.fusion", "shared", "mla trains every modality through one "
                              "shared head"),
                  Requirement("model.unimodal_heads", "split",
                              "mla's unimodal predictions are the shared head on each modality")),
        preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("method.mla.projection", "none"), ("optimizer.zero_grad", "zeros_per_batch"))),
    optax=Optax(stage="edit", rank=5, transform=transform),
    step=Step(sub_steps=sub_steps),
    evaluation=Evaluation(eval_logits=eval_logits),
    logging=Logging(plots=(Plot("mla/turn_loss", "MLA: each modality's turn loss"),)))
