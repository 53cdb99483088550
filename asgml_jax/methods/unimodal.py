"""Unimodal training: one modality's encoder with the fusion layer as its
classifier, the reference point of every imbalance study.

No part of its own: the method checks that exactly one modality is
configured. Its variants are `unimodal_<modality>` (`methods.only_modality`),
which drop every other modality of a dataset config. It stacks with no other
method: the balancing methods need two modalities or more.

Reference: none (a protocol, not a method).
"""

from __future__ import annotations

from typing import Mapping

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Composition, Logging, Method, Settings

VARIANT_PREFIX = "unimodal_"


def check(config) -> None:
  names = cc.modality_names(config)
  cc.require(len(names) == 1, "modalities",
             f"method unimodal trains one modality, but {len(names)} are configured "
             f"({', '.join(names)}); use the variant unimodal_<modality>")


def label(config: Mapping) -> str:
  return VARIANT_PREFIX + "_".join(sorted(config["modalities"]))


UNIMODAL = Method(
    name="unimodal", summary="unimodal training of the one configured modality",
    settings=Settings(check=check),
    logging=Logging(label=label),
    composition=Composition(alone=True))
