"""MBSD, modality-balanced self-distillation (BalanceBenchmark's trainer): on
the examples where at least one of two modalities is right, the weaker one is
pulled towards the stronger.

For each pair (j, k) of modalities and example i, with p_m the softmax of
modality m's unimodal logits and y the label:

    w_i  = |p_j[y] − p_k[y]|  if argmax p_j = y or argmax p_k = y, else 0
    RS_i = (1/C) Σ_c (z_j − z_k)²_c            (z: logits, see below)
    KL_i = pw_i · (log pw_i − ps_i),  ps_i = max(p_j[y], p_k[y]), pw_i = min(…)

    loss = CE(fused) + Σ_m CE(unimodal_m) + mean_pairs[(1/B) Σ_i w_i·(RS_i + KL_i)]

KL_i is `F.kl_div(ps, pw)` as the reference calls it: ps (a probability, not a
log-probability) in the input slot, so it is not a KL divergence of
distributions but the reference's penalty, reproduced as written. Gradients
flow through w, ps and pw (the reference fills them by index assignment,
which autograd records).

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/MBSD_trainer.py
(`training_step`). Its 2-modality branch measures RS on the logits and its
3-modality branch on the probabilities (averaging the three pairs);
`rs_on="auto"` does exactly that, `logits`/`probabilities` choose one for
any N. N > 3: the mean over all pairs, as the 3-modality branch does.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Method, Protocols, Settings, Step
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK

RS_ON = ("auto", "logits", "probabilities")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      rs_on="auto",          # auto: logits for 2 modalities, probabilities for more (reference)
  ))


def check_block(config) -> None:
  cc.one_of(config.method.mbsd.rs_on, RS_ON, "method.mbsd.rs_on")


def preset(config) -> None:
  config.loss.unimodal_weight = 1.0         # CE(fused) + Σ_m CE(unimodal_m) + the terms


def check(config) -> None:
  cc.require(len(cc.modality_names(config)) >= 2, "modalities",
             "mbsd distils between modalities: it needs at least two")


def pair_terms(z_j, z_k, labels, on_logits: bool):
  """(Σ_i w_i·RS_i / B, Σ_i w_i·KL_i / B) of one pair of unimodal logits (B, C)."""
  p_j, p_k = jax.nn.softmax(z_j, -1), jax.nn.softmax(z_k, -1)
  true = jax.nn.one_hot(labels, z_j.shape[-1])
  t_j, t_k = jnp.sum(p_j * true, -1), jnp.sum(p_k * true, -1)
  either_right = (jnp.argmax(p_j, -1) == labels) | (jnp.argmax(p_k, -1) == labels)
  weight = jnp.where(either_right, jnp.abs(t_j - t_k), 0.0)
  a, b = (z_j, z_k) if on_logits else (p_j, p_k)
  rs = jnp.mean(jnp.square(a - b), -1)
  strong, weak = jnp.maximum(t_j, t_k), jnp.minimum(t_j, t_k)
  kl = jnp.where(weak > 0, weak * (jnp.log(jnp.where(weak > 0, weak, 1.0)) - strong), 0.0)
  batch = z_j.shape[0]
  return jnp.sum(weight * rs) / batch, jnp.sum(weight * kl) / batch


def mbsd_terms(unimodal_logits, labels, names, rs_on: str):
  """(RS, KL): each the mean over modality pairs of `pair_terms`."""
  on_logits = rs_on == "logits" or (rs_on == "auto" and len(names) == 2)
  pairs = list(itertools.combinations(names, 2))
  terms = [pair_terms(unimodal_logits[j].astype(jnp.float32),
                      unimodal_logits[k].astype(jnp.float32), labels, on_logits)
           for j, k in pairs]
  return (sum(t[0] for t in terms) / len(pairs), sum(t[1] for t in terms) / len(pairs))


def loss_term(ctx):
  rs_on = ctx.config.method.mbsd.rs_on

  def term(step_ctx, params, outputs):
    rs, kl = mbsd_terms(outputs["unimodal_logits"], step_ctx.labels, ctx.names, rs_on)
    return rs + kl, {"metrics": {"mbsd/rs": rs, "mbsd/kl": kl}}
  return term


MBSD = Method(
    name="mbsd", summary="MBSD: the weaker modality distils from the stronger where one is right",
    settings=Settings(
        block="mbsd", defaults=defaults, check_block=check_block, check=check, preset=preset),
    protocols=Protocols(
        optimizers=BALANCEBENCHMARK,
        reference=(("loss.unimodal_weight", 1.0), ("model.unimodal_heads", "split"),
                   ("method.mbsd.rs_on", "auto"))),
    step=Step(loss_term=loss_term))
