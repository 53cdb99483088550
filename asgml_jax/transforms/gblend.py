"""G-Blending (Wang et al., CVPR 2020): the loss Σ_k w_k·CE_k over the fused head
and every unimodal head, the weights re-estimated every `gb_epoch` epochs.

This transformation applies the weights: with the per-loss gradients the
step hands it (`per_loss_grads=True`) it returns Σ_k w_k ∇L_k, w in its state
as `task_weights` (the tasks are ("fused", *modalities), as for DWA).
`asgml_jax.gblend` estimates new weights between epochs and `epoch_hooks`
writes them into this state.

Weight rule (MultiBench, training_structures/gradient_blend.py,
`train_unimodal` / `train_multimodal` with delta=False; docs/methods.md, the baselines
§G-Blending): w_k = |L^V_k / O_k²| with O_k = L^V_k − L^T_k, the holdout and
train losses of a copy of task k's branch trained gb_epoch epochs after the
training; O_k < 0 (the holdout loss below the train loss) is set to 1e-4, so
that task takes almost all the weight, as the reference does; normalised to
Σ w = 1. Guard (not in the reference, which divides by zero): O_k = 0 is set
to 1e-4 too.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax

from asgml_jax.transforms.multitask import _weighted_sum, task_names


class GBlendState(NamedTuple):
  task_weights: dict    # {task: w_k}


def blending_weights(train_losses, holdout_losses, floor: float = 1e-4) -> np.ndarray:
  """w_k = |L^V_k / O_k²|, O_k = L^V_k − L^T_k (set to `floor` where O_k ≤ 0),
  normalised to sum 1."""
  lt = np.asarray(train_losses, np.float64)
  lv = np.asarray(holdout_losses, np.float64)
  overfit = lv - lt
  overfit = np.where(overfit > 0, overfit, floor)
  w = np.abs(lv / overfit ** 2)
  return w / w.sum()


def gblend() -> optax.GradientTransformationExtraArgs:
  """Σ_k w_k ∇L_k with the state's weights (1 each until the first estimate)."""

  def init_fn(params):
    return GBlendState({t: jnp.ones((), jnp.float32) for t in task_names(params)})

  def update_fn(updates, state, params=None, *, loss_grads, **extra_args):
    del params, extra_args
    tasks = task_names(updates)
    weights = jnp.stack([state.task_weights[t] for t in tasks]).astype(jnp.float32)
    return _weighted_sum(loss_grads, tasks, weights, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
