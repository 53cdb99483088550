"""G-Blending (Wang et al., CVPR 2020): loss weights from each branch's
overfitting-to-generalisation ratio, re-estimated every gb_epoch epochs.

Stage `combine` (`asgml_jax.transforms.gblend`: Σ_k w_k ∇L_k, w in its
state). The weights come from an epoch hook: before the first epoch and
every gb_epoch epochs, `asgml_jax.gblend.estimate_weights` trains a copy of
every branch on a holdout split of train and compares its losses. Each
unimodal branch has its own head, as the reference.

Reference: pliang279/MultiBench, training_structures/gradient_blend.py
(`gb_estimate`, `train_unimodal`, `train_multimodal`). Known difference: the
reference trains the branch copies with plain SGD (no momentum) and holds out
the first 8 % of the train split; here the copies use the run's optimizer
and a random 8 % (asgml_jax/gblend.py).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (Epoch, Logging, Method, Optax, Protocols, Requirement,
                                    Settings, Signal)


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      gb_epoch=10,           # re-estimate the weights every gb_epoch epochs ([inferred])
      holdout_fraction=0.08,  # of the train split, for the estimate's holdout losses
  ))


def check_block(config) -> None:
  cc.positive(config, "method.gblend.gb_epoch", integer=True)
  g = config.method.gblend
  cc.require(0 < g.holdout_fraction < 1, "method.gblend.holdout_fraction",
             f"must be in (0, 1), got {g.holdout_fraction!r}")


def preset(config) -> None:
  config.model.unimodal_heads = "separate"  # a head per unimodal branch, as the reference
  config.loss.unimodal_weight = 1.0


def transform(ctx):
  from asgml_jax.transforms.gblend import gblend
  return [gblend()]


class BlendingWeights:
  """The epoch hook: new weights before epoch 0 and after every gb_epoch-th epoch
  (but not after the last)."""

  def __init__(self, setup):
    from asgml_jax import gblend as estimation
    opt = setup.config.optimizer
    self.setup = setup
    self.trainer = estimation.BranchTrainer(setup.model, opt.weight_decay, opt.momentum,
                                            setup.frame_sizes)

  def _weights(self, state, data_key, epoch: int) -> dict:
    from asgml_jax import gblend as estimation
    from asgml_jax import optim, run_dir
    cfg, data, steps = self.setup.config, self.setup.data, self.setup.steps_per_epoch
    train_idx, holdout_idx = estimation.split_train(data.num_train, data_key,
                                                    cfg.method.gblend.holdout_fraction)
    lr = float(optim.lr_schedule(cfg, steps)(epoch * steps))
    result = estimation.estimate_weights(
        self.trainer, state.variables(), data.train, data.on_device, train_idx, holdout_idx,
        epochs=cfg.method.gblend.gb_epoch, batch_size=cfg.batch_size, lr=lr,
        key=jax.random.fold_in(data_key, 0x9B + epoch), log=run_dir.log)
    tasks = ("fused",) + tuple(self.trainer.names)   # the estimate's order
    return {"task_weights": {t: np.float32(w) for t, w in zip(tasks, result["weights"])}}

  def prepare(self, state, data_key) -> dict:
    return self._weights(state, data_key, 0)

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    cfg = self.setup.config
    if next_epoch % cfg.method.gblend.gb_epoch == 0 and next_epoch < cfg.num_epochs:
      return self._weights(state, data_key, next_epoch)
    return {}


GBLEND = Method(
    name="gblend", summary="G-Blending: loss weights from each branch's overfitting ratio",
    settings=Settings(
        block="gblend", defaults=defaults, check_block=check_block,
        requires=(Requirement("model.unimodal_heads", "separate",
                              "gblend trains each unimodal branch with its own head"),),
        preset=preset),
    protocols=Protocols(
        reference=(("model.unimodal_heads", "separate"), ("loss.unimodal_weight", 1.0))),
    optax=Optax(stage="combine", transform=transform),
    epoch=Epoch(hook=BlendingWeights),
    logging=Logging(signals=(Signal("task_weights", "task_weight", "loss weight (G-Blending)"),)))
