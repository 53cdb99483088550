"""ReconBoost (Hua et al., ICML 2024): the modalities are boosted in turn —
one modality's learner is fitted to what the others' ensemble gets wrong —
and each turn is followed by a fine-tuning of the whole ensemble.

The model is a shared head over every modality's features with a learned
boost rate ρ (`model.fusion=shared_boost`, ρ₀ = 0.01): o_m = head(f_m), the
prediction ρ·Σ_m o_m. Training cycles through stages, each `t_epochs` passes
over the data, in the order

    stage 1 for modality 1, stage 2, stage 1 for modality 2, stage 2, ...

- stage 1 (modality m): with y one-hot and q = softmax(ρ·Σ_{n≠m} o_n) held
  fixed, loss = mean_b[ −w₁·mean_c(y·log softmax(o_m)) + w₂·mean_c(y·q·log softmax(o_m)) ]
  (+ α·MSE(softmax(o_m), softmax(o_prev)), the reconcilement term, which the
  reference detaches on both sides: it is logged and adds no gradient). Only
  encoder m and the head train; the other encoders and ρ are skipped (no
  momentum, no weight decay), as PyTorch >= 2.0 skips parameters without a
  gradient. BalanceBenchmark installs torch 1.12.1 (its README), whose
  `optimizer.zero_grad()` leaves zero gradients and nothing deletes them, so
  there every parameter stepped once is stepped in every later update
  (weight decay and momentum on a zero gradient);
  `method.protocol=reference` sets that (`optimizer.zero_grad=zeros`,
  asgml_jax/transforms/zero_grad.py).
- stage 2: CE(ρ·Σ_m o_m), everything trains.

One of the reference's epochs is 2·t_epochs·N passes over the data (a stage 1
and a stage 2 per modality); here each pass is one of the run's epochs, so
`num_epochs` counts passes and methods compare at equal data. Its first
epoch has no reconcilement term; here the first stage 1 of the run.

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/ReconBoost_trainer.py
(`fit`, `train_loop`, `training_step1`, `training_step2`) and
balancemm/models/avclassify_model.py (`BaseClassifierReconBoostModel`);
w₁ = 5, w₂ = 1, α = 0.5, T = 1. N modalities: the turns go round all of them
(`pre_modality` is the previous one in the cycle), as the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import Method, Protocols, Requirement, Settings, Step
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=0.5,             # weight of the (gradient-free) reconcilement term
      t_epochs=1,            # passes per stage
      weight1=5.0,           # w₁
      weight2=1.0,           # w₂
  ))


def check_block(config) -> None:
  cc.at_least(config, "method.reconboost.alpha", 0)
  cc.positive(config, "method.reconboost.t_epochs", integer=True)
  cc.at_least(config, "method.reconboost.weight1", 0)
  cc.at_least(config, "method.reconboost.weight2", 0)


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "reconboost's shared head maps features straight to the classes: use None")
  cc.require(len(cc.modality_names(config)) >= 2, "modalities",
             "reconboost boosts one modality against the others: it needs at least two")


def preset(config) -> None:
  config.model.fusion = "shared_boost"
  config.loss.unimodal_weight = 0.0


def stage_of(epoch, t_epochs: int, num_modalities: int):
  """(stage 1 or 2, the modality index of the cycle position) of a 0-based epoch."""
  pos = epoch % (2 * t_epochs * num_modalities)
  return jnp.where(pos % (2 * t_epochs) < t_epochs, 1, 2), pos // (2 * t_epochs)


def stage_one_loss(unimodal, rate, labels, m_index, names, w1, w2):
  """Boosting loss of modality `m_index`'s learner against the others' ensemble."""
  logits = jnp.stack([unimodal[n].astype(jnp.float32) for n in names])        # (N, B, C)
  own = logits[m_index]
  others = rate * (jnp.sum(logits, 0) - own)
  q = jax.lax.stop_gradient(jax.nn.softmax(others, -1))
  y = jax.nn.one_hot(labels, own.shape[-1])
  log_p = jax.nn.log_softmax(own, -1)
  per_example = -w1 * jnp.mean(y * log_p, -1) + w2 * jnp.mean(y * q * log_p, -1)
  return jnp.mean(per_example)


def reconcilement(unimodal, m_index, names):
  """MSE(softmax(o_m), softmax(o_prev)), both detached (logged only)."""
  logits = jnp.stack([unimodal[n].astype(jnp.float32) for n in names])
  p = jax.nn.softmax(logits, -1)
  prev = (m_index - 1) % len(names)
  return jax.lax.stop_gradient(jnp.mean(jnp.square(p[m_index] - p[prev])))


def fused_loss(ctx):
  r = ctx.config.method.reconboost
  names, per_epoch = ctx.names, ctx.steps_per_epoch

  def loss(step_ctx, variables, outputs):
    epoch = step_ctx.state.step // per_epoch
    stage, m_index = stage_of(epoch, r.t_epochs, len(names))
    rate = variables["params"]["fusion"]["boost_rate"]
    unimodal = outputs["unimodal_logits"]
    ga = jnp.where(epoch >= 1, reconcilement(unimodal, m_index, names), 0.0)
    first = stage_one_loss(unimodal, rate, step_ctx.labels, m_index, names, r.weight1,
                           r.weight2) + r.alpha * ga
    second = cross_entropy(outputs["logits"], step_ctx.labels)
    in_two = stage == 2
    mask = {n: in_two | (m_index == i) for i, n in enumerate(names)}
    shared = {k: v for k, v in variables["params"].items() if k != "encoders"}
    keep = jax.tree_util.tree_map_with_path(   # ρ only in stage 2; the head (and the rest) always
        lambda path, _: in_two if path[-1].key == "boost_rate" else jnp.bool_(True), shared)
    metrics = {"reconboost/stage": stage.astype(jnp.float32),
               "reconboost/boost_rate": rate, "reconboost/reconcilement": ga}
    metrics.update({f"reconboost/turn_{n}": (~in_two & (m_index == i)).astype(jnp.float32)
                    for i, n in enumerate(names)})
    return (jnp.where(in_two, second, first),
            {"metrics": metrics, "tx_args": {"encoder_mask": mask, "shared_keep": keep}})
  return loss


RECONBOOST = Method(
    name="reconboost",
    summary="ReconBoost: modalities boosted in turn against the others, then the ensemble fine-tuned",
    settings=Settings(
        block="reconboost", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.fusion", "shared_boost",
                              "reconboost's learners share one head and a learned boost rate"),
                  Requirement("model.unimodal_heads", "split",
                              "reconboost's learners are the shared head on each modality")),
        preset=preset),
    protocols=Protocols(
        optimizers=BALANCEBENCHMARK,
        reference=(("loss.unimodal_weight", 0.0), ("optimizer.zero_grad", "zeros"))),
    step=Step(fused_loss=fused_loss))
