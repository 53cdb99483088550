"""OGM / OGM-GE against a hand computation of the reference formulas (under jit)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgml_jax.plan import Plan
from asgml_jax.transforms.ogm_ge import batch_scores, ogm_coefficients, ogm_ge

throttle = lambda r, a: 1 - math.tanh(a * max(r, 0.0))


def test_coefficients_two_modalities_reference():
  got = jax.jit(functools.partial(ogm_coefficients, alpha=0.8))({"audio": 30.0, "visual": 20.0})
  assert float(got["audio"]) == pytest.approx(throttle(1.5, 0.8), abs=1e-6)
  assert float(got["visual"]) == 1.0
  got = jax.jit(functools.partial(ogm_coefficients, alpha=0.8))({"audio": 10.0, "visual": 40.0})
  assert float(got["visual"]) == pytest.approx(throttle(4.0, 0.8), abs=1e-6)
  assert float(got["audio"]) == 1.0
  # The reference's tie goes to its `else` branch: the first modality is throttled.
  got = ogm_coefficients({"audio": 5.0, "visual": 5.0}, 0.8)
  assert float(got["audio"]) == pytest.approx(throttle(1.0, 0.8)) and float(got["visual"]) == 1.0


def test_coefficients_three_modalities_mean_of_others():
  got = jax.jit(functools.partial(ogm_coefficients, alpha=0.5))(
      {"audio": 30.0, "text": 10.0, "visual": 20.0})
  assert float(got["audio"]) == pytest.approx(throttle(30 / 15, 0.5), abs=1e-6)  # 2.0
  assert float(got["text"]) == 1.0      # 10 / 25 < 1
  assert float(got["visual"]) == 1.0    # 20 / 20 = 1, not > 1


def test_batch_scores_are_sums_of_true_class_probabilities():
  z = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  y = jnp.array([0, 0, 1])
  p = jax.nn.softmax(z)
  expected = float(p[0, 0] + p[1, 0] + p[2, 1])
  assert float(batch_scores({"a": z}, y)["a"]) == pytest.approx(expected, rel=1e-6)


def _grads():
  conv = jnp.arange(2 * 2 * 1 * 3, dtype=jnp.float32).reshape(2, 2, 1, 3) / 10 - 0.5
  return {"encoders": {"audio": {"conv": conv, "bias": jnp.array([1.0, -2.0, 3.0])},
                       "visual": {"conv": -conv, "dense": jnp.ones((3, 2))}},
          "fusion": {"kernel": jnp.full((4, 2), 7.0)}}


@pytest.mark.parametrize("leaves", ["all", "conv"])
def test_ogm_scales_the_dominant_encoder_and_nothing_else(leaves):
  tx = ogm_ge(0.8, steps_per_epoch=10, gradient_noise=False, leaves=leaves)
  grads = _grads()
  state = tx.init(grads)
  scores = {"audio": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  out, new_state = jax.jit(tx.update)(grads, state, None, ogm_scores=scores, step=jnp.int32(3))
  c = throttle(1.5, 0.8)
  np.testing.assert_allclose(out["encoders"]["audio"]["conv"], grads["encoders"]["audio"]["conv"] * c,
                             rtol=1e-6)
  expected_bias = grads["encoders"]["audio"]["bias"] * (c if leaves == "all" else 1.0)
  np.testing.assert_allclose(out["encoders"]["audio"]["bias"], expected_bias, rtol=1e-6)
  for key in ("conv", "dense"):
    np.testing.assert_array_equal(out["encoders"]["visual"][key], grads["encoders"]["visual"][key])
  np.testing.assert_array_equal(out["fusion"]["kernel"], grads["fusion"]["kernel"])
  assert float(new_state.coefficients["audio"]) == pytest.approx(c)
  assert float(new_state.ratios["visual"]) == pytest.approx(20 / 30)


@pytest.mark.parametrize("leaves", ["all", "conv"])
def test_ogm_three_modalities_modulates_only_the_dominant(leaves):
  grads = _grads()
  grads["encoders"]["text"] = {"dense": jnp.full((2, 2), 3.0), "conv": jnp.ones((1, 1, 1, 2))}
  tx = ogm_ge(0.5, steps_per_epoch=10, gradient_noise=False, leaves=leaves)
  scores = {"audio": jnp.float32(10.0), "text": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  out, state = jax.jit(tx.update)(grads, tx.init(grads), None, ogm_scores=scores,
                                  step=jnp.int32(0))
  c = throttle(30 / 15, 0.5)  # text: 30 / mean(10, 20)
  np.testing.assert_allclose(out["encoders"]["text"]["conv"], c * np.ones((1, 1, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(out["encoders"]["text"]["dense"],
                             3.0 * (c if leaves == "all" else 1.0) * np.ones((2, 2)), rtol=1e-6)
  for m in ("audio", "visual"):
    for a, b in zip(jax.tree.leaves(out["encoders"][m]), jax.tree.leaves(grads["encoders"][m])):
      np.testing.assert_array_equal(a, b)
  assert float(state.coefficients["text"]) == pytest.approx(c, abs=1e-6)


def test_ogm_is_identity_outside_the_modulation_window():
  tx = ogm_ge(0.8, steps_per_epoch=10, gradient_noise=True, modulation_starts=1,
              modulation_ends=2)
  grads = _grads()
  scores = {"audio": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  update = jax.jit(tx.update)
  for step in (0, 9, 30):  # epochs 0, 0, 3
    out, state = update(grads, tx.init(grads), None, ogm_scores=scores, step=jnp.int32(step))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
      np.testing.assert_array_equal(a, b)
    assert float(state.coefficients["audio"]) == 1.0
  out, _ = update(grads, tx.init(grads), None, ogm_scores=scores, step=jnp.int32(25))  # epoch 2
  assert not np.allclose(out["encoders"]["audio"]["conv"], grads["encoders"]["audio"]["conv"])


def test_ge_noise_has_the_unscaled_std_and_zero_mean_on_both_modalities():
  g = jax.random.normal(jax.random.PRNGKey(0), (64, 32)) * 3.0 + 1.0
  grads = {"encoders": {"audio": {"w": g}, "visual": {"w": g}}, "fusion": {"w": jnp.ones(2)}}
  tx = ogm_ge(0.8, steps_per_epoch=10, gradient_noise=True, seed=3)
  scores = {"audio": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  out, state = jax.jit(tx.update)(grads, tx.init(grads), None, ogm_scores=scores,
                                  step=jnp.int32(0))
  expected_std = float(jnp.std(g, ddof=1)) + 1e-8
  c = throttle(1.5, 0.8)
  for m, coeff in (("audio", c), ("visual", 1.0)):
    noise = np.asarray(out["encoders"][m]["w"] - coeff * g)
    assert abs(noise.mean()) < 4 * expected_std / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(expected_std, rel=0.05)
  np.testing.assert_array_equal(out["fusion"]["w"], grads["fusion"]["w"])
  # A fresh key every step: two steps draw different noise.
  out2, _ = jax.jit(tx.update)(grads, state, None, ogm_scores=scores, step=jnp.int32(1))
  assert not np.allclose(out2["encoders"]["audio"]["w"], out["encoders"]["audio"]["w"])


def test_seed_code_noise_only_on_the_dominant_modality():
  g = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
  grads = {"encoders": {"audio": {"w": g}, "visual": {"w": g}}}
  tx = ogm_ge(0.8, steps_per_epoch=10, gradient_noise=True, noise_on="dominant")
  scores = {"audio": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  out, _ = jax.jit(tx.update)(grads, tx.init(grads), None, ogm_scores=scores, step=jnp.int32(0))
  np.testing.assert_array_equal(out["encoders"]["visual"]["w"], g)
  assert not np.allclose(out["encoders"]["audio"]["w"], throttle(1.5, 0.8) * g)


def test_min_2d_leaves_skip_vectors():
  tx = ogm_ge(0.8, steps_per_epoch=10, gradient_noise=False, leaves="min_2d")
  grads = _grads()
  scores = {"audio": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  out, _ = tx.update(grads, tx.init(grads), None, ogm_scores=scores, step=jnp.int32(0))
  np.testing.assert_array_equal(out["encoders"]["audio"]["bias"], grads["encoders"]["audio"]["bias"])
  np.testing.assert_allclose(out["encoders"]["audio"]["conv"],
                             grads["encoders"]["audio"]["conv"] * throttle(1.5, 0.8), rtol=1e-6)


def test_ogm_ge_variant_trains_end_to_end_and_logs_its_signals(tmp_path, tfds_dir):
  from asgml_jax import input_pipeline, steps, train
  from asgml_jax.state import create_train_state
  from conftest import tiny_config
  config = tiny_config(tfds_dir, num_epochs=1)
  config.method.name = "ogm_ge"
  plan = Plan.build(config)
  data = input_pipeline.load(plan.config)
  model, tx = plan.model(data.num_classes), plan.optimizer(6)
  batch = {k: v[:32] for k, v in data.train.items()}
  probe_cfg = plan.probe_config(data.num_classes)
  state = create_train_state(model, tx, batch, jax.random.PRNGKey(0), probe_cfg)
  _, metrics = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, unimodal_weight=1.0,
                                         lr_fn=lambda s: 0.1, probe_cfg=probe_cfg,
                                         parts=plan.step_parts(6, data.num_classes)))(state, batch)
  coeffs = [float(metrics[f"ogm/coeff_{m}"]) for m in ("audio", "visual")]
  assert min(coeffs) < 1.0 and max(coeffs) == 1.0  # exactly one modality throttled
  ratio = float(metrics["ogm/score_ratio_audio"])
  assert ratio * float(metrics["ogm/score_ratio_visual"]) == pytest.approx(1.0, rel=1e-5)
  summary = train.train_and_evaluate(config, str(tmp_path / "ogm"))
  assert summary["num_epochs"] == 1


def test_continuous_coefficient_is_one_when_level_and_reference_jumps():
  """reference: a modality ahead by any margin gets ≤ 1 − tanh(α) (0.336 for α = 0.8);
  continuous: 1 − tanh(α·(ratio − 1)), → 1 as the scores level."""
  level = {"audio": 10.01, "visual": 10.0}
  ref = ogm_coefficients(level, 0.8)
  assert float(ref["audio"]) == pytest.approx(1 - np.tanh(0.8 * 1.001), rel=1e-5)
  cont = ogm_coefficients(level, 0.8, "continuous")
  assert float(cont["audio"]) == pytest.approx(1 - np.tanh(0.8 * 0.001), rel=1e-5)
  assert float(cont["visual"]) == 1.0
  ahead = ogm_coefficients({"audio": 30.0, "visual": 10.0}, 0.8, "continuous")
  assert float(ahead["audio"]) == pytest.approx(1 - np.tanh(0.8 * 2.0), rel=1e-5)
