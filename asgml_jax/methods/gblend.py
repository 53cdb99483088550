"""G-Blending (Wang et al., CVPR 2020): loss weights from each branch's
overfitting-to-generalisation ratio, re-estimated every gb_epoch epochs.

Stage `combine` (`asgml_jax.transforms.gblend`: Σ_k w_k ∇L_k, w in its
state). The weights come from an epoch hook: before the first epoch and
every gb_epoch epochs, `estimate_weights` trains a copy of each task's branch
for gb_epoch epochs and compares its train and holdout losses. Each unimodal
branch has its own head, as the reference.

Reference: pliang279/MultiBench, training_structures/gradient_blend.py
(`gb_estimate`, `train_unimodal`, `train_multimodal`). Known difference: the
reference trains the branch copies with plain SGD (no momentum) and holds out
the first 8 % of the train split; here the copies use the run's optimizer
and a random 8 % (below).

The estimate. For every task k in ("fused", *modalities): copy the current
parameters and BatchNorm statistics, train the copy on CE_k alone (so a
unimodal task moves only its encoder and its separate head; the fused task
moves every encoder and the fusion head) for `gb_epoch` epochs over the train
part, then measure
CE_k in inference mode on the train part (L^T_k) and on the holdout (L^V_k);
`transforms.gblend.blending_weights` turns them into weights. The run's own
model is untouched.

Choices where the MultiBench port leaves room ([inferred]):
- the holdout is a fixed 8 % of the train split (the last `holdout_fraction`
  of a permutation drawn once from the run's data key); the run itself
  still trains on the whole train split, as the reference's main loop does;
- the copies use the run's base optimizer (SGD, momentum, weight decay)
  at the run's learning rate at that step, fresh momentum, dropout keys from
  the run's seed, and each epoch's order from the same data key;
- frame-sampled modalities use their evaluation frames (no augmentation).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from asgml_jax import augment
from asgml_jax import config_checks as cc
from asgml_jax.losses import FUSED_TASK, loss_terms
from asgml_jax.methods.base import (Epoch, Logging, Method, Optax, Protocols, Requirement,
                                    Settings, Signal)
from asgml_jax.transforms.gblend import blending_weights, gblend
from asgml_jax.transforms.torch_optimizers import torch_direction


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      gb_epoch=10,           # re-estimate the weights every gb_epoch epochs ([inferred])
      holdout_fraction=0.08,  # of the train split, for the estimate's holdout losses
  ))


def check_block(config) -> None:
  cc.positive(config, "method.gblend.gb_epoch", integer=True)
  g = config.method.gblend
  cc.require(0 < g.holdout_fraction < 1, "method.gblend.holdout_fraction",
             f"must be in (0, 1), got {g.holdout_fraction!r}")


def preset(config) -> None:
  config.model.unimodal_heads = "separate"  # a head per unimodal branch, as the reference
  config.loss.unimodal_weight = 1.0


def transform(ctx):
  return [gblend()]


# ------------------------------------------------------------------ the weight estimate


def split_train(num_train: int, key, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train-part indices, holdout indices), disjoint, from one fixed permutation."""
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0x6B1), num_train))
  holdout = max(1, int(round(num_train * holdout_fraction)))
  return np.sort(perm[:-holdout]), np.sort(perm[-holdout:])


