"""Probes watch the encoders through stop_gradient and never touch them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgml_jax.probes import ProbeConfig, init_probe_state, refresh, utilization_gap
from conftest import jitted_step, tiny_config, tiny_mlp_config


@pytest.mark.parametrize("method", ["baseline", "boost_ogm"])
def test_encoder_gradients_identical_whatever_the_probes_do(method):
  """Two very different probe trainings inside the step: the encoder gradients are
  bit-identical (no gradient reaches an encoder from a probe); with baseline, whose
  optimizer does not read the probe scores, so are the updated encoder params."""
  results = []
  for train_steps, lr in ((10, 1e-3), (1, 0.5)):
    config = tiny_mlp_config("/tmp/unused")
    config.method.name = method
    config.probes.train_steps, config.probes.learning_rate = train_steps, lr
    state, step, batch = jitted_step(config)
    results.append(step(state, batch))
  (a, ma), (b, mb) = results
  for m in ("audio", "visual"):
    np.testing.assert_array_equal(ma[f"grad_norm_{m}"], mb[f"grad_norm_{m}"])
  if method == "baseline":
    for x, y in zip(jax.tree.leaves(a.params["encoders"]), jax.tree.leaves(b.params["encoders"])):
      np.testing.assert_array_equal(x, y)
  assert not np.array_equal(jax.tree.leaves(a.probe_state.params)[0],
                            jax.tree.leaves(b.probe_state.params)[0])


def test_no_gradient_flows_from_a_probe_to_the_features():
  cfg = ProbeConfig(names=("audio",), num_classes=3, train_steps=3, learning_rate=0.1)
  state = init_probe_state(cfg, jax.random.PRNGKey(0), 4)
  feats = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  def probe_params_sum(f):
    new = refresh(cfg, state, {"audio": f}, labels)
    return sum(jnp.sum(x) for x in jax.tree.leaves(new.params))
  np.testing.assert_array_equal(jax.grad(probe_params_sum)(feats), 0.0)


@pytest.mark.parametrize("kind", ["linear", "mlp_1layer"])
def test_probe_learns_on_informative_features(kind):
  cfg = ProbeConfig(names=("good", "noise"), num_classes=4, kind=kind, hidden_dim=16,
                    train_steps=50, learning_rate=0.05)
  key = jax.random.PRNGKey(0)
  labels = jax.random.randint(key, (256,), 0, 4)
  informative = jax.nn.one_hot(labels, 8) * 3 + 0.5 * jax.random.normal(key, (256, 8))
  noise = jax.random.normal(jax.random.PRNGKey(1), (256, 8))
  state = init_probe_state(cfg, key, 8)
  state = jax.jit(functools.partial(refresh, cfg))(state, {"good": informative, "noise": noise},
                                                   labels)
  assert float(state.accuracy["good"]) > 0.9
  assert float(state.accuracy["noise"]) < 0.45  # chance 0.25
  assert float(utilization_gap(state.accuracy)) > 0.45
  assert int(state.refreshes) == 1


def test_score_ema_initialised_at_first_measurement_or_zero():
  for init, expected_first in (("first", None), ("zero", 0.1)):
    cfg = ProbeConfig(names=("a",), num_classes=2, train_steps=5, learning_rate=0.1,
                      score_ema=0.1, ema_init=init)
    state = init_probe_state(cfg, jax.random.PRNGKey(0), 2)
    feats = {"a": jnp.array([[1.0, 0], [0, 1.0]] * 8)}
    labels = jnp.array([0, 1] * 8)
    s1 = refresh(cfg, state, feats, labels)
    acc1 = float(s1.accuracy["a"])
    first = acc1 if expected_first is None else expected_first * acc1
    assert float(s1.score["a"]) == pytest.approx(first)
    s2 = refresh(cfg, s1, feats, labels)
    assert float(s2.score["a"]) == pytest.approx(0.9 * first + 0.1 * float(s2.accuracy["a"]))


def test_probes_refresh_only_every_eval_freq_steps():
  config = tiny_config("/tmp/unused")
  config.probes.eval_freq = 3
  state, step, batch = jitted_step(config)
  counts = []
  for _ in range(7):
    state, _ = step(state, batch)
    counts.append(int(state.probe_state.refreshes))
  assert counts == [1, 1, 1, 2, 2, 2, 3]  # steps 0, 3, 6
