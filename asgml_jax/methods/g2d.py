"""G2D, gradient-guided distillation (ICCV 2025, rAIson-Lab/G2D): the
multimodal student is distilled from unimodal teachers trained first, and
while it learns, only the modality whose teacher does worst on the batch
updates its encoder (sequential modality prioritisation).

One step of the reference (`student.py` `train`, exp_name
`aT+aTF+vT+vTF-to-mS`; `utils/utils.py`
`modulate_gradients_based_on_scores_from_two_modalities`):

    loss = CE(fused) + Σ_m [ w_l · T² · KL(softmax(t_m/T) ‖ softmax(s/T))
                            + w_f · MSE(f_m, f_m^teacher) ]

with s the student's fused logits, t_m and f_m^teacher modality m's teacher's
logits and features (inference mode, no gradient), KL averaged over the batch
(`batchmean`), MSE over batch and feature dimensions; w_l = w_f = T = 1. Then,
in epochs [modulation_starts, modulation_ends], each encoder's gradient is
multiplied by c_m before the optimizer step, from the teachers' scores on the
batch, score_m = Σ_i softmax(t_m)_i[y_i]:

    c_m = 1 for the modality whose teacher scores lowest, 0 for the others.

For two modalities that is the reference's rule (the stronger teacher's
modality is frozen); N modalities: every modality but the weakest-teacher one
waits. On an exact tie the reference raises an error; here every tied
weakest modality gets c = 1 (N = 2: no modulation). The window's end
defaults to half the run (the reference's 150 of 300 epochs, inclusive).

The reference multiplies only 4-D gradients (conv kernels) and trains on
CE(fused) plus the distillation alone: `method.protocol=reference` sets
`method.g2d.leaves=conv` and γ = 0. The default multiplies every encoder leaf
(`leaves=all`, as this project's OGM-GE: with MLP or Transformer encoders
`conv` would freeze nothing); the variant also uses γ = 0.

The teachers are UMT's (`asgml_jax/teachers.py`: the `unimodal_<m>` runs of
the same config and seed, trained first, held in the optimizer state), so a
sweep with both trains them once; G2D and UMT hold them in the same field and
do not stack. The reference trains its teachers with its own script
(`teacher.py`, a unimodal model, CE): the same thing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import batch_scores, kl_divergence
from asgml_jax.methods.base import (Composition, Epoch, Logging, Method, Optax, Plot, Protocols,
                                    ReferenceOptimizer, Settings, Signal, Step, steplr_milestones)
from asgml_jax.methods.common import held_teachers, held_variables, teacher_models, teacher_outputs
from asgml_jax.transforms.ogm_ge import in_epoch_window, is_modulated_leaf


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      logit_weight=1.0,       # w_l, the KL to each teacher's logits
      feature_weight=1.0,     # w_f, the MSE to each teacher's features
      temperature=1.0,        # T of the logit distillation
      modulation_starts=0,    # epochs, inclusive
      modulation_ends=-1,     # epochs, inclusive; -1: num_epochs // 2 (the reference's 150 of 300)
      leaves="all",           # all | conv (reference: 4-D gradients only) | min_2d
  ))


def check_block(config) -> None:
  g = config.method.g2d
  cc.at_least(config, "method.g2d.logit_weight", 0)
  cc.at_least(config, "method.g2d.feature_weight", 0)
  cc.positive(config, "method.g2d.temperature")
  cc.one_of(g.leaves, ("all", "conv", "min_2d"), "method.g2d.leaves")
  cc.require(g.modulation_starts >= 0, "method.g2d.modulation_starts", "must be >= 0")
  cc.require(g.modulation_ends == -1 or g.modulation_ends >= g.modulation_starts,
             "method.g2d.modulation_ends",
             f"window [{g.modulation_starts}, {g.modulation_ends}] is empty (-1: half the run)")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # CE(fused) + the distillation, as the reference


def modulation_window(config) -> tuple[int, int]:
  """(first, last) epoch of the prioritisation, inclusive."""
  g = config.method.g2d
  last = config.num_epochs // 2 if g.modulation_ends == -1 else g.modulation_ends
  return g.modulation_starts, last


def prioritised(scores: dict) -> dict:
  """{m: 1.0 if modality m's teacher scores lowest (ties: all the tied), else 0.0}."""
  lowest = jnp.min(jnp.stack([scores[m] for m in sorted(scores)]))
  return {m: (scores[m] <= lowest).astype(jnp.float32) for m in scores}


def distillation_kl(student_logits, teacher_logits, temperature: float):
  """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes, mean over the batch."""
  return kl_divergence(teacher_logits / temperature, student_logits / temperature) \
      * temperature ** 2


class G2DState(NamedTuple):
  g2d_coefficients: dict     # {m: c_m of the last step} (1 outside the window)


def prioritisation(*, steps_per_epoch: int, first_epoch: int, last_epoch: int,
                   leaves: str) -> optax.GradientTransformationExtraArgs:
  """Multiplies `updates["encoders"][m]`'s selected leaves by c_m (`prioritised`)."""

  def init_fn(params):
    return G2DState({m: jnp.ones((), jnp.float32) for m in params["encoders"]})

  def update_fn(updates, state, params=None, *, g2d_teacher_scores, step, **extra):
    del params, extra
    active = in_epoch_window(step, steps_per_epoch, first_epoch, last_epoch)
    coeffs = {m: jnp.where(active, c, 1.0) for m, c in prioritised(g2d_teacher_scores).items()}
    encoders = {
        m: jax.tree.map(lambda g, c=coeffs[m]: g * c.astype(g.dtype)
                        if is_modulated_leaf(g, leaves) else g, enc)
        for m, enc in updates["encoders"].items()}
    return {**updates, "encoders": encoders}, G2DState(coeffs)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  first, last = modulation_window(ctx.config)
  return held_teachers(ctx) + [prioritisation(
      steps_per_epoch=ctx.steps_per_epoch, first_epoch=first, last_epoch=last,
      leaves=ctx.config.method.g2d.leaves)]


def loss_term(ctx):
  g = ctx.config.method.g2d
  models = teacher_models(ctx)

  def term(step_ctx, params, outputs):
    held = held_variables(step_ctx.state.opt_state)
    kl, mse, logits = {}, {}, {}
    for m in ctx.names:
      feats, logits[m] = teacher_outputs(models[m], held[m], step_ctx.batch, m)
      kl[m] = distillation_kl(outputs["logits"], logits[m], g.temperature)
      mse[m] = jnp.mean(jnp.square(feats - outputs["features"][m].astype(jnp.float32)))
    scores = batch_scores(logits, step_ctx.labels)   # the reference's score_teacher_m
    total = sum(g.logit_weight * kl[m] + g.feature_weight * mse[m] for m in ctx.names)
    metrics = {**{f"g2d/kl_{m}": v for m, v in kl.items()},
               **{f"g2d/mse_{m}": v for m, v in mse.items()},
               **{f"g2d/teacher_score_{m}": v / step_ctx.labels.shape[0]
                  for m, v in scores.items()}}
    return total, {"metrics": metrics, "tx_args": {"g2d_teacher_scores": scores}}
  return term


# rAIson-Lab/G2D config.py:35-43 (CREMAD: batch 16, 300 epochs, StepLR(200, 0.1), lr 1e-3,
# sgd, weight decay 1e-4), student.py:249 (SGD momentum 0.9), :252, :310 (stepped after
# each epoch); its teachers (teacher.py:158-161) train with the same config.
OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="rAIson-Lab/G2D config.py:35-43, student.py:249-252,310",
    kind="sgd", learning_rate=1e-3, weight_decay=1e-4, num_epochs=300, batch_size=16,
    lr_milestones=steplr_milestones(200, 0.1, 300))}


G2D = Method(
    name="g2d",
    summary="G2D: distillation from unimodal teachers (logits and features); only the "
            "modality with the weakest teacher on the batch updates its encoder",
    settings=Settings(block="g2d", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 0.0), ("method.g2d.leaves", "conv"))),
    optax=Optax(stage="edit", rank=45, transform=transform),
    step=Step(loss_term=loss_term),
    epoch=Epoch(teachers=True),
    logging=Logging(
        signals=(Signal("g2d_coefficients", "g2d/coeff", "G2D: encoder update (1 = prioritised)"),),
        plots=(Plot("g2d/teacher_score", "G2D: teacher's mean true-class probability"),)),
    composition=Composition(
        excludes={"umt": "g2d and umt hold the same teachers in the same optimizer-state field; "
                         "g2d already distils the teachers' features"}))
