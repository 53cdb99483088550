"""Builds the optax transformation from the config (its only reader).

The base optimizer (`optimizer.kind`) is PyTorch's SGD, Adam or AdamW as the
methods' reference scripts use it (`transforms/torch_optimizers.py`). Adam's
step count is per encoder (inside the schedule's per-modality state), as
PyTorch counts steps per parameter.

The learning rate follows StepLR in epochs (`optimizer.schedule=step`) or
piecewise-constant factors at epochs (`piecewise`: MultiStepLR, a StepLR
stepped before each epoch, a restarted schedule), read from the *global* step
that the train step passes to `tx.update` as the extra arg `step`. It does not
come from a count in the optimizer state: per-modality interventions that skip
an encoder freeze that encoder's inner state, and a per-state count would then
shift its learning-rate schedule.
"""

from __future__ import annotations

from typing import NamedTuple

import optax

from asgml_jax.config_checks import ConfigError
from asgml_jax.transforms.schedule import modality_schedule
from asgml_jax.transforms.torch_optimizers import torch_direction

SCHEDULES = ("step", "piecewise")


def piecewise_milestones(text: str) -> tuple[tuple[int, float], ...]:
  """"epoch:factor,..." -> ((epoch, factor), ...) in epoch order; ConfigError
  naming `optimizer.lr_piecewise` for anything else."""
  out = []
  for item in filter(None, (t.strip() for t in str(text).split(","))):
    epoch, sep, factor = item.partition(":")
    try:
      pair = (int(epoch), float(factor))
    except ValueError:
      pair = None
    if not sep or pair is None or pair[0] < 1 or not pair[1] > 0:
      raise ConfigError(f"config.optimizer.lr_piecewise: {item!r} is not epoch:factor with "
                        "an epoch >= 1 and a factor > 0 (e.g. \"70:0.1,140:0.1\")")
    out.append(pair)
  epochs = [e for e, _ in out]
  if len(set(epochs)) != len(epochs):
    raise ConfigError(f"config.optimizer.lr_piecewise: an epoch appears twice in {text!r}")
  return tuple(sorted(out))


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate at a global step: StepLR(step_size=lr_step_epochs,
  gamma=lr_decay) stepped once per epoch, or the piecewise factors."""
  opt = config.optimizer
  if opt.schedule == "piecewise":
    return optax.piecewise_constant_schedule(
        init_value=opt.learning_rate,
        boundaries_and_scales={epoch * steps_per_epoch: factor
                               for epoch, factor in piecewise_milestones(opt.lr_piecewise)})
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


def direction(config) -> list:
  """The base optimizer before the learning rate, as a list of transformations:
  what `optimizer.kind` makes of a gradient (the update is −lr times this)."""
  opt = config.optimizer
  return torch_direction(opt.kind, opt.weight_decay, opt.momentum)


def base_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """`direction` (SGD with momentum or Adam(W), PyTorch-style weight decay),
  then −lr of the global step's schedule, in one flat chain."""
  return optax.chain(*direction(config),
                     scale_by_global_schedule(lr_schedule(config, steps_per_epoch)))


def joint_schedule(inner) -> optax.GradientTransformationExtraArgs:
  """Every encoder updates every step; the wrapper only records the schedule's signals."""
  return modality_schedule(inner, "joint")


def make_optimizer(config, parts: list) -> optax.GradientTransformationExtraArgs:
  """The full gradient transformation of a run from its stack's parts (docs/methods.md):

      chain(combiner?, edits by rank..., schedule(inner), post..., lr_scales?)

  `parts` are the stack's transformations in stage order, the schedule already
  wrapped around inner = `base_optimizer` (weight decay + SGD momentum or Adam(W) + lr;
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
