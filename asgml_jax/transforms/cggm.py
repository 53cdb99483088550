"""CGGM (Guo et al., NeurIPS 2024) as an optax transformation plus a loss term.

Reference (zrguo/CGGM, src/msatrain.py; docs/methods.md, the baselines):

- an auxiliary classifier per modality on the *detached* encoder features,
  with its own Adam (cls_lr); its CE updates the classifier only;
- Δ_m = acc_m(t) − acc_m(t−1), the classifier's batch train accuracy
  (acc_m(0) = 0, carried across steps); S = Σ_j Δ_j + 1e-8;
  B_m = (S − Δ_m) / S  (Σ_m B_m = N − 1);
- every encoder-m gradient ×= ρ·B_m before the optimizer step;
- L_gm = (Σ_m |B_m| − Σ_m B_m·cos(vec W_cls_m, vec W_fusion_m)) / N on the
  output-layer *weights*, added (×λ) to the next step's loss, reaching the
  fusion output layer only.

Here the classifiers, their Adam state, acc_m(t−1) and B_m live in this
transformation's state; `update` takes the step's stop-gradient `features`
and `labels` as extra args. The loss term is `direction_loss`, which
`steps.train_step` adds with the B_m and classifier kernels of the state
(so from the previous step, as in the reference) and the current fusion
weights: unlike the seeds' code, whose copy of it was detached, its gradient
reaches the fusion layer.

The reference then clips the global gradient norm of the model at `clip`
(0.8 for MOSI) before its optimizer step: chain this transformation with
`optax.clip_by_global_norm(clip)`, as the method module does.

Where the reference differs and this keeps its behaviour on purpose, or is
silent:
- B_m follows the reference formula for every sign of S = Σ Δ + 1e-8: a
  modality that got worse makes S negative and the coefficients may turn
  negative or exceed N − 1; when the gains cancel exactly (S = 1e-8, common,
  since batch accuracies are multiples of 1/B) B_m is of order Δ·1e8, and the
  clip then rescales the whole gradient to norm `clip`. That is what the
  reference runs. `guard="near_zero"` instead sets B_m = (N − 1)/N (the
  value equal Δs give) where |S| ≤ 1e-6; it is an option, not the default.
- W_fusion_m is the block of the fusion layer that multiplies modality m
  (concat: rows of the split weight; sum: fc_m), the counterpart of the
  classifier's Linear(D, C); the reference model has equal shapes there.
- The classifiers use Adam at cls_lr, as the reference (whose main optimizer
  is also Adam, lr 1e-3, with ReduceLROnPlateau on the validation loss); the
  main optimizer here is the run's (SGD with momentum and StepLR by default).
- torch's clip divides by (norm + 1e-6), optax's by the norm: a relative
  difference of 1e-6 in the clipped gradient.
- Classifier init: N(0, 1/D) kernels, zero biases.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax


class CGGMState(NamedTuple):
  classifiers: dict        # {m: {"kernel": (D, C), "bias": (C,)}}
  classifier_opt: Any      # Adam state of the classifiers
  previous_accuracy: dict  # acc_m(t−1)
  cggm_balance: dict       # B_m of the last step (used by the next step's L_gm)
  aux_accuracy: dict       # acc_m of the last step, for logging


GUARDS = ("none", "near_zero")


def balance_coefficients(delta: Mapping[str, jnp.ndarray], guard: str = "none",
                         eps: float = 1e-6) -> dict:
  """B_m = (S − Δ_m)/S with S = Σ Δ + 1e-8 (the reference's formula, any sign of S);
  guard="near_zero": B_m = (N − 1)/N where |S| ≤ eps."""
  if guard not in GUARDS:
    raise ValueError(f"guard={guard!r}; choose one of {GUARDS}")
  names = sorted(delta)
  n = len(names)
  d = jnp.stack([jnp.asarray(delta[m], jnp.float32) for m in names])
  s = d.sum() + 1e-8
  # S − Δ_m summed over j ≠ m: the same value, without float32 cancellation
  # when S ≈ Δ_m (every other gain zero gives 1e-8/S, as in float64).
  others = jnp.sum(jnp.where(jnp.eye(n, dtype=bool), 0.0, d[None, :]), axis=1) + 1e-8
  b = others / s
  if guard == "near_zero":
    b = jnp.where(jnp.abs(s) > eps, others / jnp.where(jnp.abs(s) > eps, s, 1.0), (n - 1.0) / n)
  return {m: b[i] for i, m in enumerate(names)}


def _cosine(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  a, b = a.ravel().astype(jnp.float32), b.ravel().astype(jnp.float32)
  return jnp.vdot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-12)


def fusion_blocks(params, names, feature_dim: int) -> dict:
  """{m: the fusion-layer weight block that multiplies modality m's features}."""
  fusion = params["fusion"]
  if "kernel" in fusion:  # concat: rows [i·D, (i+1)·D) of the (N·D, C) kernel
    return {m: fusion["kernel"][i * feature_dim:(i + 1) * feature_dim]
            for i, m in enumerate(names)}
  return {m: fusion[f"fc_{m}"]["kernel"] for m in names}


def direction_loss(balance: Mapping[str, jnp.ndarray], classifier_kernels: Mapping[str, Any],
                   blocks: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """L_gm = (Σ|B_m| − Σ B_m·cos(W_cls_m, W_fusion_m)) / N; classifiers held fixed."""
  names = sorted(balance)
  total = sum(jnp.abs(balance[m]) - balance[m] * _cosine(
      jax.lax.stop_gradient(classifier_kernels[m]), blocks[m]) for m in names)
  return total / len(names)


def _classifier_loss(classifiers, features, labels):
  losses, accuracies = {}, {}
  for m, p in classifiers.items():
    logits = features[m].astype(jnp.float32) @ p["kernel"] + p["bias"]
    losses[m] = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracies[m] = jnp.mean(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return sum(losses.values()), accuracies


def cggm(rho: float, cls_lr: float, feature_dim: int, seed: int = 0,
         guard: str = "none") -> optax.GradientTransformationExtraArgs:
  """Encoder-gradient modulation ×ρ·B_m and the auxiliary classifiers' update.
  The number of classes is read off the fusion layer (it maps to classes)."""
  if guard not in GUARDS:
    raise ValueError(f"guard={guard!r}; choose one of {GUARDS}")
  adam = optax.adam(cls_lr)

  def init_fn(params):
    names = sorted(params["encoders"])
    num_classes = next(iter(fusion_blocks(params, names, feature_dim).values())).shape[-1]
    key = jax.random.PRNGKey(seed)
    classifiers = {m: {"kernel": jax.random.normal(jax.random.fold_in(key, i),
                                                   (feature_dim, num_classes), jnp.float32)
                       / jnp.sqrt(feature_dim),
                       "bias": jnp.zeros((num_classes,), jnp.float32)}
                   for i, m in enumerate(names)}
    zeros = {m: jnp.zeros((), jnp.float32) for m in names}
    return CGGMState(classifiers=classifiers, classifier_opt=adam.init(classifiers),
                     previous_accuracy=zeros, cggm_balance=dict(zeros), aux_accuracy=dict(zeros))

  def update_fn(updates, state, params=None, *, features, labels, **extra_args):
    del params, extra_args
    features = jax.lax.stop_gradient(features)
    grads, accuracy = jax.grad(_classifier_loss, has_aux=True)(state.classifiers, features,
                                                                labels)
    classifier_updates, classifier_opt = adam.update(grads, state.classifier_opt,
                                                     state.classifiers)
    classifiers = optax.apply_updates(state.classifiers, classifier_updates)
    delta = {m: accuracy[m] - state.previous_accuracy[m] for m in accuracy}
    balance = balance_coefficients(delta, guard)
    encoders = {m: jax.tree.map(lambda g, s=rho * balance[m]: g * s.astype(g.dtype), enc)
                for m, enc in updates["encoders"].items()}
    return {**updates, "encoders": encoders}, CGGMState(
        classifiers=classifiers, classifier_opt=classifier_opt, previous_accuracy=accuracy,
        cggm_balance=balance, aux_accuracy=accuracy)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
