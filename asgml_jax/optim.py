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

import dataclasses
from typing import NamedTuple

import optax

from asgml_jax.transforms.boost import boost
from asgml_jax.config_schema import parse_named_floats
from asgml_jax.transforms.agm import agm
from asgml_jax.transforms.arl import arl
from asgml_jax.transforms.cggm import cggm
from asgml_jax.transforms.gblend import gblend
from asgml_jax.transforms.inforeg import inforeg
from asgml_jax.transforms.miles import miles
from asgml_jax.transforms.mmpareto import mmpareto
from asgml_jax.transforms.multitask import dwa, gradnorm, pcgrad
from asgml_jax.transforms.ogm_ge import ogm_ge
from asgml_jax.transforms.pmr import pmr
from asgml_jax.transforms.schedule import AdaptiveConfig, modality_schedule


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


def _names(value: str) -> tuple[str, ...]:
  return tuple(n.strip() for n in value.split(",") if n.strip())


def _schedule(config, inner) -> optax.GradientTransformationExtraArgs:
  """The per-modality update schedule of `config.method` around `inner`."""
  method, all_names = config.method, tuple(sorted(config.modalities.keys()))
  if method.name in ("frequency", "frequency_control"):
    freq = method.frequency
    control = method.name == "frequency_control"
    if freq.throttled == "probe":
      throttled = "probe_min" if control else "probe_max"
    else:
      named = _names(freq.throttled)
      throttled = tuple(m for m in all_names if m not in named) if control else named
    return modality_schedule(inner, "frequency", frequency_ratio=freq.ratio, throttled=throttled,
                             soft_mask_scale=freq.soft_mask_scale)
  if method.name == "staleness":
    stale = method.staleness
    return modality_schedule(inner, "staleness",
                             staleness={m: stale.tau for m in _names(stale.modalities)},
                             staleness_seed_code=stale.seed_code)
  if method.name == "adaptive":
    ad = method.adaptive
    cfg = AdaptiveConfig(**{f.name: ad[f.name] for f in dataclasses.fields(AdaptiveConfig)})
    return modality_schedule(inner, "adaptive", adaptive=cfg)
  return modality_schedule(inner, "joint")


def make_optimizer(config, steps_per_epoch: int,
                   num_classes: int | None = None) -> optax.GradientTransformationExtraArgs:
  """The full gradient transformation for `config.method` (SPEC §4.5):

      chain(OGM-GE?, boost?, schedule(inner = weight decay + SGD momentum + lr))

  Interventions edit the encoder gradients before weight decay and momentum,
  as the PyTorch code edits `.grad` before `optimizer.step()`. `baseline` has
  neither and a `joint` schedule (every encoder updates every step). The
  per-loss baselines (MMPareto, PCGrad, DWA, GradNorm) come first: they build
  the gradient from the per-loss gradients the step hands them. MILES scales
  the final encoder updates (a per-encoder learning rate), so it comes last.
  num_classes: needed by PMR (its prototypes are (classes, features) arrays).
  """
  method = config.method
  parts = []
  if method.name == "cggm":
    c = method.cggm
    parts.append(cggm(c.rho, c.cls_lr, config.model.feature_dim, seed=config.seed + 3))
  if method.name == "inforeg":
    info = method.inforeg
    scales = parse_named_floats(info.scales, tuple(sorted(config.modalities.keys())),
                                info.default_scale)
    parts.append(inforeg(steps_per_epoch, scales, info.threshold, info.window_modality))
  if method.name == "agm":
    parts.append(agm())
  if method.name == "pmr":
    if num_classes is None:
      raise ValueError("make_optimizer: method pmr needs num_classes (its prototypes' shape)")
    parts.append(pmr(num_classes, {m: config.model.feature_dim for m in config.modalities}))
  if method.name == "mmpareto":
    parts.append(mmpareto(method.mmpareto.scale))
  if method.name == "pcgrad":
    parts.append(pcgrad(seed=config.seed + 2))
  if method.name == "dwa":
    parts.append(dwa(steps_per_epoch, method.dwa.temperature))
  if method.name == "gblend":
    parts.append(gblend())
  if method.name == "gradnorm":
    g = method.gradnorm
    parts.append(gradnorm(g.alpha, g.lr, g.layer))
  if method.name in ("ogm", "ogm_ge", "boost_ogm"):
    ogm = method.ogm
    parts.append(ogm_ge(ogm.alpha, steps_per_epoch=steps_per_epoch,
                        gradient_noise=method.name != "ogm",
                        modulation_starts=ogm.modulation_starts,
                        modulation_ends=ogm.modulation_ends,
                        leaves=ogm.leaves, noise_on=ogm.noise_on, seed=config.seed))
  if method.name in ("boost", "boost_ogm"):
    b = method.boost
    parts.append(boost(b.alpha, b.scale_max, b.ema_alpha, noise_sigma=b.noise_sigma,
                       seed=config.seed + 1))
  if method.name == "arl":
    a = method.arl
    parts.append(arl(steps_per_epoch, a.temperature, a.start_epoch, a.scaling))
    parts.append(optax.clip_by_global_norm(a.clip_norm))
  parts.append(_schedule(config, base_optimizer(config, steps_per_epoch)))
  if method.name == "miles":
    parts.append(miles())
  return optax.chain(*parts)

