"""PyTorch's optimizers before the learning rate, as optax transformations.

`torch_direction(kind, weight_decay, momentum)` is what torch.optim.SGD, Adam
and AdamW make of a gradient, up to the final −lr (which the caller applies,
so that the schedule can come from a global step):
- sgd: g + wd·θ, then heavy-ball momentum buf = μ·buf + g (first step buf = g);
- adam: g + wd·θ, then m̂ / (√v̂ + eps) (bias-corrected first/second moments);
- adamw: m̂ / (√v̂ + eps) + wd·θ (decoupled decay: θ ← θ − lr·wd·θ − lr·m̂/…).
Adam's betas and eps are PyTorch's defaults (0.9, 0.999, 1e-8), the values
every reference script here uses.
"""

from __future__ import annotations

import optax

KINDS = ("sgd", "adam", "adamw")
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def torch_direction(kind: str, weight_decay: float, momentum: float) -> list:
  """The transformations, in order, to chain before −lr. A list, so that the
  caller's chain stays flat (a run's optimizer-state tree, which checkpoints
  store, is then the same for SGD as before Adam existed)."""
  if kind == "sgd":
    return [optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum, nesterov=False)]
  adam = optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)
  if kind == "adam":
    return [optax.add_decayed_weights(weight_decay), adam]
  if kind == "adamw":
    return [adam, optax.add_decayed_weights(weight_decay)]
  raise ValueError(f"optimizer kind {kind!r} is not one of {KINDS}")
