"""ARL (Wei et al., ICCV 2025, "Improving Multimodal Learning via Imbalanced
Learning") as an optax transformation plus a loss-weight schedule.

Reference (shicaiwei123/ICCV2025-ARL, main_arl_variance.py and
models/backbone.py `ResNet_weight`; docs/methods.md, the baselines), two modalities:

- unimodal logits z_m from the shared fusion layer with the other
  modality's features zeroed (for concat fusion: the split logits with the
  *full* bias);
- q_m: the batch-mean prediction entropy H_m, normalised H_m/ΣH, clamped
  to ≥ 0.3, inverted and normalised (q ∝ 1/H); d_m: the batch mean of
  Σ_c |z_m,c|, normalised (d/Σd);
- w = softmax(T·[d_v·q_a, d_a·q_v]), T = 8;
- after epoch `start` (epoch index > start), the encoder output's backward
  pass is `grad + grad·w_m` (`GradScale`), i.e. encoder m's gradient
  ×(1 + w_m); the loss is CE_f + γ_eff·Σ_m CE_m with γ_eff = 1 up to `start`
  and γ after; then the global gradient norm is clipped to 40.

Reading order in the reference: the backbone reads w during the forward pass,
before the step's new w is computed, so the scaling uses the previous step's
coefficients (0.5 each on the first step after `start`). `scaling="coefficients"`
reproduces this: w is kept in the state and replaced after use.
`scaling="fixed"` is the seeds' code, which multiplies every encoder
gradient by 1 + 0.5 = 1.5 (kept on purpose, as the seed-code protocol keeps the seeds' choices).

N modalities ([inferred]): d_other of m is the mean d of the other
modalities, w = softmax(T·[d_other_m·q_m]_m); for N = 2 the reference.
The γ schedule is `steps.train_step(unimodal_weight_after=(start, γ))`; the
clip is `optax.clip_by_global_norm` after this transformation in the chain.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCALINGS = ("coefficients", "fixed")


class ARLState(NamedTuple):
  arl_weight: dict       # {m: w_m of the last step} (the next step's scaling)
  arl_scale: dict        # {m: the factor applied to encoder m this step}, for logging


def zero_other_logits(split_logits: Mapping[str, jnp.ndarray], fusion_params) -> dict:
  """The fusion layer's output with only modality m's features: for a concat
  layer the split logits carry b/N, so add the rest of the bias."""
  if "kernel" in fusion_params and "bias" in fusion_params:
    n = len(split_logits)
    extra = fusion_params["bias"].astype(jnp.float32) * (1.0 - 1.0 / n)
    return {m: z.astype(jnp.float32) + extra for m, z in split_logits.items()}
  return {m: z.astype(jnp.float32) for m, z in split_logits.items()}


def arl_coefficients(logits: Mapping[str, jnp.ndarray], temperature: float) -> dict:
  """w_m = softmax_m(T·d_other_m·q_m) from each modality's unimodal logits."""
  names = sorted(logits)
  probs = {m: jax.nn.softmax(logits[m].astype(jnp.float32), -1) for m in names}
  entropy = jnp.stack([jnp.mean(jnp.sum(-probs[m] * jnp.log(probs[m] + 1e-16), -1))
                       for m in names])
  h = jnp.maximum(entropy / entropy.sum(), 0.3)
  q = (1.0 / h) / jnp.sum(1.0 / h)
  magnitude = jnp.stack([jnp.sum(jnp.mean(jnp.abs(logits[m].astype(jnp.float32)), 0))
                         for m in names])
  d = magnitude / magnitude.sum()
  n = len(names)
  d_other = (d.sum() - d) / max(n - 1, 1)
  w = jax.nn.softmax(temperature * d_other * q)
  return {m: w[i] for i, m in enumerate(names)}


def arl(steps_per_epoch: int, temperature: float = 8.0, start_epoch: int = 5,
        scaling: str = "coefficients") -> optax.GradientTransformationExtraArgs:
  """Encoder m's gradient ×(1 + w_m) after `start_epoch` (module docstring)."""
  if scaling not in SCALINGS:
    raise ValueError(f"arl scaling must be one of {SCALINGS}, got {scaling!r}")

  def init_fn(params):
    names = sorted(params["encoders"])
    half = {m: jnp.full((), 0.5, jnp.float32) for m in names}
    return ARLState(arl_weight=half, arl_scale={m: jnp.ones((), jnp.float32) for m in names})

  def update_fn(updates, state, params=None, *, step, unimodal_logits, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("arl needs the params (the fusion bias) in tx.update")
    names = sorted(updates["encoders"])
    active = (step // steps_per_epoch) > start_epoch
    used = state.arl_weight if scaling == "coefficients" else {
        m: jnp.full((), 0.5, jnp.float32) for m in names}
    scale = {m: jnp.where(active, 1.0 + used[m], 1.0).astype(jnp.float32) for m in names}
    new_w = arl_coefficients(
        jax.lax.stop_gradient(zero_other_logits(unimodal_logits, params["fusion"])), temperature)
    # Before `start` the reference resets w to 0.5 every step.
    new_w = {m: jnp.where(active, new_w[m], 0.5).astype(jnp.float32) for m in names}
    new = dict(updates)
    new["encoders"] = {m: jax.tree.map(lambda g, s=scale[m]: g * s.astype(g.dtype),
                                       updates["encoders"][m]) for m in names}
    return new, ARLState(arl_weight=new_w, arl_scale=scale)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
