"""The loss and metric helpers every layer above shares, all computed in float32.

Pure functions of arrays, with nothing of the project beneath them: the
train step, the tasks, the optax transformations and the methods call them
rather than keeping their own copies.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

# The name of the fused head's loss among the per-loss gradients a combiner
# receives (`loss_grads`, `task_losses`, `task_weights`); the unimodal losses
# are named by their modality.
FUSED_TASK = "fused"


def cross_entropy(logits_BxC: jnp.ndarray, labels_B: jnp.ndarray) -> jnp.ndarray:
  """Mean softmax cross-entropy, computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_BxC.astype(jnp.float32), labels_B).mean()


def kl_divergence(logits_p: jnp.ndarray, logits_q: jnp.ndarray) -> jnp.ndarray:
  """Mean over the batch of KL(softmax(p) ‖ softmax(q)), computed in float32."""
  log_p = jax.nn.log_softmax(logits_p.astype(jnp.float32), -1)
  log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32), -1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1))


def accuracy(logits_BxC: jnp.ndarray, labels_B: jnp.ndarray) -> jnp.ndarray:
  return jnp.mean(jnp.argmax(logits_BxC, -1) == labels_B)


def batch_scores(unimodal_logits: Mapping[str, jnp.ndarray], labels_B: jnp.ndarray) -> dict:
  """score_m = Σ_i softmax(z_m)[i, y_i] in float32: the batch sum of the true
  class's probability under each unimodal head (OGM-GE's scores)."""
  def score(z):
    probs = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(probs, labels_B[:, None], axis=-1).sum()
  return {m: score(z) for m, z in unimodal_logits.items()}


def loss_terms(outputs: Mapping, labels_B: jnp.ndarray, names) -> jnp.ndarray:
  """The unweighted losses [CE(fused), CE(unimodal_m) for m in names], shape (1 + N,)."""
  return jnp.stack([cross_entropy(outputs["logits"], labels_B)]
                   + [cross_entropy(outputs["unimodal_logits"][m], labels_B) for m in names])
