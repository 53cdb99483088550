"""MILES (IJCNN 2025): per-encoder learning rates set between epochs from the
validation accuracies of each unimodal head.

No official code; the rule is a third-party reimplementation's
(docs/methods.md, the baselines):

- loss CE(fused) + γ·Σ_m CE(unimodal head m), γ = 1, separate heads;
- after each epoch, on the *validation* split: u_m = (acc_all − acc_other)/acc_all,
  the conditional utilization rate of m (for N > 2, acc_other = the mean of the
  other modalities' unimodal accuracies); δ = max u − min u;
- if every u < 0 or δ ≤ τ: every encoder at the base learning rate; else the
  encoder of the largest u at base·μ for the next epoch.

The transformation sits after the base optimizer (weight decay, momentum,
lr) and multiplies encoder m's update by `miles_lr_scale[m]`: exactly what
a per-parameter-group learning rate does to SGD with momentum. The scales
live in its state; `epoch_hooks` sets them after each evaluation, before
the checkpoint, through `next_lr_scales`. Guard ([inferred]): acc_all = 0
(nothing right yet) resets every scale to 1 instead of dividing by zero.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class MILESState(NamedTuple):
  miles_lr_scale: dict       # {m: multiplier of encoder m's update}
  miles_utilization: dict    # {m: u_m of the last evaluation}, for logging


def utilization_rates(fused_accuracy: float, unimodal_accuracy: Mapping[str, float]) -> dict:
  """u_m = (acc_all − mean_{j≠m} acc_j) / acc_all; zeros when acc_all = 0."""
  names = sorted(unimodal_accuracy)
  if fused_accuracy <= 0 or len(names) < 2:
    return {m: 0.0 for m in names}
  return {m: (fused_accuracy - float(np.mean([unimodal_accuracy[j] for j in names if j != m])))
          / fused_accuracy for m in names}


def next_lr_scales(utilization: Mapping[str, float], tau: float, mu: float) -> dict:
  """The dominant encoder at μ when the rates differ by more than τ, else all at 1."""
  names = sorted(utilization)
  u = np.array([utilization[m] for m in names], np.float64)
  scales = {m: 1.0 for m in names}
  if len(names) < 2 or np.all(u < 0) or (u.max() - u.min()) <= tau:
    return scales
  scales[names[int(np.argmax(u))]] = float(mu)
  return scales


def miles() -> optax.GradientTransformationExtraArgs:
  """Scales encoder m's (final) update by the state's `miles_lr_scale[m]`."""

  def init_fn(params):
    names = sorted(params["encoders"])
    return MILESState(miles_lr_scale={m: jnp.ones((), jnp.float32) for m in names},
                      miles_utilization={m: jnp.zeros((), jnp.float32) for m in names})

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    new = dict(updates)
    new["encoders"] = {m: jax.tree.map(lambda u, s=state.miles_lr_scale[m]: u * s.astype(u.dtype),
                                       g) for m, g in updates["encoders"].items()}
    return new, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
