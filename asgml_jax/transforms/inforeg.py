"""InfoReg (Huang et al., CVPR 2025) as an optax transformation.

Reference (GeWu-Lab/InfoReg_CVPR2025, main.py; docs/methods.md, the baselines):

- anchor θ0 = the encoder parameters at the start of each epoch;
- prime-learning window: T(e) = the encoder's Fisher-information trace of
  epoch e, Σ over the epoch's steps of grad² on every Conv/Linear weight,
  mean over each weight's elements, summed over the layers. The history
  starts with 10 zeros; k = (T(e−1) − T(e−11)) / Σ_{j=e−10}^{e−1} T(j), k = 1
  at epoch 0; regulation is on while k > threshold;
- batch-sum scores s_m = Σ_i softmax(z_m)_i[y_i] of the split-head logits,
  the loss CE(z) + CE(z_a) + CE(z_v) (unimodal weight 1, split head);
- the more confident modality gets a proximal pull towards its anchor,
  grad(θ_m) += β_m·(θ_m − θ0_m), β_m = scale_m·exp(tanh(s_m − s_other))
  (scale 0.95 audio, 0.1 visual in the reference); the other gets β = 0.

Here the anchor, the epoch's running trace and the last 11 traces live in
this transformation's state; the epoch boundary is read off the global
`step` extra arg, so no host hook is needed. The scores are the step's
`ogm_scores` (split-head batch sums, the same quantity).

Where the reference is silent, buggy or two-modality only ([inferred]):
- N modalities: β_m = scale_m·exp(tanh(N/(N−1)·(s_m − mean_j s_j))) for every
  m above the mean, else 0. For N = 2 this is exactly the reference's
  exp(tanh(s_a − s_v)) for the larger score. One modality: never regulated.
- (The reference's current main.py regulates the visual encoder when
  s_v > s_a; an earlier commit tested s_v < s_a twice. This follows the
  current one.)
- The window: `window_modality=""` gives every modality its own k_m from its
  own encoder's trace (the N-modality default); naming a modality makes its k
  the one flag for all, as the reference does with audio (the `inforeg`
  variant sets it). Σ T = 0 (an encoder that never got a
  gradient) closes the window instead of dividing by zero.
- T is accumulated from the gradient after the proximal term, as the
  reference reads `.grad` after adding it; the weights are the leaves named
  `kernel` (Flax's Conv and Dense weights), not biases or BatchNorm.
- The threshold defaults to the formula sheet's 0.05 (one version of the code
  uses 0.04).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

HISTORY = 11  # T(e−11) … T(e−1)


class InfoRegState(NamedTuple):
  epoch: jnp.ndarray          # int32, the epoch being accumulated
  anchor: dict                # {m: encoder m's parameters at the start of the epoch}
  trace_sum: dict             # {m: this epoch's running Fisher trace}
  trace_history: dict         # {m: (11,) the traces of epochs e−11 … e−1, zeros before 0}
  inforeg_window: dict        # {m: k_m of this epoch}, for logging
  inforeg_beta: dict          # {m: β_m of the last step}, for logging


def fisher_trace_increment(encoder_grads) -> jnp.ndarray:
  """Σ over Conv/Dense weights (`kernel` leaves) of mean(grad²)."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(encoder_grads):
    if getattr(path[-1], "key", None) == "kernel":
      total = total + jnp.mean(jnp.square(leaf.astype(jnp.float32)))
  return total


def window_coefficient(history: jnp.ndarray, epoch) -> jnp.ndarray:
  """k = (T(e−1) − T(e−11)) / Σ_{last 10} T; 1 at epoch 0; 0 where Σ T = 0."""
  recent = history[1:].sum()
  k = (history[-1] - history[0]) / jnp.where(recent > 0, recent, 1.0)
  return jnp.where(epoch == 0, 1.0, jnp.where(recent > 0, k, 0.0)).astype(jnp.float32)


def regulation_strengths(scores: Mapping[str, jnp.ndarray], active: Mapping[str, jnp.ndarray],
                         scales: Mapping[str, float]) -> dict:
  """β_m = scale_m·exp(tanh(N/(N−1)·(s_m − mean s))) where s_m > mean and the
  window is open, else 0 (module docstring)."""
  names = sorted(scores)
  n = len(names)
  if n < 2:
    return {m: jnp.zeros((), jnp.float32) for m in names}
  s = jnp.stack([jnp.asarray(scores[m], jnp.float32) for m in names])
  excess = n / (n - 1) * (s - s.mean())
  return {m: jnp.where((excess[i] > 0) & active[m],
                       scales[m] * jnp.exp(jnp.tanh(excess[i])), 0.0).astype(jnp.float32)
          for i, m in enumerate(names)}


def inforeg(steps_per_epoch: int, scales: Mapping[str, float], threshold: float = 0.05,
            window_modality: str = "") -> optax.GradientTransformationExtraArgs:
  """Adds β_m·(θ_m − θ0_m) to encoder m's gradient (module docstring).

  scales: scale_m per modality; threshold: the window's k cut-off;
  window_modality: "" for a k per modality, or the modality whose k gates all.
  """

  def init_fn(params):
    names = sorted(params["encoders"])
    if window_modality and window_modality not in names:
      raise ValueError(f"inforeg window_modality {window_modality!r} is not a modality "
                       f"of the model ({', '.join(names)})")
    missing = [m for m in names if m not in scales]
    if missing:
      raise ValueError(f"inforeg has no scale for modalities {missing}")
    zeros = {m: jnp.zeros((), jnp.float32) for m in names}
    return InfoRegState(
        epoch=jnp.zeros((), jnp.int32),
        anchor=jax.tree.map(jnp.array, params["encoders"]),
        trace_sum=dict(zeros),
        trace_history={m: jnp.zeros((HISTORY,), jnp.float32) for m in names},
        inforeg_window={m: jnp.ones((), jnp.float32) for m in names},
        inforeg_beta=dict(zeros))

  def update_fn(updates, state, params=None, *, step, ogm_scores, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("inforeg needs the params (the proximal term) in tx.update")
    names = sorted(updates["encoders"])
    epoch = (step // steps_per_epoch).astype(jnp.int32)
    new_epoch = epoch != state.epoch
    history = {m: jnp.where(new_epoch, jnp.concatenate([state.trace_history[m][1:],
                                                        state.trace_sum[m][None]]),
                            state.trace_history[m]) for m in names}
    trace_sum = {m: jnp.where(new_epoch, 0.0, state.trace_sum[m]) for m in names}
    anchor = jax.tree.map(lambda p, a: jnp.where(new_epoch, p, a),
                          params["encoders"], state.anchor)
    window = {m: window_coefficient(history[m], epoch) for m in names}
    flag = {m: window[window_modality or m] > threshold for m in names}
    beta = regulation_strengths(ogm_scores, flag, scales)

    encoders = {}
    for m in names:
      encoders[m] = jax.tree.map(
          lambda g, p, a, b=beta[m]: (g.astype(jnp.float32)
                                      + b * (p.astype(jnp.float32) - a.astype(jnp.float32))
                                      ).astype(g.dtype),
          updates["encoders"][m], params["encoders"][m], anchor[m])
      trace_sum[m] = trace_sum[m] + fisher_trace_increment(encoders[m])
    new_updates = dict(updates)
    new_updates["encoders"] = encoders
    return new_updates, InfoRegState(epoch=epoch, anchor=anchor, trace_sum=trace_sum,
                                     trace_history=history, inforeg_window=window,
                                     inforeg_beta=beta)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

