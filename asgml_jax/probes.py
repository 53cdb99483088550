"""Decoupled probes: one small classifier per modality on stop-gradient features.

A probe measures how much class information an encoder's features carry
(its *utilization score*) without influencing the encoder: its inputs are
`jax.lax.stop_gradient(features)` and it has its own parameters, optimizer
(Adam, as the research code) and state, none of which is part of the model's
parameter tree. Every `eval_freq` steps (docs/methods.md, decoupled probes) the batch is split in
halves: the probes take `train_steps` steps on the first half and are scored
on the second (an honest, held-out signal). The scores feed boost/adaptive
through an EMA (α = 0.1) initialised at the first measurement (design) or at
0 (`ema_init="zero"`, the seeds' code, biased low early).

Order within a step follows the research code (design-v2 §7.1): the probe
refresh of step t is visible to the interventions of step t.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from asgml_jax.config_checks import modality_names
from asgml_jax.models.encoders import dense_init

PROBE_KINDS = ("linear", "mlp_1layer")


class ProbeNet(nn.Module):
  """`linear`: Dense(C); `mlp_1layer`: Dense(hidden) -> ReLU -> Dense(C)."""
  kind: str
  num_classes: int
  hidden_dim: int = 256

  @nn.compact
  def __call__(self, feats_BxD):
    x = feats_BxD
    if self.kind == "mlp_1layer":
      x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=dense_init, name="hidden")(x))
    return nn.Dense(self.num_classes, kernel_init=dense_init, name="out")(x)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Static description of the probes (hashable: closed over by the jitted step)."""
  names: tuple[str, ...]
  num_classes: int
  kind: str = "linear"
  hidden_dim: int = 256
  learning_rate: float = 1e-3
  train_steps: int = 10
  eval_freq: int = 20
  score_ema: float = 0.1
  ema_init: str = "first"  # "first" (design) | "zero" (seeds' code)

  @property
  def net(self) -> ProbeNet:
    return ProbeNet(self.kind, self.num_classes, self.hidden_dim)

  @property
  def tx(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate)


class ProbeState(flax.struct.PyTreeNode):
  params: Any             # {modality: probe params}
  opt_state: Any
  accuracy: dict          # {modality: last split-batch held-out accuracy}
  score: dict             # {modality: EMA of those accuracies} (the utilization score)
  refreshes: jnp.ndarray  # int32, number of refreshes so far


def init_probe_state(cfg: ProbeConfig, key: jnp.ndarray, feature_dim: int) -> ProbeState:
  keys = jax.random.split(key, len(cfg.names))
  dummy = jnp.zeros((1, feature_dim), jnp.float32)
  params = {m: cfg.net.init(k, dummy)["params"] for m, k in zip(cfg.names, keys)}
  zeros = {m: jnp.zeros((), jnp.float32) for m in cfg.names}
  return ProbeState(params=params, opt_state=cfg.tx.init(params), accuracy=zeros,
                    score=dict(zeros), refreshes=jnp.zeros((), jnp.int32))


def _probe_loss(cfg: ProbeConfig, params, feats: Mapping[str, jnp.ndarray], labels_B):
  losses = [optax.softmax_cross_entropy_with_integer_labels(
      cfg.net.apply({"params": params[m]}, feats[m]), labels_B).mean() for m in cfg.names]
  return sum(losses)


def probe_accuracy(cfg: ProbeConfig, params, feats: Mapping[str, jnp.ndarray], labels_B) -> dict:
  return {m: jnp.mean(jnp.argmax(cfg.net.apply({"params": params[m]}, feats[m]), -1) == labels_B)
          .astype(jnp.float32) for m in cfg.names}


def probe_logits(cfg: ProbeConfig, state: ProbeState, feats: Mapping[str, jnp.ndarray]) -> dict:
  feats = jax.lax.stop_gradient(feats)
  return {m: cfg.net.apply({"params": state.params[m]}, feats[m]) for m in cfg.names}


def refresh(cfg: ProbeConfig, state: ProbeState, feats: Mapping[str, jnp.ndarray],
            labels_B: jnp.ndarray) -> ProbeState:
  """Train on the first half of the batch, score on the second, update the EMA."""
  feats = jax.lax.stop_gradient({m: feats[m] for m in cfg.names})
  half = labels_B.shape[0] // 2
  train_feats = {m: f[:half] for m, f in feats.items()}
  test_feats = {m: f[half:2 * half] for m, f in feats.items()}
  grad_fn = jax.grad(lambda p: _probe_loss(cfg, p, train_feats, labels_B[:half]))

  def one_step(carry, _):
    params, opt_state = carry
    updates, opt_state = cfg.tx.update(grad_fn(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, opt_state), _ = jax.lax.scan(one_step, (state.params, state.opt_state), None,
                                        length=cfg.train_steps)
  acc = probe_accuracy(cfg, params, test_feats, labels_B[half:2 * half])
  first = state.refreshes == 0
  a = cfg.score_ema
  score = {}
  for m in cfg.names:
    ema = (1 - a) * state.score[m] + a * acc[m]
    score[m] = jnp.where(first & (cfg.ema_init == "first"), acc[m], ema)
  return ProbeState(params=params, opt_state=opt_state, accuracy=acc, score=score,
                    refreshes=state.refreshes + 1)


def maybe_refresh(cfg: ProbeConfig, state: ProbeState, step, feats, labels_B) -> ProbeState:
  """`refresh` on steps where step % eval_freq == 0 (a lax.cond inside the train step)."""
  return jax.lax.cond(step % cfg.eval_freq == 0,
                      lambda: refresh(cfg, state, feats, labels_B), lambda: state)


def utilization_gap(scores: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """max_m score − min_m score."""
  values = jnp.stack([scores[m] for m in sorted(scores)])
  return values.max() - values.min()


def probe_config_from(config, num_classes: int) -> ProbeConfig:
  p = config.probes
  return ProbeConfig(names=modality_names(config), num_classes=num_classes, kind=p.kind,
                     hidden_dim=p.hidden_dim, learning_rate=p.learning_rate,
                     train_steps=p.train_steps, eval_freq=p.eval_freq, score_ema=p.score_ema,
                     ema_init=p.ema_init)
