"""Method state that changes between epochs, not inside the jitted step.

Some methods decide once per epoch from a whole pass over data (a method's
`Epoch.hook`, asgml_jax/methods/base.py): per-encoder learning rates from the
validation accuracies, class prototypes from a tenth of the training set,
loss weights from trained copies of every branch. Their state lives in their
optax transformations (so in the train state, checkpointed with it); the
hooks compute the new values on the host's schedule and this module writes
them in with `optax.tree_utils.tree_set`. The loop calls `prepare` once
before the first epoch of a fresh run and `epoch_end` after each evaluation
and before the checkpoint, so a resumed run continues with exactly the values
it saved.

A hook is built once per run from an `EpochContext` (`epoch_context`): the
run's config, model and data, and the few operations hooks need (a feature
pass over a split, fixed-size batches, the epoch's first batches, logging
that names the seed), so a method never imports the training core.

A hook may also return new model parameters under the key `base.PARAMS` (the
whole params tree of that seed): Diagnosing & Re-learning moves encoders back
toward their initialisation between epochs.

States may be one run's or a sweep's (leaves with a leading seed axis); the
per-seed values are computed seed by seed and stacked. The hooks of a stack
run one after another on the same state; each writes its own fields.
"""

from __future__ import annotations

import contextvars
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgml_jax import augment, input_pipeline, optim, run_dir
from asgml_jax.methods.base import PARAMS, EpochContext

# "seed <s>: " while a sweep's hook runs for seed s ("" for one run): the
# context's `log` puts it first, so a sweep's log says which seed it is about.
_SEED_PREFIX = contextvars.ContextVar("epoch_hook_seed_prefix", default="")


def _log(line: str) -> None:
  run_dir.log(_SEED_PREFIX.get() + line)


def make_feature_fn(model, frame_sizes) -> Callable:
  """Jitted (variables, batch) -> {m: features}, inference mode."""

  def features(variables, batch):
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    out = model.apply(variables, {m: batch[m] for m in model.modality_names}, train=False)
    return out["features"]

  return jax.jit(features)


def epoch_context(setup) -> EpochContext:
  """The `EpochContext` of a run's setup (`loop.RunSetup`)."""
  data, names = setup.data, setup.names
  feature_fn = make_feature_fn(setup.model, setup.frame_sizes)
  config = setup.config

  def fixed_size_batches(arrays, count: int, size: int):
    return input_pipeline.fixed_size_batches(arrays, data.on_device, count, size)

  def split_features(variables, arrays: dict, count: int) -> tuple[dict, np.ndarray]:
    parts, labels = {m: [] for m in names}, []
    for rows, keep in fixed_size_batches(arrays, count, setup.eval_batch_size):
      feats = feature_fn(variables, rows)
      for m in names:
        parts[m].append(np.asarray(feats[m])[:keep])
      labels.append(np.asarray(rows["label"])[:keep])
    return {m: np.concatenate(v) for m, v in parts.items()}, np.concatenate(labels)

  def take_rows(arrays, idx):
    return input_pipeline.take_rows(arrays, data.on_device, idx)

  def train_batches(data_key, epoch: int, count: int):
    perm = input_pipeline.epoch_order(data, data_key, epoch)
    for i in range(count):
      args = input_pipeline.train_args(data, perm, i, config.batch_size)
      yield (input_pipeline.gather_batch(*args[:2], args[2], config.batch_size)
             if data.on_device else args[0])

  lr_fn = optim.lr_schedule(config, setup.steps_per_epoch)
  return EpochContext(
      config=config, names=names, num_classes=data.num_classes,
      steps_per_epoch=setup.steps_per_epoch, eval_batch_size=setup.eval_batch_size,
      model=setup.model, frame_sizes=setup.frame_sizes, data=data, log=_log,
      feature_fn=feature_fn, split_features=split_features,
      fixed_size_batches=fixed_size_batches, take_rows=take_rows, train_batches=train_batches,
      lr_at=lambda step: float(lr_fn(step)))


class EpochHooks:
  """Between-epoch updates of the method state of one run or of a sweep.

  The stack's hooks (`setup.epoch_hooks`, each an `Epoch.hook` builder) are
  built once here from the run's `EpochContext`."""

  def __init__(self, setup, data_keys: Sequence, stacked: bool,
               seeds: Sequence[int] | None = None):
    self.data_keys = list(data_keys)
    self.stacked = stacked
    self.prefixes = ([f"seed {s}: " for s in seeds] if seeds is not None and stacked
                     else [""] * len(self.data_keys))
    ctx = epoch_context(setup) if setup.epoch_hooks else None
    self.hooks = [build(ctx) for build in setup.epoch_hooks]

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
    params = fields.pop(PARAMS, None)
    if params is not None:
      states = states.replace(params=params)
    if not fields:
      return states
    return states.replace(opt_state=optax.tree_utils.tree_set(states.opt_state, **fields))

  def _run(self, states, call) -> object:
    for hook in self.hooks:
      per_seed = []
      for s, key in enumerate(self.data_keys):
        token = _SEED_PREFIX.set(self.prefixes[s])
        try:
          per_seed.append(call(hook, self._seed_state(states, s), s, key))
        finally:
          _SEED_PREFIX.reset(token)
      states = self._write(states, per_seed)
    return states

  def prepare(self, states):
    """Before the first epoch of a fresh run."""
    return self._run(states, lambda hook, state, s, key: hook.prepare(state, key))

  def epoch_rows(self, states, perms):
    """The epoch's order: the pipeline's permutation `perms` ((N,) or (S, N) for a
    sweep), or the order a re-sampling method's hook keeps in its state
    (`hook.epoch_rows(state, perm)` per seed; see `Epoch.resamples`)."""
    hooks = [h for h in self.hooks if hasattr(h, "epoch_rows")]
    if not hooks:
      return perms
    host = isinstance(perms, np.ndarray)
    rows = []
    for s in range(len(self.data_keys)):
      perm = perms[s] if self.stacked else perms
      for hook in hooks:
        perm = hook.epoch_rows(self._seed_state(states, s), perm)
      rows.append(np.asarray(perm) if host else jnp.asarray(perm))
    stack_ = np.stack if host else jnp.stack
    return stack_(rows) if self.stacked else rows[0]

  def epoch_end(self, states, validation: Sequence[dict], next_epoch: int):
    """After epoch `next_epoch − 1`'s evaluation (one validation dict per seed)."""
    return self._run(states, lambda hook, state, s, key: hook.epoch_end(
        state, validation[s], key, next_epoch))
