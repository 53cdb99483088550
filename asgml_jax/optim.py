"""Builds the optax transformation from the config (its only reader).

The base optimizer is PyTorch's SGD: weight decay added to the gradient, then
heavy-ball momentum (buf = μ·buf + g, first step buf = g), then −lr. The
learning rate follows StepLR in epochs, read from the *global* step that the
train step passes to `tx.update` as the extra arg `step`. It does not come from
a count in the optimizer state: per-modality interventions that skip an
encoder freeze that encoder's inner state, and a per-state count would then
shift its learning-rate schedule.
"""

from __future__ import annotations

from typing import NamedTuple

import optax

from asgml_jax.transforms.schedule import modality_schedule


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """StepLR(step_size=lr_step_epochs, gamma=lr_decay), stepped once per epoch."""
  opt = config.optimizer
  return optax.exponential_decay(
      init_value=opt.learning_rate,
      transition_steps=opt.lr_step_epochs * steps_per_epoch,
      decay_rate=opt.lr_decay, staircase=True)


class ScaleByGlobalScheduleState(NamedTuple):
  """No state: the step comes from the train state, not from here."""


def scale_by_global_schedule(schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by −schedule(step), `step` given to `update` as an extra arg."""

  def init_fn(params):
    del params
    return ScaleByGlobalScheduleState()

  def update_fn(updates, state, params=None, *, step, **extra_args):
    del params, extra_args
    lr = schedule(step)
    return optax.tree.scale(-lr, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_encoder_updates(scales: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies `updates["encoders"][m]` by `scales[m]`: a per-encoder learning
  rate (PyTorch's parameter groups with lr·scale). It is the chain's last
  part: SGD's update is linear in the lr and its momentum buffer does not
  depend on it, so scaling the final update is scaling the lr; a skipped
  encoder's zero update stays zero; the per-modality lr factors of the post
  stage (MSLR, MILES) multiply with it."""

  def update_fn(updates, state, params=None):
    del params
    encoders = {m: optax.tree.scale(scales[m], u) if m in scales else u
                for m, u in updates["encoders"].items()}
    return {**updates, "encoders": encoders}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def encoder_lr_scales(config) -> dict[str, float]:
  """modalities.<m>.lr_scale of the modalities whose scale is not 1."""
  scales = {m: float(config.modalities[m].lr_scale) for m in config.modalities}
  return {m: v for m, v in scales.items() if v != 1.0}


def base_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and (coupled, PyTorch-style) weight decay."""
  opt = config.optimizer
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.trace(decay=opt.momentum, nesterov=False),
      scale_by_global_schedule(lr_schedule(config, steps_per_epoch)),
  )


def joint_schedule(inner) -> optax.GradientTransformationExtraArgs:
  """Every encoder updates every step; the wrapper only records the schedule's signals."""
  return modality_schedule(inner, "joint")


def make_optimizer(config, parts: list) -> optax.GradientTransformationExtraArgs:
  """The full gradient transformation of a run from its stack's parts (docs/methods.md):

      chain(combiner?, edits by rank..., schedule(inner), post..., lr_scales?)

  `parts` are the stack's transformations in stage order, the schedule already
  wrapped around inner = `base_optimizer` (weight decay + SGD momentum + lr;
  `joint_schedule` when the stack has no schedule, so the baseline is
  chain(joint(inner))); lr_scales are the per-encoder learning-rate factors
  (`modalities.<m>.lr_scale`) when any is not 1. Gradient edits come before
  weight decay and momentum, as the PyTorch code edits `.grad` before
  `optimizer.step()`. The plan (`asgml_jax/plan.py`) orders the parts and
  wraps the schedule in `transforms.zero_grad.zeroed_gradient_steps` when
  `optimizer.zero_grad` asks for PyTorch < 2.0's semantics.
  """
  scales = encoder_lr_scales(config)
  return optax.chain(*parts, *([scale_encoder_updates(scales)] if scales else []))
