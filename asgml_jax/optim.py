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

import jax.numpy as jnp
import optax

from asgml_jax.transforms.ogm_ge import ogm_ge


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


def base_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and (coupled, PyTorch-style) weight decay."""
  opt = config.optimizer
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.trace(decay=opt.momentum, nesterov=False),
      scale_by_global_schedule(lr_schedule(config, steps_per_epoch)),
  )


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """The full gradient transformation for `config.method`.

  `baseline` is joint training with the base optimizer. Interventions edit
  the encoder gradients in front of it (SPEC §4.5: before weight decay and
  momentum, as PyTorch code edits `.grad` before `optimizer.step()`).
  """
  base = base_optimizer(config, steps_per_epoch)
  method = config.method
  if method.name in ("ogm", "ogm_ge"):
    ogm = method.ogm
    return optax.chain(
        ogm_ge(ogm.alpha, steps_per_epoch=steps_per_epoch,
               gradient_noise=method.name == "ogm_ge",
               modulation_starts=ogm.modulation_starts, modulation_ends=ogm.modulation_ends,
               leaves=ogm.leaves, noise_on=ogm.noise_on, seed=config.seed),
        base)
  return base


def current_lr(config, steps_per_epoch: int, step) -> jnp.ndarray:
  return lr_schedule(config, steps_per_epoch)(step)
