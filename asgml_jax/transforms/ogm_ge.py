"""OGM / OGM-GE (Peng et al., CVPR 2022) as an optax gradient transformation.

Reference math (GeWu-Lab/OGM-GE_CVPR2022, main.py; docs/methods.md, the baselines):
  score_m = Σ_i softmax(z_m)[i, y_i]   (batch *sum*, split-weight unimodal logits)
  N = 2:  ratio_v = s_v / s_a, ratio_a = 1 / ratio_v
          ratio_v > 1: coeff_v = 1 − tanh(α·relu(ratio_v)), coeff_a = 1
          else:        coeff_a = 1 − tanh(α·relu(ratio_a)), coeff_v = 1
  OGM:    g ← g·coeff                     on the modulated encoder leaves
  OGM-GE: g ← g·coeff + N(0, std(g) + 1e-8)   std of the *unscaled* gradient,
          one scalar per tensor (torch.std: unbiased), on both modalities
  active while modulation_starts ≤ epoch ≤ modulation_ends.

N modalities (this project's generalisation, docs/methods.md, the baselines): ratio_m =
score_m / mean_{j≠m} score_j, coeff_m = 1 − tanh(α·relu(ratio_m)) where
ratio_m > 1, else 1. For N = 2 the reference's tie (s_a == s_v) throttles the
first modality (its `else` branch); that tie rule is kept, so N = 2 is exact.

Leaves: the reference modulates only 4-D (conv) gradients; `leaves="conv"`
reproduces it, the default `"all"` modulates every encoder leaf (docs/encoders.md), and
`"min_2d"` is the seeds' code (leaves with ≥ 2-D gradients). `noise_on`
`"all"` (reference) or `"dominant"` (seeds' code: only throttled modalities).
Only `updates["encoders"]` is touched; fusion and heads pass through.

Extra args of `update`: `ogm_scores` {m: score} and `step` (global step).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgml_jax.losses import batch_scores  # noqa: F401  (re-exported)

LEAVES = ("all", "conv", "min_2d")
NOISE_ON = ("all", "dominant")


class OGMGEState(NamedTuple):
  count: jnp.ndarray          # int32, number of updates seen
  key: jnp.ndarray            # PRNG key of the GE noise
  coefficients: dict          # last coeff_m (1.0 outside the window), for logging
  ratios: dict                # last ratio_m, for logging


RATIO_TO = ("others", "all")


def score_ratios(scores: Mapping[str, jnp.ndarray], ratio_to: str = "others") -> dict:
  """ratio_m = score_m / mean_{j≠m} score_j (for N = 2: s_m / s_other).

  ratio_to="all" (the seeds' code for N ≥ 3): score_m / mean_j score_j over
  every modality; for N = 2 both are the reference's s_m / s_other."""
  names = sorted(scores)
  total = sum(scores[m] for m in names)
  n = len(names)
  if ratio_to == "all" and n >= 3:
    return {m: scores[m] / (total / n) for m in names}
  return {m: scores[m] / ((total - scores[m]) / (n - 1)) for m in names}


COEFFICIENTS = ("reference", "continuous")


def ogm_coefficients(scores: Mapping[str, jnp.ndarray], alpha: float,
                     coefficient: str = "reference") -> dict:
  """coeff_m of OGM for every modality (dict in, dict out, jit-safe)."""
  return _coefficients_from_ratios(score_ratios(scores), alpha, coefficient)


def _coefficients_from_ratios(ratios: Mapping[str, jnp.ndarray], alpha: float,
                              coefficient: str = "reference") -> dict:
  """reference: 1 − tanh(α·relu(ratio)) for the dominant (the official code: a
  modality ahead by any margin is scaled by at most 1 − tanh(α), 0.34 for
  α = 0.8, and one behind by any margin not at all); continuous: 1 −
  tanh(α·relu(ratio − 1)), which goes to 1 as the modalities balance."""
  names = sorted(ratios)
  shift = 1.0 if coefficient == "continuous" else 0.0
  throttle = lambda r: 1.0 - jnp.tanh(alpha * jax.nn.relu(r - shift))
  if len(names) == 2:
    first, second = names
    second_dominates = ratios[second] > 1.0
    return {first: jnp.where(second_dominates, 1.0, throttle(ratios[first])),
            second: jnp.where(second_dominates, throttle(ratios[second]), 1.0)}
  return {m: jnp.where(ratios[m] > 1.0, throttle(ratios[m]), 1.0) for m in names}


def is_modulated_leaf(leaf: jnp.ndarray, leaves: str) -> bool:
  """Whether a gradient leaf is one `leaves` selects: every leaf (all), 4-D conv
  kernels (conv, the reference's `len(grad.size()) == 4`) or ≥ 2-D (min_2d)."""
  if leaves == "conv":
    return leaf.ndim == 4
  if leaves == "min_2d":
    return leaf.ndim >= 2
  return True


def _tensor_std(g: jnp.ndarray) -> jnp.ndarray:
  """torch.Tensor.std(): unbiased over all elements."""
  return jnp.std(g.astype(jnp.float32), ddof=1 if g.size > 1 else 0)


def ogm_ge(alpha: float, *, steps_per_epoch: int, gradient_noise: bool = True,
           modulation_starts: int = 0, modulation_ends: int = 50, leaves: str = "all",
           noise_on: str = "all", seed: int = 0,
           ratio_to: str = "others",
           coefficient: str = "reference") -> optax.GradientTransformationExtraArgs:
  """OGM (gradient_noise=False) or OGM-GE on `updates["encoders"][m]`;
  ratio_to: see `score_ratios`; coefficient: see `_coefficients_from_ratios`."""
  if coefficient not in COEFFICIENTS:
    raise ValueError(f"coefficient={coefficient!r}; choose one of {COEFFICIENTS}")
  if ratio_to not in RATIO_TO:
    raise ValueError(f"ratio_to={ratio_to!r}; choose one of {RATIO_TO}")
  if leaves not in LEAVES:
    raise ValueError(f"leaves={leaves!r}; choose one of {LEAVES}")
  if noise_on not in NOISE_ON:
    raise ValueError(f"noise_on={noise_on!r}; choose one of {NOISE_ON}")

  def init_fn(params):
    names = sorted(params["encoders"])
    ones = {m: jnp.ones((), jnp.float32) for m in names}
    return OGMGEState(count=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed),
                      coefficients=ones, ratios=dict(ones))

  def update_fn(updates, state, params=None, *, ogm_scores, step, **extra_args):
    del params, extra_args
    active = in_epoch_window(step, steps_per_epoch, modulation_starts, modulation_ends)
    ratios = score_ratios(ogm_scores, ratio_to)
    coeffs = _coefficients_from_ratios(ratios, alpha, coefficient)
    key, noise_key = jax.random.split(state.key)
    new_encoders = {}
    for i, (m, enc) in enumerate(sorted(updates["encoders"].items())):
      coeff = coeffs[m]
      # Reference: noise on every modality; seeds' code: only on throttled ones.
      add_noise = jnp.bool_(noise_on == "all") | (coeff < 1.0)
      leaves_flat, treedef = jax.tree.flatten(enc)
      keys = jax.random.split(jax.random.fold_in(noise_key, i), max(len(leaves_flat), 1))
      out = []
      for g, k in zip(leaves_flat, keys):
        if not is_modulated_leaf(g, leaves):
          out.append(g)
          continue
        new = g * coeff.astype(g.dtype)
        if gradient_noise:
          noise = jax.random.normal(k, g.shape, jnp.float32) * (_tensor_std(g) + 1e-8)
          new = new + jnp.where(add_noise, noise, 0.0).astype(g.dtype)
        out.append(jnp.where(active, new, g))
      new_encoders[m] = jax.tree.unflatten(treedef, out)
    logged = {m: jnp.where(active, coeffs[m], 1.0).astype(jnp.float32) for m in coeffs}
    new_state = OGMGEState(count=state.count + 1, key=key, coefficients=logged,
                           ratios={m: r.astype(jnp.float32) for m, r in ratios.items()})
    return {**updates, "encoders": new_encoders}, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def in_epoch_window(step, steps_per_epoch: int, first_epoch: int, last_epoch: int):
  """Whether the global `step` falls in the epochs [first_epoch, last_epoch] (inclusive);
  the modulation window of OGM-GE, AGM and PMR."""
  epoch = step // steps_per_epoch
  return (epoch >= first_epoch) & (epoch <= last_epoch)
