"""Diagnosing & Re-learning (Wei et al., ECCV 2024): an encoder whose features
separate the classes much better on the training set than on held-out data
is over-fitting, so it is pulled back toward its initialisation.

After epoch e (0-based) with e > 0 and e % reinit_epoch == 0, at most
`reinit_num` times: for each modality m, k-means (k = classes) on the
min-max-scaled (to [−1, 1]) features of the whole training set and of the
validation set (inference mode), purity of each clustering against the
labels, and

    α_m = tanh(λ · |purity_train − purity_val|)
    θ_m ← α_m · θ_m(init) + (1 − α_m) · θ_m      (every parameter of encoder m)

Training is plain CE(fused) (γ = 0); the fusion layer, BatchNorm running
statistics and the optimizer's momentum are left as they are, as in the
reference. The initial encoder parameters are kept in the optimizer state
(`relearning_init`), so a resumed run re-initialises toward the same point.

Reference: GeWu-Lab/Diagnosing_Relearning_ECCV2024, code/ours.py (`main`'s
re-init condition, `reinit_score`, `reinit`, `purity_score`; λ = 3,
reinit_num = 3) and BalanceBenchmark's `ReLearning_trainer.py` (the same for
N modalities). Schedule: ours.py's argparse defaults are 50 epochs with
reinit_epoch = 20 (re-inits after epochs 20 and 40); the published run,
code/script/ours.sh, trains 90 epochs with reinit_epoch = 20 (after 20, 40,
60: 22 %, 44 %, 67 % of the run). `reinit_epoch=-1` (the default) keeps that
run's proportion: round(num_epochs · 20/90), at least 1 (4 in a 20-epoch
run: re-inits after epochs 4, 8, 12). A run shorter than reinit_epoch + 1
epochs trains without any re-initialisation. k-means and the scaling are
scikit-learn's, called as the reference calls them (`asgml_jax.clustering`).
N modalities: per modality, as BalanceBenchmark does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from asgml_jax import clustering
from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (PARAMS, Epoch, Logging, Method, Optax, Protocols,
                                    ReferenceOptimizer, Settings, Signal)


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      move_lambda=3.0,       # λ: α = tanh(λ·purity gap)
      reinit_epoch=-1,       # re-init after epochs k, 2k, ... (0-based); -1: k = round(E·20/90)
      reinit_num=3,          # ... at most this many times
  ))


def check_block(config) -> None:
  cc.positive(config, "method.relearning.move_lambda")
  if config.method.relearning.reinit_epoch != -1:
    cc.positive(config, "method.relearning.reinit_epoch", integer=True)
  cc.positive(config, "method.relearning.reinit_num", integer=True)


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # the reference trains on CE(fused) alone


PUBLISHED_RUN = (20, 90)   # code/script/ours.sh: --reinit_epoch 20 --epochs 90


def reinit_every(config) -> int:
  """reinit_epoch, with -1 resolved to the published run's proportion."""
  k = int(config.method.relearning.reinit_epoch)
  if k != -1:
    return k
  return max(1, round(config.num_epochs * PUBLISHED_RUN[0] / PUBLISHED_RUN[1]))


def reinit_due(epoch: int, reinit_epoch: int, reinit_num: int) -> bool:
  """Whether the re-initialisation runs after (0-based) epoch `epoch`."""
  return epoch > 0 and epoch % reinit_epoch == 0 and epoch // reinit_epoch <= reinit_num


def move_weights(train_purity: dict, val_purity: dict, move_lambda: float) -> dict:
  """α_m = tanh(λ·|purity_train − purity_val|)."""
  return {m: float(np.tanh(move_lambda * abs(train_purity[m] - val_purity[m])))
          for m in train_purity}


def move_toward_init(encoders: dict, init: dict, alpha: dict) -> dict:
  """θ_m ← α_m·θ_m(init) + (1 − α_m)·θ_m for every leaf of encoder m."""
  return {m: jax.tree.map(lambda i, c, a=alpha[m]: (a * i + (1 - a) * c).astype(c.dtype),
                          init[m], tree) for m, tree in encoders.items()}


