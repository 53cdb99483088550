"""InfoReg (Huang et al., CVPR 2025): a proximal pull towards the epoch's
anchor on the more confident modality, during its prime-learning window.

Reference: GeWu-Lab/InfoReg_CVPR2025, main.py (`train_epoch`).

Stage `edit` (`asgml_jax.transforms.inforeg`; the anchor, the Fisher traces
and the window live in its state, the epoch boundary is read off the step).
Its variant is the reference's setting: the split head with γ = 1, the β
scales audio 0.95, visual 0.1, and the audio encoder's prime-learning window
gating both modalities (`window_modality="audio"`), for the modalities the
config has. Without an audio modality the variant keeps a window per modality.
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal
from asgml_jax.transforms.inforeg import inforeg


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      scales="",             # "<modality>=<β scale>,..." (reference: audio=0.95,visual=0.1)
      default_scale=0.5,     # for modalities not named in scales
      threshold=0.05,        # the prime-learning window is open while k > threshold
      window_modality="",    # "": a window per modality; a name: its window gates all
  ))


def check_block(config) -> None:
  info = config.method.inforeg
  cc.require(info.default_scale >= 0, "method.inforeg.default_scale", "must be >= 0")
  if info.window_modality:
    cc.one_of(info.window_modality, cc.modality_names(config), "method.inforeg.window_modality")


def _scales(config) -> dict:
  info = config.method.inforeg
  return cc.parse_named_floats(info.scales, cc.modality_names(config), info.default_scale)


def check(config) -> None:
  try:
    scales = _scales(config)
  except ValueError as err:
    raise cc.ConfigError(f"config.method.inforeg.scales: {err}") from None
  cc.require(all(v >= 0 for v in scales.values()), "method.inforeg.scales", "must be >= 0")


def preset(config) -> None:
  config.loss.unimodal_weight = 1.0         # CE(z) + Σ_m CE(z_m) on the split head
  config.model.unimodal_heads = "split"
  reference = {"audio": 0.95, "visual": 0.1}  # the reference's β scales
  config.method.inforeg.scales = ",".join(f"{m}={v}" for m, v in reference.items()
                                          if m in config.modalities)
  # the reference computes k from the audio encoder's trace alone, for both
  config.method.inforeg.window_modality = "audio" if "audio" in config.modalities else ""


def drop_modality(config, name: str) -> None:
  info = config.method.inforeg
  info.scales = ",".join(item for item in cc.names_list(info.scales)
                         if item.partition("=")[0].strip() != name)
  if info.window_modality == name:
    info.window_modality = ""


def transform(ctx):
  info = ctx.config.method.inforeg
  return [inforeg(ctx.steps_per_epoch, _scales(ctx.config), info.threshold,
                  info.window_modality)]


INFOREG = Method(
    name="inforeg", summary="InfoReg: proximal pull of the confident encoder in its prime window",
    settings=Settings(
        block="inforeg", defaults=defaults, check_block=check_block, check=check, preset=preset,
        drop_modality=drop_modality),
    protocols=Protocols(reference_fn=preset),
    optax=Optax(stage="edit", rank=20, transform=transform),
    logging=Logging(
        signals=(Signal("inforeg_beta", "inforeg/beta", "InfoReg proximal strength beta"),
                 Signal("inforeg_window", "inforeg/window_k", "InfoReg window k"))))
