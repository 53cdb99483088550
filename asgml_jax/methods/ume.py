"""UME, Uni-Modal Ensemble (Du et al., ICML 2023): no joint training at all;
each modality's model is trained alone and their predictions are averaged.

Two stages, as UMT: the teachers are the `unimodal_<m>` runs of the same
config and seed (`asgml_jax/teachers.py`, trained first by the launchers and
shared with UMT in a sweep), held frozen in the optimizer state. The second
stage trains nothing: its updates are zero (no momentum, no weight decay), and
validation and test predict with

    logits = (1/N) Σ_m logits_m^teacher,   the unimodal heads = each teacher's logits.

The run still makes its steps (a zero update after a forward and backward
pass of the unused multimodal model: the cost of one baseline run), so UME is
an ordinary variant of a sweep, with its history, checkpoints and report
rows; every epoch evaluates the same ensemble. The probes watch the unused
model and mean nothing here.

Reference: the paper (Sec. 4, "Uni-Modal Ensemble": uni-modal models trained
independently, their outputs combined at inference); no public code (it is
not among BalanceBenchmark's trainers). Averaging the logits is this
module's reading; the argmax equals that of their sum. Stacks with no other
method (nothing of the joint model is used).
"""

from __future__ import annotations

import optax

from asgml_jax.methods.base import Composition, Epoch, Evaluation, Method, Optax
from asgml_jax.methods.common import held_teachers, held_variables, teacher_logits, teacher_models


def transform(ctx):
  return held_teachers(ctx) + [optax.set_to_zero()]   # the held teachers, then no update


def eval_logits(ctx):
  names = ctx.names
  models = teacher_models(ctx)

  def replace(state, batch, outputs):
    held = held_variables(state.opt_state)
    logits = {m: teacher_logits(models[m], held[m], batch, m) for m in names}
    return {**outputs, "logits": sum(logits.values()) / len(names), "unimodal_logits": logits}
  return replace


UME = Method(
    name="ume", summary="UME: the average of unimodal models trained alone (no joint training)",
    optax=Optax(stage="post", transform=transform),
    evaluation=Evaluation(eval_logits=eval_logits),
    epoch=Epoch(teachers=True),
    composition=Composition(alone=True))