class RelearningState(NamedTuple):
  relearning_init: dict            # {m: encoder m's parameters at initialisation}
  relearning_alpha: dict           # {m: α of the last re-initialisation}
  relearning_train_purity: dict    # {m: purity on the training features, last diagnosis}
  relearning_val_purity: dict


def keep_initial_encoders():
  """Holds a copy of the initial encoder parameters; passes updates unchanged."""
  def init_fn(params):
    zero = {m: jnp.float32(0.0) for m in params["encoders"]}
    return RelearningState(jax.tree.map(jnp.array, params["encoders"]), zero, dict(zero),
                           dict(zero))

  def update_fn(updates, state, params=None, **extra):
    return updates, state
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [keep_initial_encoders()]


class Relearning:
  """The epoch hook: diagnose every encoder and re-initialise when due."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.block = ctx.config.method.relearning
    if "validation" not in ctx.data.eval_splits:
      raise cc.ConfigError("method relearning compares training and validation features: "
                           f"dataset {ctx.config.dataset.name} has no validation split")

  def prepare(self, state, data_key) -> dict:
    return {}

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    epoch, b, ctx = next_epoch - 1, self.block, self.ctx
    if not reinit_due(epoch, reinit_every(self.ctx.config), b.reinit_num):
      return {}
    data, classes = ctx.data, ctx.num_classes
    variables = state.variables()
    train, train_labels = ctx.split_features(variables, data.train, data.num_train)
    val, val_labels = ctx.split_features(variables, data.eval_splits["validation"],
                                         data.eval_sizes["validation"])
    names = ctx.names
    p_train = {m: clustering.feature_purity(train[m], train_labels, classes) for m in names}
    p_val = {m: clustering.feature_purity(val[m], val_labels, classes) for m in names}
    alpha = move_weights(p_train, p_val, b.move_lambda)
    init = optax.tree_utils.tree_get(state.opt_state, "relearning_init")
    params = dict(state.params)
    params["encoders"] = move_toward_init(params["encoders"], init, alpha)
    ctx.log(f"relearning after epoch {epoch + 1}: purity train/val "
            + ", ".join(f"{m} {p_train[m]:.3f}/{p_val[m]:.3f} -> alpha {alpha[m]:.3f}"
                        for m in names))
    f32 = lambda d: {m: np.float32(v) for m, v in d.items()}
    return {"relearning_alpha": f32(alpha), "relearning_train_purity": f32(p_train),
            "relearning_val_purity": f32(p_val), PARAMS: params}


# GeWu-Lab/Diagnosing_Relearning_ECCV2024 code/script/ours.sh (CREMAD, 90 epochs),
# code/ours.py:34,38 (batch 64, lr 0.002), :368 (SGD momentum 0.9, weight decay 1e-4);
# ours.py builds no scheduler (its --lr_decay_step is never read): a constant lr.
# CREMA-D is the only dataset it loads (:353-356).
OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="GeWu-Lab/Diagnosing_Relearning_ECCV2024 code/script/ours.sh:2-11, "
           "code/ours.py:34-38,368",
    kind="sgd", learning_rate=2e-3, weight_decay=1e-4, num_epochs=90, batch_size=64)}


RELEARNING = Method(
    name="relearning",
    summary="Diagnosing & Re-learning: over-fitting encoders moved back toward their init",
    settings=Settings(block="relearning", defaults=defaults, check_block=check_block,
                      preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 0.0),)),
    optax=Optax(stage="post", transform=transform),
    epoch=Epoch(hook=Relearning),
    logging=Logging(
        signals=(Signal("relearning_alpha", "relearning/alpha",
                        "Re-learning: re-init weight alpha"),
                 Signal("relearning_train_purity", "relearning/train_purity"),
                 Signal("relearning_val_purity", "relearning/val_purity"))))
