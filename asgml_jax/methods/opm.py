"""OPM (Wei et al., TPAMI 2024, on-the-fly prediction modulation): per-sample
dropping of the dominant modality's features between encoders and fusion.

OPM edits the forward pass, not the gradients: it drops the features of the
dominant modality per sample before the fusion, so it is a `feature_gate` of
the model (see `MultimodalClassifier.__call__`) plus the fused loss (CE over
the samples that kept at least one modality), rather than an optax
transformation. Its variant trains on the fused CE only.

As the seeds' code implements it:
  s_m = Σ_i softmax(W_m φ_m + b/M)_i[y_i]       (split fusion weight; batch sums)
  ρ_m = mean_{j≠m} s_m / s_j
  q_m = clip(q_base·(1 + λ·tanh(relu(ρ_m − 1))), 0, 1) if ρ_m > 1 else 0
  with probability p_exe per step (after `warmup_epochs`): keep_{i,m} ~
  Bernoulli(1 − q_m) per sample and modality, φ_m ← φ_m·keep_m / (1 − mean_m q_m);
  samples whose every modality was dropped are excluded from the loss.
  Loss: the fused CE only (the variant sets the unimodal weight to 0).

The scores come from the ungated unimodal logits through `stop_gradient`.
Guard (not in the code): 1 − mean q is floored at 1e-6 (every q_m = 1).

Reference: the seeds' PyTorch implementation of the TPAMI paper; the
reference protocol is its variant's settings.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import batch_scores
from asgml_jax.methods.base import Logging, Method, Plot, Protocols, Settings, Step


@dataclasses.dataclass(frozen=True)
class OPMConfig:
  q_base: float = 0.5
  lam: float = 0.5
  p_exe: float = 0.7
  warmup_epochs: int = 5
  steps_per_epoch: int = 1


def pairwise_mean_ratios(scores: Mapping[str, jnp.ndarray]) -> dict:
  """ρ_m = mean_{j≠m} s_m / s_j (OPM's; OGM-GE divides by the mean instead)."""
  names = sorted(scores)
  return {m: jnp.mean(jnp.stack([scores[m] / scores[j] for j in names if j != m]))
          for m in names}


def drop_probabilities(scores: Mapping[str, jnp.ndarray], q_base: float, lam: float) -> dict:
  """q_m of every modality (0 for all but the dominant ones)."""
  ratios = pairwise_mean_ratios(scores)
  return {m: jnp.where(r > 1.0, jnp.clip(q_base * (1.0 + lam * jnp.tanh(jax.nn.relu(r - 1.0))),
                                         0.0, 1.0), 0.0)
          for m, r in ratios.items()}


def apply_drop(feats: Mapping[str, jnp.ndarray], keep: Mapping[str, jnp.ndarray],
               q: Mapping[str, jnp.ndarray], execute) -> tuple[dict, jnp.ndarray]:
  """(gated features, valid_B): keep masks applied and rescaled where `execute`."""
  names = sorted(feats)
  mean_q = jnp.mean(jnp.stack([q[m] for m in names]))
  scale = jnp.where(execute, 1.0 / jnp.maximum(1.0 - mean_q, 1e-6), 1.0)
  keep = {m: jnp.where(execute, keep[m], True) for m in names}
  gated = {m: feats[m] * (keep[m][:, None] * scale).astype(feats[m].dtype) for m in names}
  valid = jnp.any(jnp.stack([keep[m] for m in names]), axis=0)
  return gated, valid


def make_feature_gate(cfg: OPMConfig, labels_B: jnp.ndarray, key: jnp.ndarray, step):
  """The model's `feature_gate` for this step (info: valid_B, q {m}, executed)."""

  def gate(feats, unimodal_logits):
    scores = batch_scores(jax.lax.stop_gradient(unimodal_logits), labels_B)
    q = drop_probabilities(scores, cfg.q_base, cfg.lam)
    exec_key, mask_key = jax.random.split(key)
    execute = ((step // cfg.steps_per_epoch) >= cfg.warmup_epochs) & jax.random.bernoulli(
        exec_key, cfg.p_exe)
    batch = labels_B.shape[0]
    keep = {m: jax.random.bernoulli(jax.random.fold_in(mask_key, i), 1.0 - q[m], (batch,))
            for i, m in enumerate(sorted(feats))}
    gated, valid = apply_drop(feats, keep, q, execute)
    return gated, {"valid": valid, "q": q, "executed": execute}

  return gate


def masked_cross_entropy(logits_BxC: jnp.ndarray, labels_B: jnp.ndarray,
                         valid_B: jnp.ndarray) -> jnp.ndarray:
  """Mean CE over the valid samples (0 if none)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), labels_B)
  weights = valid_B.astype(jnp.float32)
  return jnp.sum(ce * weights) / jnp.maximum(weights.sum(), 1.0)


# ------------------------------------------------------------------ the method


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(q_base=0.5, lam=0.5, p_exe=0.7, warmup_epochs=5))


def check_block(config) -> None:
  cc.in_range(config, "method.opm.q_base", 0, 1)
  cc.at_least(config, "method.opm.lam", 0)
  cc.in_range(config, "method.opm.p_exe", 0, 1)
  cc.non_negative_int(config, "method.opm.warmup_epochs")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # OPM trains on the fused CE only


def _config(ctx):
  o = ctx.config.method.opm
  return OPMConfig(q_base=o.q_base, lam=o.lam, p_exe=o.p_exe, warmup_epochs=o.warmup_epochs,
                   steps_per_epoch=ctx.steps_per_epoch)


def feature_gate(ctx):
  cfg = _config(ctx)

  def gate(step_ctx):
    return make_feature_gate(cfg, step_ctx.labels,
                             jax.random.fold_in(step_ctx.dropout_key, 0x0B3), step_ctx.state.step)
  return gate


def fused_loss(ctx):

  def loss(step_ctx, variables, outputs):
    gate = outputs["gate"]
    metrics = {f"opm/drop_prob_{m}": q for m, q in gate["q"].items()}
    metrics["opm/executed"] = gate["executed"].astype(jnp.float32)
    metrics["opm/valid_fraction"] = jnp.mean(gate["valid"].astype(jnp.float32))
    return (masked_cross_entropy(outputs["logits"], step_ctx.labels, gate["valid"]),
            {"metrics": metrics})
  return loss


OPM = Method(
    name="opm", summary="OPM: per-sample dropping of the dominant modality's features",
    settings=Settings(block="opm", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 0.0),)),
    step=Step(feature_gate=feature_gate, fused_loss=fused_loss),
    logging=Logging(plots=(Plot("opm/drop_prob", "OPM drop probability"),)))
