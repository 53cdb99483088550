"""Continuous boost (SPEC §4.4) against hand computations, under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgml_jax.transforms.boost import boost, boost_scales


def _floats(d):
  return {k: float(v) for k, v in d.items()}


def test_worked_example_of_the_spec():
  got = jax.jit(functools.partial(boost_scales, alpha=0.5, scale_max=2.0))(
      {"audio": 0.65, "visual": 0.35})
  assert _floats(got) == {"audio": 1.0, "visual": 1.5}


def test_equal_scores_give_one():
  assert _floats(boost_scales({"audio": 0.4, "visual": 0.4}, 0.5, 2.0)) == {"audio": 1.0,
                                                                            "visual": 1.0}


def test_three_modalities_and_the_cap():
  scores = {"audio": 0.8, "text": 0.5, "visual": 0.2}
  got = _floats(boost_scales(scores, 0.5, 2.0))
  assert got == pytest.approx({"audio": 1.0, "text": 1.25, "visual": 1.5})
  capped = _floats(boost_scales(scores, 3.0, 2.0))
  assert capped == pytest.approx({"audio": 1.0, "text": 2.0, "visual": 2.0})


def test_ema_over_refreshes_matches_a_hand_loop_and_scales_every_leaf():
  tx = boost(alpha=0.5, scale_max=2.0, ema_alpha=0.3)
  grads = {"encoders": {"audio": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
                        "visual": {"w": jnp.full((3,), 2.0)}},
           "fusion": {"k": jnp.ones(3)}}
  state = tx.init(grads)
  update = jax.jit(tx.update)
  # (probe scores, refresh count) seen at each step: refreshes at steps 0, 3, 6.
  script = [({"audio": 0.65, "visual": 0.35}, 1), ({"audio": 0.1, "visual": 0.9}, 1),
            ({"audio": 0.1, "visual": 0.9}, 1), ({"audio": 0.6, "visual": 0.2}, 2),
            ({"audio": 0.6, "visual": 0.2}, 2), ({"audio": 0.6, "visual": 0.2}, 2),
            ({"audio": 0.3, "visual": 0.3}, 3)]
  hand = {"audio": 1.0, "visual": 1.0}
  seen = 0
  for scores, refreshes in script:
    out, state = update(grads, state, None,
                        probe_scores={k: jnp.float32(v) for k, v in scores.items()},
                        probe_refreshes=jnp.int32(refreshes))
    if refreshes > seen:  # hand loop of SPEC §4.4
      lo, hi = min(scores.values()), max(scores.values())
      gap = hi - lo
      for m, s in scores.items():
        computed = 1.0 if gap < 1e-8 else min(1 + 0.5 * (1 - (s - lo) / gap), 2.0)
        hand[m] = 0.3 * computed + 0.7 * hand[m]
      seen = refreshes
    assert _floats(state.scales) == pytest.approx(hand, rel=1e-6)
    np.testing.assert_allclose(out["encoders"]["audio"]["w"], hand["audio"] * np.ones((2, 2)),
                               rtol=1e-6)
    np.testing.assert_allclose(out["encoders"]["audio"]["b"], hand["audio"] * np.ones(2), rtol=1e-6)
    np.testing.assert_allclose(out["encoders"]["visual"]["w"], hand["visual"] * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(out["fusion"]["k"], grads["fusion"]["k"])


def test_seed_code_noise_std_is_of_the_scaled_gradient():
  """The seeds' code scales .grad in place, then reads its std: σ·std(s·g)."""
  g4 = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 16, 32))
  grads = {"encoders": {"audio": {"conv": g4}, "visual": {"conv": g4}}}
  tx = boost(alpha=0.5, scale_max=2.0, ema_alpha=1.0, noise_sigma=0.1, seed=1)
  scores = {"audio": jnp.float32(0.9), "visual": jnp.float32(0.1)}  # visual boosted
  out, state = jax.jit(tx.update)(grads, tx.init(grads), None, probe_scores=scores,
                                  probe_refreshes=jnp.int32(1))
  s = float(state.scales["visual"])
  assert s > 1.2
  noise = np.asarray(out["encoders"]["visual"]["conv"] - s * g4)
  assert noise.std() == pytest.approx(0.1 * s * float(jnp.std(g4, ddof=1)), rel=0.05)


def test_seed_code_noise_only_on_conv_gradients_with_sigma_std():
  g4 = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 16, 32))
  grads = {"encoders": {"audio": {"conv": g4, "bias": jnp.ones(4)}, "visual": {"conv": g4}}}
  tx = boost(alpha=0.5, noise_sigma=0.1, seed=1)
  scores = {"audio": jnp.float32(0.5), "visual": jnp.float32(0.5)}  # scales stay 1
  out, _ = jax.jit(tx.update)(grads, tx.init(grads), None, probe_scores=scores,
                              probe_refreshes=jnp.int32(1))
  noise = np.asarray(out["encoders"]["audio"]["conv"] - g4)
  assert noise.std() == pytest.approx(0.1 * float(jnp.std(g4, ddof=1)), rel=0.05)
  np.testing.assert_array_equal(out["encoders"]["audio"]["bias"], jnp.ones(4))