class BranchTrainer:
  """Jitted train/eval steps of one task's copy (the task index is an argument)."""

  def __init__(self, model, base: optax.GradientTransformation, frame_sizes):
    self.model = model
    self.names = tuple(model.modality_names)
    self.frame_sizes = frame_sizes
    self.base = base
    self.train_step = jax.jit(self._train_step)
    self.eval_losses = jax.jit(self._eval_losses)

  def _inputs(self, batch):
    if self.frame_sizes:
      batch = augment.eval_inputs(batch, self.frame_sizes)
    return {m: batch[m] for m in self.names}, batch["label"]

  def _train_step(self, params, batch_stats, opt_state, batch, task, lr, key):
    inputs, labels = self._inputs(batch)

    def loss_fn(p):
      variables = {"params": p}
      if batch_stats:
        variables["batch_stats"] = batch_stats
      out, new_vars = self.model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": key})
      return loss_terms(out, labels, self.names)[task], new_vars.get("batch_stats", {})

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = self.base.update(grads, opt_state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
    return params, new_stats, opt_state

  def _eval_losses(self, variables, batch):
    inputs, labels = self._inputs(batch)
    out = self.model.apply(variables, inputs, train=False)
    return loss_terms(out, labels, self.names)


def mean_losses(trainer: BranchTrainer, variables, take_rows, idx, batch_size) -> np.ndarray:
  """(K,) CE of every task, averaged over the examples of `idx` (inference mode);
  take_rows(idx) -> those training rows on the device."""
  total, count = None, 0
  for start in range(0, len(idx), batch_size):
    part = idx[start:start + batch_size]
    rows = take_rows(part)
    losses = np.asarray(trainer.eval_losses(variables, rows))
    total = losses * len(part) if total is None else total + losses * len(part)
    count += len(part)
  return total / count


def estimate_weights(trainer: BranchTrainer, variables, take_rows, train_idx, holdout_idx, *,
                     epochs: int, batch_size: int, lr: float, key,
                     log: Callable[[str], None] | None = None) -> dict:
  """{"weights": (K,), "train_losses": (K,), "holdout_losses": (K,)} (module docstring);
  take_rows(idx) -> those training rows on the device."""
  tasks = (FUSED_TASK,) + trainer.names
  train_losses, holdout_losses = [], []
  steps = len(train_idx) // batch_size
  for k, task in enumerate(tasks):
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    opt_state = trainer.base.init(params)
    for epoch in range(epochs):
      order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1000 * k + epoch),
                                                len(train_idx)))
      for i in range(steps):
        idx = train_idx[order[i * batch_size:(i + 1) * batch_size]]
        step_key = jax.random.fold_in(key, (k * 7919 + epoch) * 104729 + i)
        rows = take_rows(idx)
        params, stats, opt_state = trainer.train_step(
            params, stats, opt_state, rows, jnp.int32(k), jnp.float32(lr), step_key)
    copy = {"params": params, **({"batch_stats": stats} if stats else {})}
    train_losses.append(mean_losses(trainer, copy, take_rows, train_idx, batch_size)[k])
    holdout_losses.append(mean_losses(trainer, copy, take_rows, holdout_idx, batch_size)[k])
  weights = blending_weights(train_losses, holdout_losses)
  if log:
    log("g-blending weights: " + ", ".join(f"{t} {w:.3f} (train {lt:.3f}, holdout {lv:.3f})"
                                           for t, w, lt, lv in zip(tasks, weights, train_losses,
                                                                   holdout_losses)))
  return {"weights": weights, "train_losses": np.asarray(train_losses),
          "holdout_losses": np.asarray(holdout_losses)}


# ------------------------------------------------------------------ the method


class BlendingWeights:
  """The epoch hook: new weights before epoch 0 and after every gb_epoch-th epoch
  (but not after the last)."""

  def __init__(self, ctx):
    opt = ctx.config.optimizer
    self.ctx = ctx
    self.trainer = BranchTrainer(
        ctx.model, optax.chain(*torch_direction(opt.kind, opt.weight_decay, opt.momentum)),
        ctx.frame_sizes)

  def _weights(self, state, data_key, epoch: int) -> dict:
    ctx = self.ctx
    cfg, data, steps = ctx.config, ctx.data, ctx.steps_per_epoch
    train_idx, holdout_idx = split_train(data.num_train, data_key,
                                         cfg.method.gblend.holdout_fraction)
    result = estimate_weights(
        self.trainer, state.variables(), lambda idx: ctx.take_rows(data.train, idx), train_idx,
        holdout_idx, epochs=cfg.method.gblend.gb_epoch, batch_size=cfg.batch_size,
        lr=ctx.lr_at(epoch * steps), key=jax.random.fold_in(data_key, 0x9B + epoch),
        log=ctx.log)
    tasks = (FUSED_TASK,) + tuple(self.trainer.names)   # the estimate's order
    return {"task_weights": {t: np.float32(w) for t, w in zip(tasks, result["weights"])}}

  def prepare(self, state, data_key) -> dict:
    return self._weights(state, data_key, 0)

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    cfg = self.ctx.config
    if next_epoch % cfg.method.gblend.gb_epoch == 0 and next_epoch < cfg.num_epochs:
      return self._weights(state, data_key, next_epoch)
    return {}


GBLEND = Method(
    name="gblend", summary="G-Blending: loss weights from each branch's overfitting ratio",
    settings=Settings(
        block="gblend", defaults=defaults, check_block=check_block,
        requires=(Requirement("model.unimodal_heads", "separate",
                              "gblend trains each unimodal branch with its own head"),),
        preset=preset),
    protocols=Protocols(
        reference=(("model.unimodal_heads", "separate"), ("loss.unimodal_weight", 1.0))),
    optax=Optax(stage="combine", transform=transform),
    epoch=Epoch(hook=BlendingWeights),
    logging=Logging(signals=(Signal("task_weights", "task_weight", "loss weight (G-Blending)"),)))
