"""OPM (Wei et al., TPAMI 2024, on-the-fly prediction modulation): per-sample
dropping of the dominant modality's features between encoders and fusion.

A forward hook, not a gradient edit: `asgml_jax.opm.make_feature_gate` is the
model's feature gate, and OPM owns the fused loss (CE over the samples that
kept at least one modality). Its variant trains on the fused CE only.

Reference: the seeds' PyTorch implementation of the TPAMI paper
(BASELINES.md §OPM); the reference protocol is its variant's settings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Plot, Protocols, Settings, Step


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
  from asgml_jax.opm import OPMConfig
  o = ctx.config.method.opm
  return OPMConfig(q_base=o.q_base, lam=o.lam, p_exe=o.p_exe, warmup_epochs=o.warmup_epochs,
                   steps_per_epoch=ctx.steps_per_epoch)


def feature_gate(ctx):
  from asgml_jax.opm import make_feature_gate
  cfg = _config(ctx)

  def gate(step_ctx):
    return make_feature_gate(cfg, step_ctx.labels,
                             jax.random.fold_in(step_ctx.dropout_key, 0x0B3), step_ctx.state.step)
  return gate


def fused_loss(ctx):
  from asgml_jax.opm import masked_cross_entropy

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
