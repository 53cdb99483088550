"""CGGM (Guo et al., NeurIPS 2024, classifier-guided gradient modulation):
auxiliary classifiers measure each modality's improvement; encoder gradients
are scaled by ρ·B_m and a direction term λ·L_gm joins the loss.

Reference: zrguo/CGGM, src/msatrain.py (`train_model.train`), models/msamodel.py
(`ClassifierGuided`), src/eval_metrics.py (`cal_cos`).

Parts: the transformation `asgml_jax.transforms.cggm` (stage `edit`, first:
it trains the classifiers from the step's stop-gradient features and keeps
B_m) followed by the reference's global-norm clip (`clip_norm`, 0.8), and the
loss term λ·L_gm, which reads B_m and the classifier kernels
the transformation kept from the previous step. Needs a concat or sum fusion
straight to classes (each classifier is compared with its modality's block
of the fusion weight).
"""

from __future__ import annotations

import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (Composition, Logging, Method, Optax, Protocols, Settings,
                                    Signal, Step)
from asgml_jax.transforms.cggm import cggm, direction_loss, fusion_blocks


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(  # the reference's MOSI defaults
      rho=1.3, lam=0.2, cls_lr=5e-4,
      clip_norm=0.8,         # the global gradient norm is clipped here after ×ρ·B_m
      balance_guard="none",  # none (reference) | near_zero: B = (N−1)/N where |ΣΔ| ≈ 0
  ))


def check_block(config) -> None:
  cc.positive(config, "method.cggm.rho")
  cc.positive(config, "method.cggm.cls_lr")
  cc.at_least(config, "method.cggm.lam", 0)
  cc.positive(config, "method.cggm.clip_norm")
  cc.one_of(config.method.cggm.balance_guard, ("none", "near_zero"), "method.cggm.balance_guard")


def check(config) -> None:
  cc.require(config.model.fusion in ("concat", "sum") and config.model.fusion_dim is None,
             "model.fusion", "cggm compares each classifier with the fusion-layer block of its "
             "modality: needs concat or sum fusion straight to classes (fusion_dim None)")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # CE(fused) + λ·L_gm; classifiers train apart


def transform(ctx):

  c = ctx.config.method.cggm
  return [cggm(c.rho, c.cls_lr, ctx.config.model.feature_dim, seed=ctx.config.seed + 3,
               guard=c.balance_guard),
          optax.clip_by_global_norm(c.clip_norm)]


def loss_term(ctx):
  lam = ctx.config.method.cggm.lam

  def term(step_ctx, params, outputs):
    opt_state = step_ctx.state.opt_state
    classifiers = optax.tree_utils.tree_get(opt_state, "classifiers")
    kernels = {m: classifiers[m]["kernel"] for m in step_ctx.names}
    feature_dim = next(iter(kernels.values())).shape[0]
    value = direction_loss(optax.tree_utils.tree_get(opt_state, "cggm_balance"), kernels,
                           fusion_blocks(params, step_ctx.names, feature_dim))
    return lam * value, {"metrics": {"cggm/direction_loss": value}}
  return term


CGGM = Method(
    name="cggm", summary="CGGM: classifier-guided gradient modulation and direction loss",
    settings=Settings(
        block="cggm", defaults=defaults, check_block=check_block, check=check, preset=preset),
    protocols=Protocols(
        reference=(("loss.unimodal_weight", 0.0), ("method.cggm.balance_guard", "none"))),
    optax=Optax(stage="edit", rank=10, transform=transform),
    step=Step(loss_term=loss_term),
    logging=Logging(signals=(Signal("cggm_balance", "cggm/balance", "CGGM balance B"),
                             Signal("aux_accuracy", "cggm/aux_acc"))),
    composition=Composition(excludes={
        "reconboost": "cggm compares each classifier with its modality's block of a concat or "
                      "sum fusion layer; reconboost's learners share one boosted head"}))
