"""G-Blending's weight estimation: train a copy of each task's branch for
gb_epoch epochs and compare its train and holdout losses.

For every task k in ("fused", *modalities): copy the current parameters and
BatchNorm statistics, train the copy on CE_k alone (so a unimodal task moves
only its encoder and its separate head; the fused task moves every encoder
and the fusion head) for `gb_epoch` epochs over the train part, then measure
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
import numpy as np
import optax

from asgml_jax import augment, input_pipeline
from asgml_jax.losses import FUSED_TASK, loss_terms
from asgml_jax.transforms.gblend import blending_weights


def split_train(num_train: int, key, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train-part indices, holdout indices), disjoint, from one fixed permutation."""
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0x6B1), num_train))
  holdout = max(1, int(round(num_train * holdout_fraction)))
  return np.sort(perm[:-holdout]), np.sort(perm[-holdout:])


class BranchTrainer:
  """Jitted train/eval steps of one task's copy (the task index is an argument)."""

  def __init__(self, model, weight_decay: float, momentum: float, frame_sizes):
    self.model = model
    self.names = tuple(model.modality_names)
    self.frame_sizes = frame_sizes
    self.base = optax.chain(optax.add_decayed_weights(weight_decay),
                            optax.trace(decay=momentum, nesterov=False))
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


def mean_losses(trainer: BranchTrainer, variables, data, on_device, idx, batch_size) -> np.ndarray:
  """(K,) CE of every task, averaged over the examples of `idx` (inference mode)."""
  total, count = None, 0
  for start in range(0, len(idx), batch_size):
    part = idx[start:start + batch_size]
    rows = input_pipeline.take_rows(data, on_device, part)
    losses = np.asarray(trainer.eval_losses(variables, rows))
    total = losses * len(part) if total is None else total + losses * len(part)
    count += len(part)
  return total / count


def estimate_weights(trainer: BranchTrainer, variables, data, on_device: bool, train_idx,
                     holdout_idx, *, epochs: int, batch_size: int, lr: float, key,
                     log: Callable[[str], None] | None = None) -> dict:
  """{"weights": (K,), "train_losses": (K,), "holdout_losses": (K,)} (module docstring)."""
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
        rows = input_pipeline.take_rows(data, on_device, idx)
        params, stats, opt_state = trainer.train_step(
            params, stats, opt_state, rows, jnp.int32(k), jnp.float32(lr), step_key)
    copy = {"params": params, **({"batch_stats": stats} if stats else {})}
    train_losses.append(mean_losses(trainer, copy, data, on_device, train_idx, batch_size)[k])
    holdout_losses.append(mean_losses(trainer, copy, data, on_device, holdout_idx, batch_size)[k])
  weights = blending_weights(train_losses, holdout_losses)
  if log:
    log("g-blending weights: " + ", ".join(f"{t} {w:.3f} (train {lt:.3f}, holdout {lv:.3f})"
                                           for t, w, lt, lv in zip(tasks, weights, train_losses,
                                                                   holdout_losses)))
  return {"weights": weights, "train_losses": np.asarray(train_losses),
          "holdout_losses": np.asarray(holdout_losses)}


