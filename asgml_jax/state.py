"""The train state: one pytree, everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from asgml_jax.probes import init_probe_state

# `health` is [first bad step, code]; code 0 = loss, 1 + i = encoder of the
# i-th modality, N + 1 = fusion/heads. [-1, -1] while everything is finite.
HEALTHY = (-1, -1)


class TrainState(flax.struct.PyTreeNode):
  """Pure-functional train state.

  `rng` is fixed for the run; per-step keys are `fold_in(rng, step)`, so a
  resumed run draws the same dropout as an uninterrupted one. `probe_state`
  is the probes' own state. Per-step signals (OGM scores, grad norms,
  unimodal losses, probe scores) are computed in the step and handed to
  `tx.update` as extra args; what an intervention must remember across steps
  (EMA'd scales, gradient ring buffers, loss history) lives in its own
  optimizer state, so no separate `signals` field is needed.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray
  health: jnp.ndarray
  probe_state: Any = None

  def variables(self) -> dict:
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def distinct_buffers(tree: Any) -> Any:
  """A copy of `tree` in which no two leaves share a device buffer.

  Donating a state whose leaves alias one buffer (one `jnp.zeros` stored in
  two fields) fails on accelerators ("donate the same buffer twice"), so
  anything handed to a donating step goes through this first.
  """
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def create_train_state(model, tx, example_batch: dict, key: jnp.ndarray,
                       probe_cfg=None, replace_variables=None) -> TrainState:
  """Initialises params (OGM-GE-reference init), optimizer and probe state from `key`.

  replace_variables: optional `(params, batch_stats) -> (params, batch_stats)`
  applied before the optimizer state is made from the params (pretrained
  encoders, `asgml_jax/pretrained.py`)."""
  init_key, dropout_key, rng = jax.random.split(key, 3)
  probe_key = jax.random.fold_in(key, 1)
  variables = jax.jit(lambda k1, k2, b: model.init({"params": k1, "dropout": k2}, b, train=False))(
      init_key, dropout_key, example_batch)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  if replace_variables is not None:
    params, batch_stats = jax.tree.map(jnp.asarray, replace_variables(params, batch_stats))
  return distinct_buffers(TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      rng=rng,
      health=jnp.asarray(HEALTHY, jnp.int32),
      probe_state=(init_probe_state(probe_cfg, probe_key, model.feature_dim)
                   if probe_cfg is not None else None)))
