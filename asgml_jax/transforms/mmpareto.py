"""MMPareto (Wei & Hu, ICML 2024) as an optax gradient transformation.

Reference math (GeWu-Lab/MMPareto_ICML2024, code/MMPareto.py; docs/methods.md, the baselines).
Per modality m, with g_mm = ∇_{θ_m} L_fused and g_m = ∇_{θ_m} L_m flattened
over all of encoder m's parameters:

  c_m = cos(g_mm, g_m)
  c_m > 0: (k0, k1) = (0.5, 0.5)
  else:    γ = (g_m·g_m − g_mm·g_m) / ‖g_mm − g_m‖²  clipped to [0.001, 0.999]
           (k0, k1) = (γ, 1 − γ)     (the two-task MGDA min-norm point)
  per encoder tensor p:
    new = 2·(k0·g_mm[p] + k1·g_m[p]);  r = ‖total[p]‖ / ‖new‖
    grad[p] = γ_s·(r·new if r > 1 else new),  γ_s = 1.5 (`scale`)

`total` is the incoming (summed) gradient; fusion and heads pass through
unchanged. N modalities: each encoder solves its own two-task problem, as the
reference does. Guards (not in the reference): a zero ‖g_mm − g_m‖ keeps
γ = 0.5 (the two gradients coincide, every γ is the minimum), and a zero
‖new‖ leaves r·new = 0 rather than 0·inf.

Extra args of `update`: `loss_grads` {"fused" | m: grads} (`steps.train_step`
with `per_loss_grads=True`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgml_jax.losses import FUSED_TASK


class MMParetoState(NamedTuple):
  pareto_cosines: dict   # c_m of the last step, for logging
  pareto_gammas: dict    # k0 (weight of the fused gradient) of the last step


def _flat(tree) -> jnp.ndarray:
  return jnp.concatenate([x.astype(jnp.float32).ravel() for x in jax.tree.leaves(tree)])


def pareto_weights(g_mm: jnp.ndarray, g_m: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(cos(g_mm, g_m), k0) for two flat gradients; k1 = 1 − k0."""
  dot = jnp.vdot(g_mm, g_m)
  norms = jnp.linalg.norm(g_mm) * jnp.linalg.norm(g_m)
  cosine = jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)
  diff = jnp.sum(jnp.square(g_mm - g_m))
  gamma = jnp.where(diff > 0, (jnp.vdot(g_m, g_m) - dot) / jnp.where(diff > 0, diff, 1.0), 0.5)
  k0 = jnp.where(cosine > 0, 0.5, jnp.clip(gamma, 0.001, 0.999))
  return cosine, k0


def _rescaled(total: jnp.ndarray, g_mm: jnp.ndarray, g_m: jnp.ndarray, k0, scale: float):
  new = 2.0 * (k0 * g_mm.astype(jnp.float32) + (1.0 - k0) * g_m.astype(jnp.float32))
  new_norm = jnp.linalg.norm(new)
  ratio = jnp.linalg.norm(total.astype(jnp.float32)) / jnp.where(new_norm > 0, new_norm, 1.0)
  out = scale * jnp.where((ratio > 1.0) & (new_norm > 0), ratio * new, new)
  return out.astype(total.dtype)


def mmpareto(scale: float = 1.5) -> optax.GradientTransformationExtraArgs:
  """MMPareto's per-encoder gradient integration (see the module docstring)."""

  def init_fn(params):
    zeros = {m: jnp.zeros((), jnp.float32) for m in sorted(params["encoders"])}
    return MMParetoState(pareto_cosines=zeros, pareto_gammas=dict(zeros))

  def update_fn(updates, state, params=None, *, loss_grads, **extra_args):
    del params, extra_args, state
    encoders, cosines, gammas = {}, {}, {}
    for m, total in sorted(updates["encoders"].items()):
      g_mm, g_m = loss_grads[FUSED_TASK]["encoders"][m], loss_grads[m]["encoders"][m]
      cosines[m], gammas[m] = pareto_weights(_flat(g_mm), _flat(g_m))
      encoders[m] = jax.tree.map(lambda t, a, b, k0=gammas[m]: _rescaled(t, a, b, k0, scale),
                                 total, g_mm, g_m)
    return {**updates, "encoders": encoders}, MMParetoState(cosines, gammas)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
