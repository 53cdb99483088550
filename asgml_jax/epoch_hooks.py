"""Method state that changes between epochs, not inside the jitted step.

Some methods decide once per epoch from a whole pass over data (a method's
`epoch_hook`, asgml_jax/methods/base.py): per-encoder learning rates from the
validation accuracies, class prototypes from a tenth of the training set,
loss weights from trained copies of every branch. Their state lives in their
optax transformations (so in the train state, checkpointed with it); the
hooks compute the new values on the host's schedule and this module writes
them in with `optax.tree_utils.tree_set`. Both `train.py` and `sweep.py`
call `prepare` once before the first epoch of a fresh run and `epoch_end`
after each evaluation and before the checkpoint, so a resumed run continues
with exactly the values it saved.

A hook may also return new model parameters under the key `PARAMS` (the
whole params tree of that seed): Diagnosing & Re-learning moves encoders back
toward their initialisation between epochs.

States may be one run's or a sweep's (leaves with a leading seed axis); the
per-seed values are computed seed by seed and stacked. The hooks of a stack
run one after another on the same state; each writes its own fields.
"""

from __future__ import annotations

import contextvars
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgml_jax.methods import stack as method_stack

# The key under which a hook returns new parameters instead of an opt-state field.
PARAMS = "params"

# "seed <s>: " while a sweep's hook runs for seed s ("" for one run): hooks that
# log a line put it first, so a sweep's log says which seed it is about.
_SEED_PREFIX = contextvars.ContextVar("epoch_hook_seed_prefix", default="")


def seed_prefix() -> str:
  return _SEED_PREFIX.get()


def split_features(setup, feature_fn, variables, arrays: dict,
                   count: int) -> tuple[dict, np.ndarray]:
  """({m: (count, D)}, (count,) labels): `feature_fn(variables, batch)` over the
  first `count` rows of a split, in fixed-size batches (one compiled shape), for
  the hooks that read a whole split's features (Re-learning, DI-MML)."""
  from asgml_jax import input_pipeline
  parts, labels = {m: [] for m in setup.names}, []
  for rows, keep in input_pipeline.fixed_size_batches(arrays, setup.data.on_device, count,
                                                      setup.eval_batch_size):
    feats = feature_fn(variables, rows)
    for m in setup.names:
      parts[m].append(np.asarray(feats[m])[:keep])
    labels.append(np.asarray(rows["label"])[:keep])
  return {m: np.concatenate(v) for m, v in parts.items()}, np.concatenate(labels)


class EpochHooks:
  """Between-epoch updates of the method state of one run or of a sweep."""

  def __init__(self, setup, data_keys: Sequence, stacked: bool,
               seeds: Sequence[int] | None = None):
    self.setup = setup
    self.config = setup.config
    self.data_keys = list(data_keys)
    self.stacked = stacked
    self.prefixes = ([f"seed {s}: " for s in seeds] if seeds is not None and stacked
                     else [""] * len(self.data_keys))
    self.hooks = method_stack.epoch_hooks(self.config, setup)

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
    (`hook.epoch_rows(state, perm)` per seed; see `Method.resamples`)."""
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
