"""Frequency control (docs/methods.md): throttled encoders update every k-th step;
and its control condition, which throttles the other modalities instead.

Stage `schedule` (`asgml_jax.transforms.schedule`, mode "frequency"). The
throttled set is named in `method.frequency.throttled` or chosen every step by
the probes ("probe": the highest utilization score; the control condition
throttles the lowest).

Reference: ASGML's own method (docs/methods.md); its reference protocol is the design.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Method, Optax, Protocols, Settings
from asgml_jax.transforms.schedule import modality_schedule


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      ratio=2,               # k: throttled encoders update when t mod k == 0
      throttled="probe",     # comma-separated modalities, or "probe" (highest score)
      soft_mask_scale=config_dict.placeholder(float),  # seeds' code: 0.1 instead of skip
  ))


def check_block(config) -> None:
  freq, names = config.method.frequency, cc.modality_names(config)
  cc.positive(config, "method.frequency.ratio", integer=True)
  if freq.throttled != "probe":
    for n in cc.names_list(freq.throttled):
      cc.one_of(n, names, "method.frequency.throttled")
    cc.require(bool(cc.names_list(freq.throttled)), "method.frequency.throttled",
               "name at least one modality, or 'probe'")
  if freq.soft_mask_scale is not None:
    cc.require(0 <= freq.soft_mask_scale <= 1, "method.frequency.soft_mask_scale",
               "must be in [0, 1]")


def drop_modality(config, name: str) -> None:
  """A unimodal run keeps no throttled set naming a dropped modality."""
  config.method.frequency.throttled = "probe"


def _schedule(control: bool):
  def build(ctx, inner):
    freq = ctx.config.method.frequency
    if freq.throttled == "probe":
      throttled = "probe_min" if control else "probe_max"
    else:
      named = tuple(cc.names_list(freq.throttled))
      throttled = tuple(m for m in ctx.names if m not in named) if control else named
    return modality_schedule(inner, "frequency", frequency_ratio=freq.ratio, throttled=throttled,
                             soft_mask_scale=freq.soft_mask_scale)
  return build


_SETTINGS = Settings(block="frequency", defaults=defaults, check_block=check_block,
                     drop_modality=drop_modality)
_PROTOCOLS = Protocols(seed_code=(("method.frequency.soft_mask_scale", 0.1),))

FREQUENCY = Method(name="frequency",
                   summary="ASGML frequency: the throttled encoders update every k-th step",
                   settings=_SETTINGS, protocols=_PROTOCOLS,
                   optax=Optax(stage="schedule", schedule=_schedule(False)))
FREQUENCY_CONTROL = Method(name="frequency_control",
                           summary="control: the other encoders update every k-th step",
                           settings=_SETTINGS, protocols=_PROTOCOLS,
                           optax=Optax(stage="schedule", schedule=_schedule(True)))
