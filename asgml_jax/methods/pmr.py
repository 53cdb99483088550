"""PMR (Fan et al., CVPR 2023): prototype-based rebalancing, a prototype CE
for the weaker modality.

Parts: the transformation `asgml_jax.transforms.pmr` (stage `edit`; it only
holds the class prototypes in the optimizer state, so they are checkpointed
with the run), the loss term α·CE(prototype logits of the weaker modality),
and an epoch hook that recomputes the prototypes from the first
max(1, steps_per_epoch // 10) batches of the next epoch's order (before
training and after every epoch, with the EMA of `method.pmr.momentum`).
Its variant trains on CE(fused) plus that term (γ = 0).

Reference: fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py; the
reference protocol is its variant's settings.
"""

from __future__ import annotations

import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Epoch, Logging, Method, Optax, Plot, Protocols, Settings, Step
from asgml_jax.transforms import pmr as pmr_lib


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=1.0,             # weight of the weaker modality's prototype CE
      momentum=0.2,          # prototype EMA: p = (1 − momentum)·new + momentum·old
      modulation_starts=0,   # epochs, inclusive
      modulation_ends=70,    # epochs, inclusive
  ))


def check_block(config) -> None:
  p = config.method.pmr
  cc.at_least(config, "method.pmr.alpha", 0)
  cc.in_range(config, "method.pmr.momentum", 0, 1)
  cc.require(0 <= p.modulation_starts <= p.modulation_ends, "method.pmr.modulation_ends",
             "need 0 <= modulation_starts <= modulation_ends")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # CE(fused) + α·CE(prototypes of the weaker)


def transform(ctx):
  if ctx.num_classes is None:
    raise ValueError("make_optimizer: method pmr needs num_classes (its prototypes' shape)")
  return [pmr_lib.pmr(ctx.num_classes, {m: ctx.config.model.feature_dim for m in ctx.names})]


def loss_term(ctx):
  p = ctx.config.method.pmr
  cfg = pmr_lib.PMRConfig(alpha=p.alpha, modulation_starts=p.modulation_starts,
                          modulation_ends=p.modulation_ends, steps_per_epoch=ctx.steps_per_epoch)

  def term(step_ctx, params, outputs):
    state = step_ctx.state
    value, scores = pmr_lib.prototype_loss(
        outputs["features"], optax.tree_utils.tree_get(state.opt_state, "pmr_prototypes"),
        step_ctx.labels, cfg.alpha, pmr_lib.modulation_active(cfg, state.step))
    return value, {"metrics": {f"pmr/score_{m}": v for m, v in scores.items()}}
  return term


def prototype_batches(steps_per_epoch: int) -> int:
  """PMR's len(loader) // 10, at least one batch."""
  return max(1, steps_per_epoch // 10)


class Prototypes:
  """The epoch hook: initial prototypes before epoch 0, refreshed after each epoch."""

  def __init__(self, ctx):
    self.ctx = ctx

  def _prototypes(self, state, data_key, epoch: int, momentum: float | None) -> dict:
    ctx = self.ctx
    names, classes = ctx.names, ctx.num_classes
    variables = state.variables()
    sums = counts = None
    for batch in ctx.train_batches(data_key, epoch, prototype_batches(ctx.steps_per_epoch)):
      feats = ctx.feature_fn(variables, batch)
      part = {m: pmr_lib.class_sums(feats[m], batch["label"], classes) for m in names}
      if sums is None:
        sums = {m: part[m][0] for m in names}
        counts = {m: part[m][1] for m in names}
      else:
        sums = {m: sums[m] + part[m][0] for m in names}
        counts = {m: counts[m] + part[m][1] for m in names}
    old = optax.tree_utils.tree_get(state.opt_state, "pmr_prototypes")
    new = {m: pmr_lib.class_means(sums[m], counts[m], old[m]) for m in names}
    if momentum is not None:
      new = {m: pmr_lib.ema(new[m], old[m], momentum) for m in names}
    return {"pmr_prototypes": new}

  def prepare(self, state, data_key) -> dict:
    return self._prototypes(state, data_key, 0, None)

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    return self._prototypes(state, data_key, next_epoch, self.ctx.config.method.pmr.momentum)


PMR = Method(
    name="pmr", summary="PMR: prototype CE pushes the weaker modality",
    settings=Settings(block="pmr", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 0.0),)),
    optax=Optax(stage="edit", rank=40, transform=transform),
    step=Step(loss_term=loss_term),
    epoch=Epoch(hook=Prototypes),
    logging=Logging(plots=(Plot("pmr/score", "PMR prototype score (batch sum)"),)))
