"""Per-modality signals the train step computes for every run and hands to the
transformations (`tx.update` extra args)."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def batch_scores(unimodal_logits: Mapping[str, jnp.ndarray], labels_B: jnp.ndarray) -> dict:
  """score_m = Σ_i softmax(z_m)[i, y_i] in float32: the batch sum of the true
  class's probability under each unimodal head (OGM-GE's scores)."""
  def score(z):
    probs = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(probs, labels_B[:, None], axis=-1).sum()
  return {m: score(z) for m, z in unimodal_logits.items()}
