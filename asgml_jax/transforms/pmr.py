"""PMR (Fan et al., CVPR 2023): prototype-based rebalancing, a loss term for
the weaker modality.

Reference (fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py;
docs/methods.md, the baselines):

- prototypes p_{m,c}: class means of encoder m's features (inference mode)
  over the first len(loader)//10 training batches, computed before training
  and after every epoch, p = (1 − μ)·p_new + μ·p_old;
- per step: sim_m = −‖h_m − p_{m,c}‖₂ (a (B, C) logit of distances);
  ρ = Σ_i softmax(sim_a)_i[y_i] / Σ_i softmax(sim_v)_i[y_i]; ρ > 1 adds
  α·CE(sim_v, y), ρ < 1 adds α·CE(sim_a, y): only the weaker modality is pushed;
- active for the epochs [modulation_starts, modulation_ends].

The prototypes live in this transformation's state (so in the train state,
checkpointed with it); `epoch_hooks` refreshes them between epochs with
`class_means` and `ema`, and `steps.train_step(pmr_cfg=...)` reads them for
`prototype_loss`. The transformation itself leaves gradients alone.

Where the reference is silent ([inferred]):
- N modalities: α·CE(sim_m) for every m whose score is below the largest
  (score_m / max score < 1); for N = 2 the reference rule.
- A class absent from the sampled batches keeps its previous prototype
  (zeros before the first refresh) instead of a 0/0 mean.
- The batches are the first max(1, steps_per_epoch // 10) of the next
  epoch's order, so a resumed run sees the same ones.
- ‖·‖₂ is computed as √max(d², 1e-12): the gradient of a distance that is
  exactly 0 (a dead ReLU feature at a zero prototype) stays finite.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asgml_jax.transforms.ogm_ge import in_epoch_window


class PMRConfig(NamedTuple):
  alpha: float
  modulation_starts: int   # epochs, inclusive
  modulation_ends: int     # epochs, inclusive
  steps_per_epoch: int


class PMRState(NamedTuple):
  pmr_prototypes: dict     # {m: (C, D) float32}


def class_sums(features_BxD: jnp.ndarray, labels_B: jnp.ndarray, num_classes: int):
  """(Σ features per class (C, D), count per class (C,)) of one batch."""
  onehot = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32)
  return onehot.T @ features_BxD.astype(jnp.float32), onehot.sum(0)


def class_means(sums_CxD, counts_C, previous_CxD):
  """Per-class means; classes with no sample keep `previous`."""
  seen = counts_C > 0
  return jnp.where(seen[:, None], sums_CxD / jnp.where(seen, counts_C, 1.0)[:, None],
                   previous_CxD)


def ema(new, old, momentum: float):
  """(1 − μ)·new + μ·old."""
  return (1.0 - momentum) * new + momentum * old


def prototype_logits(features_BxD: jnp.ndarray, prototypes_CxD: jnp.ndarray) -> jnp.ndarray:
  """sim[i, c] = −‖h_i − p_c‖₂, in float32."""
  diff = features_BxD.astype(jnp.float32)[:, None, :] - jax.lax.stop_gradient(
      prototypes_CxD)[None, :, :]
  return -jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), -1), 1e-12))


def prototype_loss(features: Mapping[str, jnp.ndarray], prototypes: Mapping[str, jnp.ndarray],
                   labels_B: jnp.ndarray, alpha: float, active) -> tuple[jnp.ndarray, dict]:
  """α·Σ_{m weaker} CE(sim_m, y) and the batch-sum prototype scores s_m."""
  names = sorted(features)
  sims = {m: prototype_logits(features[m], prototypes[m]) for m in names}

  def score(z):
    p = jax.nn.softmax(jax.lax.stop_gradient(z), axis=-1)
    return jnp.take_along_axis(p, labels_B[:, None], axis=-1).sum()

  scores = {m: score(sims[m]) for m in names}
  best = jnp.max(jnp.stack([scores[m] for m in names]))
  loss = jnp.zeros((), jnp.float32)
  for m in names:
    weaker = (scores[m] < best) & active
    ce = optax.softmax_cross_entropy_with_integer_labels(sims[m], labels_B).mean()
    loss = loss + jnp.where(weaker, alpha * ce, 0.0)
  return loss, scores


def modulation_active(cfg: PMRConfig, step) -> jnp.ndarray:
  return in_epoch_window(step, cfg.steps_per_epoch, cfg.modulation_starts, cfg.modulation_ends)


def pmr(num_classes: int, feature_dims: Mapping[str, int]) -> optax.GradientTransformationExtraArgs:
  """Holds the prototypes {m: (C, D_m)}; gradients pass unchanged."""

  def init_fn(params):
    del params
    return PMRState({m: jnp.zeros((num_classes, d), jnp.float32)
                     for m, d in sorted(feature_dims.items())})

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
