"""CML, Calibrating Multimodal Learning (Ma et al., ICML 2023): the model's
confidence must not rise when a modality is taken away.

Each epoch draws a random order of the modalities. Starting from the fused
logits out_0 = Σ_m c_m + b (c_m = f_m·W_m, the concat fusion's per-modality
contribution), step i removes the next modality r_i of that order,
out_{i+1} = out_i − c_{r_i}, for i = 0 … N−2 (one modality always stays).
The loss is

    (CE(out_0) + Σ_i CE(out_{i+1})) / N + λ · Σ_i max(0, Σ_b conf(out_{i+1}) − conf(out_i))

with conf the largest softmax probability and Σ_b a sum (not a mean) over the
batch: a penalty whenever the batch is, in total, more confident with less
information. No unimodal CE terms (γ = 0).

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/CML_trainer.py
(`training_step`, `conf_loss`; the order is shuffled once per epoch in
`train_loop`, and out_p = out_s − unimodal[r] + b/N, which with the split heads
b/N is out_s − c_r). Its 2- and 3-modality branches divide by 2 and 3: N here.
The paper's `sign` (trick 1) is computed there but not used in the loss; not
reproduced either. The order is drawn from the run's key and the epoch, so
every seed of a sweep has its own and a resumed run draws the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import Logging, Method, Plot, Protocols, Requirement, Settings, Step
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK

_ORDER_SALT = 0xC411


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lam=0.1,               # λ, weight of the confidence penalty
  ))


def check_block(config) -> None:
  cc.at_least(config, "method.cml.lam", 0)


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "cml removes a modality's contribution from the fused logits, which needs the "
             "fusion layer to map straight to the classes: use None")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0


def removal_order(rng, step, steps_per_epoch: int, num_modalities: int):
  """This epoch's order of removal (indices into the sorted modalities)."""
  key = jax.random.fold_in(jax.random.fold_in(rng, _ORDER_SALT), step // steps_per_epoch)
  return jax.random.permutation(key, num_modalities)


def _confidence(logits):
  return jnp.max(jax.nn.softmax(logits, -1), -1)


def cml_loss(fused, contributions, labels, order, lam: float):
  """(loss, {modality index: penalty of removing it}) for fused logits (B, C),
  contributions (N, B, C) and the removal order (N,)."""
  num = contributions.shape[0]
  ce = cross_entropy(fused, labels)
  penalty = jnp.float32(0.0)
  per_modality = jnp.zeros((num,), jnp.float32)
  current = fused
  for i in range(num - 1):
    partial = current - contributions[order[i]]
    ce = ce + cross_entropy(partial, labels)
    gain = jnp.sum(_confidence(partial) - _confidence(current))
    # Python's max(0, gain) of the reference: gain's gradient where gain > 0,
    # none at a tie (jnp.maximum would pass half of it there).
    gap = jnp.where(gain > 0, gain, 0.0)
    penalty = penalty + gap
    per_modality = per_modality.at[order[i]].add(gap)
    current = partial
  return ce / num + lam * penalty, per_modality


def fused_loss(ctx):
  lam, per_epoch, names = ctx.config.method.cml.lam, ctx.steps_per_epoch, ctx.names

  def loss(step_ctx, variables, outputs):
    bias = variables["params"]["fusion"]["bias"].astype(jnp.float32)
    contributions = jnp.stack([outputs["unimodal_logits"][m] - bias / len(names)
                               for m in names])
    order = removal_order(step_ctx.state.rng, step_ctx.state.step, per_epoch, len(names))
    value, penalty = cml_loss(outputs["logits"], contributions, step_ctx.labels, order, lam)
    return value, {"metrics": {f"cml/penalty_{m}": penalty[i] for i, m in enumerate(names)}}
  return loss


CML = Method(
    name="cml", summary="CML: confidence may not rise when a modality is removed",
    settings=Settings(
        block="cml", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.fusion", "concat",
                              "cml removes each modality's share of the concat fusion's logits"),
                  Requirement("model.unimodal_heads", "split",
                              "cml reads each modality's share off the fusion layer")),
        preset=preset),
    protocols=Protocols(
        optimizers=BALANCEBENCHMARK,
        reference=(("loss.unimodal_weight", 0.0),)),
    step=Step(fused_loss=fused_loss),
    logging=Logging(plots=(Plot("cml/penalty", "CML penalty, modality removed"),)))
