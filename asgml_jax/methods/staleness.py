"""Staleness (docs/methods.md): named encoders apply their gradient of τ steps ago.

Stage `schedule` (`asgml_jax.transforms.schedule`, mode "staleness"): a ring
buffer of each stale encoder's last τ gradients lives in the optimizer state.

Reference: ASGML's own method (docs/methods.md); its reference protocol is the design.
"""

from __future__ import annotations

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Method, Optax, Protocols, Settings
from asgml_jax.transforms.schedule import modality_schedule


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      tau=2,
      modalities="",         # comma-separated modalities that use stale gradients
      seed_code=False,       # g(t-tau+1), fresh while t < tau
  ))


def check_block(config) -> None:
  cc.non_negative_int(config, "method.staleness.tau")
  for n in cc.names_list(config.method.staleness.modalities):
    cc.one_of(n, cc.modality_names(config), "method.staleness.modalities")


def check(config) -> None:
  cc.require(bool(cc.names_list(config.method.staleness.modalities)),
             "method.staleness.modalities",
             "name the modalities that use stale gradients (e.g. 'audio')")


def drop_modality(config, name: str) -> None:
  config.method.staleness.modalities = ""


def schedule(ctx, inner):
  stale = ctx.config.method.staleness
  return modality_schedule(inner, "staleness",
                           staleness={m: stale.tau for m in cc.names_list(stale.modalities)},
                           staleness_seed_code=stale.seed_code)


STALENESS = Method(
    name="staleness", summary="ASGML staleness: named encoders apply their gradient of τ steps ago",
    settings=Settings(block="staleness", defaults=defaults, check_block=check_block, check=check,
                      drop_modality=drop_modality),
    protocols=Protocols(seed_code=(("method.staleness.seed_code", True),)),
    optax=Optax(stage="schedule", schedule=schedule))
