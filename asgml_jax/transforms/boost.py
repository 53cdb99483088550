"""Continuous boost (ASGML seed v2, docs/methods.md): push the weak encoders harder.

From the probe utilization scores s_m (EMA of split-batch probe accuracies):
  gap = max s − min s;          gap < 1e-8  ->  computed scale_m = 1
  rel_weakness_m = 1 − (s_m − min s)/gap      (0 dominant … 1 weakest)
  scale_m = min(1 + α·rel_weakness_m, scale_max)
  at each probe refresh: scale_m ← ema_alpha·computed + (1 − ema_alpha)·scale_m
  (scales start at 1.0), and every step g_m ← scale_m·g_m on every leaf of
  encoder m.
The scales change only when the probes were refreshed (extra arg
`probe_refreshes` grew since the last update); in between, the cached scales
apply, as in the research code.

Seeds' code option: `noise_sigma > 0` adds N(0, σ·std(s·g)) to each 4-D (conv)
encoder gradient after scaling it by s: the seeds' code scales the gradient
in place and then reads its std (unbiased, as torch.std) — the research
code's `continuous_noise_sigma` (sweeps used 0.1).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax


class BoostState(NamedTuple):
  count: jnp.ndarray            # int32, updates seen
  scales: dict                  # {modality: current (EMA) scale}
  seen_refreshes: jnp.ndarray   # int32, probe refreshes already folded into `scales`
  key: jnp.ndarray              # PRNG key of the optional gradient noise


def boost_scales(scores: Mapping[str, jnp.ndarray], alpha: float, scale_max: float) -> dict:
  """Computed (pre-EMA) boost scale per modality (dict in, dict out, jit-safe)."""
  names = sorted(scores)
  values = jnp.stack([jnp.asarray(scores[m], jnp.float32) for m in names])
  lo, gap = values.min(), values.max() - values.min()
  safe_gap = jnp.where(gap < 1e-8, 1.0, gap)
  out = {}
  for i, m in enumerate(names):
    weakness = 1.0 - (values[i] - lo) / safe_gap
    scale = jnp.minimum(1.0 + alpha * weakness, scale_max)
    out[m] = jnp.where(gap < 1e-8, 1.0, scale)
  return out


def boost(alpha: float = 0.5, scale_max: float = 2.0, ema_alpha: float = 0.3,
          noise_sigma: float = 0.0, seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Scales `updates["encoders"][m]` by the EMA'd boost scale of m.

  Extra args: `probe_scores` {m: utilization score}, `probe_refreshes` (int).
  """

  def init_fn(params):
    names = sorted(params["encoders"])
    return BoostState(count=jnp.zeros((), jnp.int32),
                      scales={m: jnp.ones((), jnp.float32) for m in names},
                      seen_refreshes=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, probe_scores, probe_refreshes, **extra_args):
    del params, extra_args
    fresh = probe_refreshes > state.seen_refreshes
    computed = boost_scales(probe_scores, alpha, scale_max)
    scales = {m: jnp.where(fresh, ema_alpha * computed[m] + (1 - ema_alpha) * s, s)
              for m, s in state.scales.items()}
    key, noise_key = jax.random.split(state.key)
    encoders = {}
    for i, (m, enc) in enumerate(sorted(updates["encoders"].items())):
      leaves, treedef = jax.tree.flatten(enc)
      keys = jax.random.split(jax.random.fold_in(noise_key, i), max(len(leaves), 1))
      out = []
      for g, k in zip(leaves, keys):
        new = g * scales[m].astype(g.dtype)
        if noise_sigma > 0 and g.ndim == 4:
          std = jnp.std(new.astype(jnp.float32), ddof=1)   # of the scaled gradient
          new = new + (noise_sigma * std * jax.random.normal(k, g.shape)).astype(g.dtype)
        out.append(new)
      encoders[m] = jax.tree.unflatten(treedef, out)
    new_state = BoostState(count=state.count + 1, scales=scales,
                           seen_refreshes=jnp.maximum(state.seen_refreshes, probe_refreshes),
                           key=key)
    return {**updates, "encoders": encoders}, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
