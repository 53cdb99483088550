"""Method state that changes between epochs, not inside the jitted step.

Some baselines decide once per epoch from a whole pass over data: MILES sets
the encoders' learning rates from the validation accuracies, PMR recomputes
its class prototypes from a tenth of the training set, G-Blending trains a
copy of every branch every gb_epoch epochs to re-weight the losses. Their state lives in
their optax transformations (so in the train state, checkpointed with it);
this module computes the new values on the host's schedule and writes them
in with `optax.tree_utils.tree_set`. Both `train.py` and `sweep.py` call
`prepare` once before the first epoch of a fresh run and `epoch_end` after
each evaluation and before the checkpoint, so a resumed run continues with
exactly the values it saved.

States may be one run's or a sweep's (leaves with a leading seed axis); the
per-seed values are computed seed by seed and stacked.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgml_jax import augment, gblend, input_pipeline, optim, run_dir
from asgml_jax.transforms import miles as miles_lib
from asgml_jax.transforms import pmr as pmr_lib

METHODS_WITH_EPOCH_HOOKS = ("miles", "pmr", "gblend")


def has_hooks(config) -> bool:
  return config.method.name in METHODS_WITH_EPOCH_HOOKS


def prototype_batches(steps_per_epoch: int) -> int:
  """PMR's len(loader) // 10, at least one batch."""
  return max(1, steps_per_epoch // 10)


def make_feature_fn(model, frame_sizes) -> Callable:
  """Jitted (variables, batch) -> {m: features}, inference mode."""

  def features(variables, batch):
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    out = model.apply(variables, {m: batch[m] for m in model.modality_names}, train=False)
    return out["features"]

  return jax.jit(features)


class EpochHooks:
  """Between-epoch updates of the method state of one run or of a sweep."""

  def __init__(self, setup, data_keys: Sequence, stacked: bool):
    self.setup = setup
    self.config = setup.config
    self.data_keys = list(data_keys)
    self.stacked = stacked
    self.feature_fn = (make_feature_fn(setup.model, setup.frame_sizes)
                       if self.config.method.name == "pmr" else None)
    self.branch_trainer = None
    if self.config.method.name == "gblend":
      opt = self.config.optimizer
      self.branch_trainer = gblend.BranchTrainer(setup.model, opt.weight_decay, opt.momentum,
                                                 setup.frame_sizes)

  # ---------------------------------------------------------------- helpers
  def _seed_state(self, states, s: int):
    return jax.tree.map(lambda x: x[s], states) if self.stacked else states

  def _write(self, states, per_seed: list[dict]):
    """Sets each field to its per-seed values (stacked on the seed axis for a sweep)."""
    if not per_seed or not per_seed[0]:
      return states
    fields = {}
    for name in per_seed[0]:
      values = [v[name] for v in per_seed]
      fields[name] = (jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *values)
                      if self.stacked else jax.tree.map(jnp.asarray, values[0]))
    return states.replace(opt_state=optax.tree_utils.tree_set(states.opt_state, **fields))

  def _prototypes(self, state, data_key, epoch: int, momentum: float | None) -> dict:
    cfg, data = self.config, self.setup.data
    perm = input_pipeline.epoch_order(data, data_key, epoch)
    names = self.setup.names
    num_classes = data.num_classes
    variables = state.variables()
    sums = counts = None
    for i in range(prototype_batches(self.setup.steps_per_epoch)):
      args = input_pipeline.train_args(data, perm, i, cfg.batch_size)
      batch = (input_pipeline.gather_batch(*args[:2], args[2], cfg.batch_size)
               if data.on_device else args[0])
      feats = self.feature_fn(variables, batch)
      part = {m: pmr_lib.class_sums(feats[m], batch["label"], num_classes) for m in names}
      if sums is None:
        sums = {m: part[m][0] for m in names}
        counts = {m: part[m][1] for m in names}
      else:
        sums = {m: sums[m] + part[m][0] for m in names}
        counts = {m: counts[m] + part[m][1] for m in names}
    old = optax.tree_utils.tree_get(state.opt_state, "pmr_prototypes")
    new = {m: pmr_lib.class_means(sums[m], counts[m], old[m]) for m in names}
    if momentum is not None:
      new = {m: pmr_lib.ema(new[m], old[m], momentum) for m in names}
    return {"pmr_prototypes": new}

  def _blending_weights(self, state, data_key, epoch: int) -> dict:
    cfg, data = self.config, self.setup.data
    train_idx, holdout_idx = gblend.split_train(data.num_train, data_key,
                                                cfg.method.gblend.holdout_fraction)
    lr = float(optim.lr_schedule(cfg, self.setup.steps_per_epoch)(epoch *
                                                                  self.setup.steps_per_epoch))
    result = gblend.estimate_weights(
        self.branch_trainer, state.variables(), data.train, data.on_device, train_idx,
        holdout_idx, epochs=cfg.method.gblend.gb_epoch, batch_size=cfg.batch_size, lr=lr,
        key=jax.random.fold_in(data_key, 0x9B + epoch), log=run_dir.log)
    tasks = ("fused",) + tuple(self.branch_trainer.names)   # the estimate's order
    return {"task_weights": {t: np.float32(w) for t, w in zip(tasks, result["weights"])}}

  # ---------------------------------------------------------------- hooks
  def prepare(self, states):
    """Before the first epoch of a fresh run: PMR's initial prototypes,
    G-Blending's first weights."""
    name = self.config.method.name
    if name == "pmr":
      return self._write(states, [self._prototypes(self._seed_state(states, s), key, 0, None)
                                  for s, key in enumerate(self.data_keys)])
    if name == "gblend":
      return self._write(states, [self._blending_weights(self._seed_state(states, s), key, 0)
                                  for s, key in enumerate(self.data_keys)])
    return states

  def epoch_end(self, states, validation: Sequence[dict], next_epoch: int):
    """After epoch `next_epoch − 1`'s evaluation (one validation dict per seed)."""
    method = self.config.method
    if method.name == "miles":
      per_seed = []
      for metrics in validation:
        u = miles_lib.utilization_rates(
            metrics["accuracy"],
            {m: metrics[f"unimodal_accuracy_{m}"] for m in self.setup.names})
        per_seed.append({"miles_lr_scale": {m: np.float32(v) for m, v in miles_lib.next_lr_scales(
                             u, method.miles.tau, method.miles.mu).items()},
                         "miles_utilization": {m: np.float32(v) for m, v in u.items()}})
      return self._write(states, per_seed)
    if method.name == "pmr":
      return self._write(states, [
          self._prototypes(self._seed_state(states, s), key, next_epoch, method.pmr.momentum)
          for s, key in enumerate(self.data_keys)])
    if (method.name == "gblend" and next_epoch % method.gblend.gb_epoch == 0
        and next_epoch < self.config.num_epochs):
      return self._write(states, [
          self._blending_weights(self._seed_state(states, s), key, next_epoch)
          for s, key in enumerate(self.data_keys)])
    return states
