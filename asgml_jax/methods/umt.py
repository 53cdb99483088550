"""UMT, Uni-Modal Teacher (Du et al., 2021/ICML 2023): each encoder of the
multimodal model is distilled toward the features of a unimodal model of its
modality trained first, so joint training cannot leave it lazy.

    loss = CE(fused) + s · Σ_m MSE(f_m^teacher, f_m)      (s = `scaling`, 10)

MSE is the mean over the batch and the feature dimensions; the teachers are
frozen. Two stages: the teachers are the `unimodal_<m>` runs of the same
config and seed (`asgml_jax/teachers.py`; `launch.train` and `launch.sweep`
train them first, in `method.teachers.dir`), read from their best-by-validation
checkpoints into the optimizer state when the student starts (so a resumed
student keeps them). The student starts from its own random init.

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/UMT_trainer.py
(`training_step`: loss = CE(out) + scaling · Σ_m MSELoss(teacher features,
student features); the teachers are loaded from the newest unimodal run's
checkpoint). There the teachers are never put in eval mode, so they run with
BatchNorm batch statistics and dropout: `teacher_mode="train"`
(`method.protocol=reference`); the default `inference` runs them as a frozen
model is meant to run. N modalities: a teacher per modality.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Epoch, Logging, Method, Optax, Plot, Protocols, Settings, Step
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK
from asgml_jax.methods.common import held_teachers, held_variables, teacher_features, teacher_models

TEACHER_MODES = ("inference", "train")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      scaling=10.0,            # s, the distillation weight
      teacher_mode="inference",  # inference | train (the reference: BN batch stats, dropout)
  ))


def check_block(config) -> None:
  cc.at_least(config, "method.umt.scaling", 0)
  cc.one_of(config.method.umt.teacher_mode, TEACHER_MODES, "method.umt.teacher_mode")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # CE(fused) + the distillation


def loss_term(ctx):
  cfg = ctx.config.method.umt
  models = teacher_models(ctx)

  def term(step_ctx, params, outputs):
    held = held_variables(step_ctx.state.opt_state)
    mse = {}
    for i, m in enumerate(ctx.names):
      target = teacher_features(models[m], held[m], step_ctx.batch, m, cfg.teacher_mode,
                                jax.random.fold_in(step_ctx.dropout_key, 0x7EA + i))
      mse[m] = jnp.mean(jnp.square(target - outputs["features"][m].astype(jnp.float32)))
    return cfg.scaling * sum(mse.values()), {"metrics": {f"umt/mse_{m}": v
                                                         for m, v in mse.items()}}
  return term


UMT = Method(
    name="umt", summary="UMT: encoders distilled toward unimodal teachers trained first",
    settings=Settings(block="umt", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(
        optimizers=BALANCEBENCHMARK,
        reference=(("loss.unimodal_weight", 0.0), ("method.umt.teacher_mode", "train"))),
    optax=Optax(stage="post", transform=held_teachers),
    step=Step(loss_term=loss_term),
    epoch=Epoch(teachers=True),
    logging=Logging(plots=(Plot("umt/mse", "UMT: feature MSE to the teacher"),)))
