"""AGM (Li et al., ICCV 2023): Shapley outputs from zero-input passes, gradients
of each modality's output scaled by c_m.

Reference (Lingy12/AGM_ICCV2023, model/CREMAD_net.py `GradMod`, run/CREMAD_main.py
`train`; docs/methods.md, the baselines), for two modalities:

- m_a = ½(f(a,v) − f(0,v) + f(a,0)), m_v = ½(f(a,v) − f(a,0) + f(0,v)), f the
  fused logits with the other inputs zeroed; the loss is CE(m_a + m_v);
- s_m = mean_i −log softmax(m_m)_i[y_i], probabilities floored at 1e-8;
  S̄_m the running mean of s_m since the start of training;
- ratio_a = exp(s_v − s_a), opt_a = exp(S̄_v − S̄_a), c_m = exp(α·min(opt_m −
  ratio_m, 10)); ∂L/∂m_m is multiplied by c_m (a gradient hook on m_m);
- modulation only in the epochs [modulation_starts, modulation_ends].

N modalities: m_m is the Shapley value of m in the game v(S) = f(inputs of S,
zeros elsewhere) with v(∅) = 0, which is the formula above for N = 2 (2^N − 1
forward passes); ratio_m = exp(N/(N−1)·(mean_j s_j − s_m)), the same for
opt_m with S̄, and the cap is 7 for N > 2.

Also as the reference: the zero-input passes run the network in inference
mode (`self.net.eval()` in `GradMod.forward`: BatchNorm running statistics,
no dropout), still differentiated; the c_m of a step use S̄ of the steps
before it (`train_score` is updated after the coefficients; on the very first
step S̄ = this batch's s here, so c = 1); outside the modulation window the
last coefficients stay (the backward hooks keep the last scale set); and
when any fusion-layer weight gradient element leaves [−1, 1], the whole
gradient's norm is clipped at 1 (`conditional_clip`, after this
transformation in the chain).

The loss side (the extra passes, the Shapley outputs and the gradient
scaling) is the method's fused-loss hook (asgml_jax/methods/agm.py); this
transformation keeps S̄_m and the last coefficients in the optimizer state
and leaves the gradients alone.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgml_jax.transforms.ogm_ge import in_epoch_window


class AGMConfig(NamedTuple):
  alpha: float
  modulation_starts: int   # epochs, inclusive
  modulation_ends: int     # epochs, inclusive
  steps_per_epoch: int


class AGMState(NamedTuple):
  agm_count: jnp.ndarray     # steps seen
  agm_running_score: dict    # S̄_m
  agm_coefficients: dict     # c_m of the last step, for logging


def coalitions(names) -> list[frozenset]:
  """Every non-empty subset of the modalities (the forward passes AGM needs)."""
  return [frozenset(c) for r in range(1, len(names) + 1)
          for c in itertools.combinations(sorted(names), r)]


def shapley_outputs(value: Callable[[frozenset], jnp.ndarray], names) -> dict:
  """φ_m = Σ_{S ⊆ N∖{m}} |S|!(N−|S|−1)!/N!·(v(S ∪ {m}) − v(S)), v(∅) = 0."""
  names = sorted(names)
  n = len(names)
  cache = {}

  def v(subset):
    if not subset:
      return 0.0
    if subset not in cache:
      cache[subset] = value(subset)
    return cache[subset]

  out = {}
  for m in names:
    others = [o for o in names if o != m]
    total = 0.0
    for r in range(len(others) + 1):
      weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
      for subset in itertools.combinations(others, r):
        s = frozenset(subset)
        total = total + weight * (v(s | {m}) - v(s))
    out[m] = total
  return out


def agm_scores(outputs: Mapping[str, jnp.ndarray], labels_B: jnp.ndarray) -> dict:
  """s_m = mean_i −log max(softmax(m_m)_i[y_i], 1e-8), in float32."""
  def score(z):
    probs = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(probs, labels_B[:, None], axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(picked, 1e-8)))
  return {m: score(z) for m, z in outputs.items()}


def agm_coefficients(scores: Mapping[str, jnp.ndarray], running: Mapping[str, jnp.ndarray],
                     alpha: float, active, previous: Mapping[str, jnp.ndarray] | None = None
                     ) -> dict:
  """c_m = exp(α·min(opt_m − ratio_m, cap)) while active; outside the window the
  `previous` coefficients (the reference keeps the last scale it set), 1 if None."""
  names = sorted(scores)
  n = len(names)
  if n < 2:
    return {m: jnp.ones((), jnp.float32) for m in names}
  cap = 10.0 if n == 2 else 7.0
  s = jnp.stack([jnp.asarray(scores[m], jnp.float32) for m in names])
  r = jnp.stack([jnp.asarray(running[m], jnp.float32) for m in names])
  ratio = jnp.exp(n / (n - 1) * (s.mean() - s))
  optimal = jnp.exp(n / (n - 1) * (r.mean() - r))
  kept = (jnp.ones_like(s) if previous is None else
          jnp.stack([jnp.asarray(previous[m], jnp.float32) for m in names]))
  c = jnp.where(active, jnp.exp(alpha * jnp.minimum(optimal - ratio, cap)), kept)
  return {m: c[i] for i, m in enumerate(names)}


def scale_gradient(x: jnp.ndarray, c) -> jnp.ndarray:
  """x in the forward pass; c·(incoming gradient) in the backward pass."""
  c = jax.lax.stop_gradient(jnp.asarray(c, jnp.float32)).astype(x.dtype)
  return c * x + jax.lax.stop_gradient((1 - c) * x)


def modulation_active(cfg: AGMConfig, step) -> jnp.ndarray:
  return in_epoch_window(step, cfg.steps_per_epoch, cfg.modulation_starts, cfg.modulation_ends)


def agm_running_scores(opt_state, scores: Mapping[str, jnp.ndarray]) -> dict:
  """S̄ of the steps before this one (this batch's s on the first step)."""
  count = optax.tree_utils.tree_get(opt_state, "agm_count")
  running = optax.tree_utils.tree_get(opt_state, "agm_running_score")
  return {m: jnp.where(count > 0, running[m], scores[m]) for m in scores}


def agm() -> optax.GradientTransformationExtraArgs:
  """Keeps S̄_m (the running mean of the step's `agm_scores` extra arg) and the
  step's `agm_coefficients` for logging; gradients pass unchanged."""

  def init_fn(params):
    names = sorted(params["encoders"])
    return AGMState(agm_count=jnp.zeros((), jnp.int32),
                    agm_running_score={m: jnp.zeros((), jnp.float32) for m in names},
                    agm_coefficients={m: jnp.ones((), jnp.float32) for m in names})

  def update_fn(updates, state, params=None, *, agm_scores, agm_coefficients, **extra_args):
    del params, extra_args
    k = state.agm_count.astype(jnp.float32)
    running = {m: (state.agm_running_score[m] * k + agm_scores[m]) / (k + 1)
               for m in state.agm_running_score}
    return updates, AGMState(agm_count=state.agm_count + 1, agm_running_score=running,
                             agm_coefficients={m: jnp.asarray(c, jnp.float32)
                                               for m, c in agm_coefficients.items()})

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ConditionalClipState(NamedTuple):
  """No state."""


def conditional_clip(max_norm: float = 1.0, threshold: float = 1.0
                     ) -> optax.GradientTransformation:
  """The reference's clip: when any element of a fusion-layer weight gradient
  (`kernel` leaves under updates["fusion"]) leaves [−threshold, threshold], the
  global norm of the whole gradient is clipped at `max_norm`."""

  def init_fn(params):
    del params
    return ConditionalClipState()

  def update_fn(updates, state, params=None):
    del params
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(updates["fusion"])
               if getattr(path[-1], "key", None) == "kernel"]
    big = jnp.any(jnp.stack([jnp.max(jnp.abs(k)) > threshold for k in kernels]))
    norm = optax.global_norm(updates)
    scale = jnp.where(big & (norm > max_norm), max_norm / jnp.maximum(norm, 1e-12), 1.0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)
