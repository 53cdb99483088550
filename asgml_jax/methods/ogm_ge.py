"""OGM and OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation of
the dominant encoder, with (GE) or without Gaussian gradient enhancement.

The math is `asgml_jax.transforms.ogm_ge` (docs/methods.md, the baselines); this module
binds it to `config.method.ogm` and places it in the `edit` stage before boost
(docs/methods.md, composition: OGM-GE throttles the dominant, boost then pushes the weak).
Both methods read the block `method.ogm`; they cannot stack with each other
(the same modulation twice).

Reference: GeWu-Lab/OGM-GE_CVPR2022, main.py (`train_epoch`).

Design vs reference (a choice the user sees, not an accident): by default the
variants train on CE(fused) + γ·Σ CE(unimodal) with γ = 1 (as the seeds'
code) and modulate every encoder leaf (docs/encoders.md: conv and dense, N
modalities). The official code trains on CE(fused) alone and modulates only
the 4-D (conv) gradients; `method.protocol=reference` sets both
(`loss.unimodal_weight=0`, `method.ogm.leaves=conv`). Its optimizer (SGD lr
1e-3, momentum 0.9, weight decay 1e-4, StepLR(70, 0.1), 100 epochs) is not
forced: the dataset config's optimizer stands, so methods compare under one.

`method.ogm.coefficient=continuous` (1 − tanh(α·(ratio − 1))) is an option,
not the default: on AV-Digits the modalities are level on the training
batches (score ratio ≈ 1.01), the official coefficient then scales a random
encoder by ≤ 0.34 every step and OGM-GE falls 6 points below joint training;
the continuous one restores it (docs/results/av_digits_ogm_ablation).
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (Composition, Logging, Method, Optax, Protocols,
                                    ReferenceOptimizer, Settings, Signal, steplr_milestones)
from asgml_jax.transforms.ogm_ge import ogm_ge


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=0.8,
      modulation_starts=0,   # epochs, inclusive
      modulation_ends=50,    # epochs, inclusive
      leaves="all",          # all | conv (reference: 4-D only) | min_2d (seeds' code)
      noise_on="all",        # all (reference) | dominant (seeds' code)
      ratio_to="others",     # N ≥ 3: score / mean of the others | all (seeds' code)
      # reference: 1 − tanh(α·ratio) for the modality ahead by any margin |
      # continuous: 1 − tanh(α·(ratio − 1)), 1 when the modalities are level
      coefficient="reference",
  ))


def check_block(config) -> None:
  ogm = config.method.ogm
  cc.at_least(config, "method.ogm.alpha", 0)
  cc.one_of(ogm.leaves, ("all", "conv", "min_2d"), "method.ogm.leaves")
  cc.one_of(ogm.noise_on, ("all", "dominant"), "method.ogm.noise_on")
  cc.one_of(ogm.ratio_to, ("others", "all"), "method.ogm.ratio_to")
  cc.one_of(ogm.coefficient, ("reference", "continuous"), "method.ogm.coefficient")
  cc.require(0 <= ogm.modulation_starts <= ogm.modulation_ends, "method.ogm.modulation_ends",
             f"window [{ogm.modulation_starts}, {ogm.modulation_ends}] is empty or negative")


def check_leaves_exist(config) -> None:
  """`leaves=conv` (also what protocol=reference forces) modulates 4-D kernels
  only; a `transformer` (sequence) encoder has none, so OGM-GE would leave it
  alone without saying so. Refused; vit/ast keep their patch embedding."""
  protocol = "seed_code" if config.method.get("seed_code") else config.method.protocol
  leaves = {"reference": "conv", "seed_code": "min_2d"}.get(protocol, config.method.ogm.leaves)
  if leaves != "conv":
    return
  for name in config.modalities:
    cc.require(config.modalities[name].encoder != "transformer", "method.ogm.leaves",
               f"conv modulates 4-D (convolution) gradients, and modality {name!r}'s "
               f"transformer encoder has no 4-D leaf: OGM would not touch it; use "
               f"leaves=all or min_2d")


def preset(config) -> None:
  config.method.ogm.alpha = 0.8           # OGM-GE README value for CREMA-D


def _transform(gradient_noise: bool):
  def build(ctx):
    ogm = ctx.config.method.ogm
    return [ogm_ge(ogm.alpha, steps_per_epoch=ctx.steps_per_epoch,
                   gradient_noise=gradient_noise, modulation_starts=ogm.modulation_starts,
                   modulation_ends=ogm.modulation_ends, leaves=ogm.leaves,
                   noise_on=ogm.noise_on, seed=ctx.config.seed, ratio_to=ogm.ratio_to,
                   coefficient=ogm.coefficient)]
  return build


_SETTINGS = Settings(block="ogm", defaults=defaults, check_block=check_block,
                     check=check_leaves_exist, preset=preset)
# GeWu-Lab/OGM-GE_CVPR2022 main.py:21-22 (CREMAD, KineticSound, AVE), :33-39 (batch 64,
# 100 epochs, sgd, lr 1e-3, StepLR(70, 0.1)), :246-247 (SGD momentum 0.9, weight decay
# 1e-4), :159 (stepped after each epoch).
_OGM_OPTIMIZER = ReferenceOptimizer(
    source="GeWu-Lab/OGM-GE_CVPR2022 main.py:33-39,159,246-247",
    kind="sgd", learning_rate=1e-3, weight_decay=1e-4, num_epochs=100, batch_size=64,
    lr_milestones=steplr_milestones(70, 0.1, 100))
OPTIMIZERS = {name: _OGM_OPTIMIZER for name in ("cremad", "kinetics_sounds", "ave")}


_PROTOCOLS = Protocols(
    optimizers=OPTIMIZERS,
    seed_code=(("method.ogm.leaves", "min_2d"), ("method.ogm.noise_on", "dominant"),
               ("method.ogm.ratio_to", "all")),
    reference=(("method.ogm.leaves", "conv"), ("method.ogm.noise_on", "all"),
               ("method.ogm.coefficient", "reference"), ("loss.unimodal_weight", 0.0)))
_LOGGING = Logging(signals=(Signal("coefficients", "ogm/coeff", "OGM coefficient"),
                            Signal("ratios", "ogm/score_ratio")))

OGM = Method(name="ogm", summary="OGM: the dominant encoder's gradient scaled down, no noise",
             settings=_SETTINGS, protocols=_PROTOCOLS, logging=_LOGGING,
             optax=Optax(stage="edit", rank=50, transform=_transform(False)),
             composition=Composition(
                 excludes={"ogm_ge": "OGM and OGM-GE are the same modulation; pick one"}))
OGM_GE = Method(name="ogm_ge",
                summary="OGM-GE: the dominant encoder's gradient scaled down, plus Gaussian noise",
                settings=_SETTINGS, protocols=_PROTOCOLS, logging=_LOGGING,
                optax=Optax(stage="edit", rank=50, transform=_transform(True)))
