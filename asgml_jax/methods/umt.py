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

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Epoch, Logging, Method, Optax, Plot, Protocols, Settings, Step

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


class TeachersState(NamedTuple):
  umt_teachers: dict    # {m: {"params", "batch_stats"}} of modality m's teacher, frozen


def hold_teachers(teachers: dict):
  """Keeps the teachers' variables in the optimizer state; passes updates."""
  def init_fn(params):
    return TeachersState(jax.tree.map(jnp.asarray, teachers))

  def update_fn(updates, state, params=None, **extra):
    return updates, state
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  from asgml_jax import teachers
  if ctx.num_classes is None:
    raise ValueError("make_optimizer: method umt needs num_classes (its teachers' heads)")
  return [hold_teachers({m: teachers.load(ctx.config, m, ctx.num_classes, ctx.steps_per_epoch)
                         for m in ctx.names})]


def _apply_variables(variables: dict) -> dict:
  """A held teacher's variables for `apply` (no empty batch_stats collection)."""
  return {k: v for k, v in variables.items() if k == "params" or v}


def teacher_features(model, variables, batch, modality, mode, key):
  """The teacher's features of `modality` (no gradient)."""
  inputs = {modality: batch[modality]}
  variables = _apply_variables(variables)
  if mode == "train":
    out, _ = model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                         rngs={"dropout": key})
  else:
    out = model.apply(variables, inputs, train=False)
  return jax.lax.stop_gradient(out["features"][modality])


def teacher_logits(model, variables, batch, modality):
  """The teacher's class logits in inference mode (UME's ensemble)."""
  return teacher_outputs(model, variables, batch, modality)[1]


def teacher_outputs(model, variables, batch, modality):
  """(features, logits) of the teacher in inference mode, no gradient (G2D)."""
  out = model.apply(_apply_variables(variables), {modality: batch[modality]}, train=False)
  return (jax.lax.stop_gradient(out["features"][modality]),
          jax.lax.stop_gradient(out["logits"]))


def loss_term(ctx):
  from asgml_jax import teachers
  cfg = ctx.config.method.umt
  models = {m: teachers.teacher_model(ctx.config, m, ctx.num_classes) for m in ctx.names}

  def term(step_ctx, params, outputs):
    held = optax.tree_utils.tree_get(step_ctx.state.opt_state, "umt_teachers")
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
        reference=(("loss.unimodal_weight", 0.0), ("method.umt.teacher_mode", "train"))),
    optax=Optax(stage="post", transform=transform),
    step=Step(loss_term=loss_term),
    epoch=Epoch(teachers=True),
    logging=Logging(plots=(Plot("umt/mse", "UMT: feature MSE to the teacher"),)))
