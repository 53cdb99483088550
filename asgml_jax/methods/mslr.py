"""MSLR (Yao & Mihalcea, Findings of ACL 2022, "Modality-specific Learning
Rates for Effective Multimodal Additive Late-fusion"): each encoder trains at
its own learning rate.

This is the paper's static strategy ("keep"): encoder m's learning rate is
`factor_m` × the base learning rate for the whole run, e.g. the ratio of the
learning rate its unimodal model trained best with; the fusion layer and
heads keep the base rate. The paper's smooth and dynamic strategies (factors
that change during training) are not implemented.

Stage `post`: the factor multiplies encoder m's finished update (after weight
decay, momentum and the learning rate), which is exactly what a PyTorch
parameter group with lr = factor_m·lr does with SGD. It stacks with any other
method; with MILES the two factors multiply.

It is also the worked example of docs/adding_a_method.md.

Reference: the paper; the reference protocol is the design.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import Logging, Method, Optax, Settings, Signal


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      factors="",            # "<modality>=<lr factor>,...", e.g. "audio=0.5"
      default_factor=1.0,    # for modalities not named in factors
  ))


def _factors(config) -> dict:
  m = config.method.mslr
  return cc.parse_named_floats(m.factors, cc.modality_names(config), m.default_factor)


def check_block(config) -> None:
  cc.positive(config, "method.mslr.default_factor")
  try:
    factors = _factors(config)
  except ValueError as err:
    raise cc.ConfigError(f"config.method.mslr.factors: {err}") from None
  cc.require(all(v > 0 for v in factors.values()), "method.mslr.factors", "must be > 0")


def check(config) -> None:
  """A run of MSLR with every encoder at the base rate is the baseline under
  another name: refused, so a results table never holds an MSLR row that is
  not one (the factors come from the user's unimodal runs, nothing to guess)."""
  factors = _factors(config)
  cc.require(any(v != 1.0 for v in factors.values()), "method.mslr.factors",
             "every encoder at the base learning rate is the baseline; name the encoders "
             "that train at another rate, e.g. --config.method.mslr.factors=audio=0.5 (the "
             "ratio of each modality's best unimodal learning rate to the base rate)")


def drop_modality(config, name: str) -> None:
  m = config.method.mslr
  m.factors = ",".join(item for item in cc.names_list(m.factors)
                       if item.partition("=")[0].strip() != name)


class EncoderLearningRatesState(NamedTuple):
  mslr_lr_factor: dict    # {m: the factor of encoder m's update}, constant, for logging


def encoder_learning_rates(factors: Mapping[str, float]) -> optax.GradientTransformation:
  """Multiplies `updates["encoders"][m]` by factors[m]; everything else passes."""

  def init_fn(params):
    del params
    return EncoderLearningRatesState({m: jnp.float32(f) for m, f in sorted(factors.items())})

  def update_fn(updates, state, params=None):
    del params
    encoders = {m: jax.tree.map(lambda u, f=state.mslr_lr_factor[m]: u * f.astype(u.dtype), tree)
                for m, tree in updates["encoders"].items()}
    return {**updates, "encoders": encoders}, state

  return optax.GradientTransformation(init_fn, update_fn)


def transform(ctx):
  return [encoder_learning_rates(_factors(ctx.config))]


MSLR = Method(
    name="mslr", summary="MSLR: each encoder trains at its own (fixed) learning rate",
    settings=Settings(
        block="mslr", defaults=defaults, check_block=check_block, check=check,
        drop_modality=drop_modality),
    optax=Optax(stage="post", transform=transform),
    logging=Logging(signals=(Signal("mslr_lr_factor", "mslr/lr_factor"),)))
