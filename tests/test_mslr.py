"""MSLR (asgml_jax/methods/mslr.py): each encoder at its own learning rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgml_jax.config_schema import ConfigError, effective_config, validate
from asgml_jax.methods.mslr import encoder_learning_rates
from conftest import jitted_step, tiny_mlp_config


def test_factors_scale_only_their_encoders_updates():
  updates = {"encoders": {"audio": {"w": jnp.array([1.0, 2.0])}, "visual": {"w": jnp.array([3.0])}},
             "fusion": {"b": jnp.array([4.0])}}
  tx = encoder_learning_rates({"audio": 0.5, "visual": 2.0})
  out, _ = tx.update(updates, tx.init(updates))
  np.testing.assert_array_equal(out["encoders"]["audio"]["w"], [0.5, 1.0])
  np.testing.assert_array_equal(out["encoders"]["visual"]["w"], [6.0])
  np.testing.assert_array_equal(out["fusion"]["b"], [4.0])


def test_a_step_moves_each_encoder_by_its_own_learning_rate():
  """From one state and batch: audio's parameters move by exactly 0.5 × what joint
  training moves them (SGD with momentum and weight decay, as a PyTorch parameter
  group with lr/2); visual and the fusion layer move the same. The moves are read
  as θ_new − θ_old of float32 parameters, hence exact up to a few ulp of θ."""
  config = tiny_mlp_config("/tmp/unused")
  config.modalities.audio.dropout = config.modalities.visual.dropout = 0.0
  moves = {}
  for name in ("baseline", "mslr"):
    config.method.name = name
    config.method.mslr.factors = "audio=0.5"
    state, step, batch = jitted_step(effective_config(validate(config)))
    new, metrics = step(state, batch)
    moves[name] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params,
                               state.params)
  assert float(metrics["mslr/lr_factor_audio"]) == 0.5
  assert float(metrics["mslr/lr_factor_visual"]) == 1.0
  for part, factor in (("audio", 0.5), ("visual", 1.0)):
    for got, joint in zip(jax.tree.leaves(moves["mslr"]["encoders"][part]),
                          jax.tree.leaves(moves["baseline"]["encoders"][part])):
      np.testing.assert_allclose(got, factor * joint, rtol=1e-5, atol=1e-7)
      assert np.abs(joint).max() > 1e-5  # the check is not vacuous
  for got, joint in zip(jax.tree.leaves(moves["mslr"]["fusion"]),
                        jax.tree.leaves(moves["baseline"]["fusion"])):
    np.testing.assert_array_equal(got, joint)


@pytest.mark.parametrize("factors, message", [("audio=0", "must be > 0"),
                                              ("depth=2", "not <modality>=<number>"),
                                              ("audio=fast", "is not a number")])
def test_bad_factors_are_refused_in_one_line(factors, message):
  config = tiny_mlp_config("/tmp/unused")
  config.method.mslr.factors = factors
  with pytest.raises(ConfigError, match=message):
    validate(config)


@pytest.mark.parametrize("factors", ["", "audio=1.0", "audio=1,visual=1"])
def test_mslr_with_every_encoder_at_the_base_rate_is_refused(factors):
  """That run is the baseline under another name (the variant's default
  factors="" used to be exactly that)."""
  config = tiny_mlp_config("/tmp/unused")
  config.method.name = "mslr"
  config.method.mslr.factors = factors
  with pytest.raises(ConfigError, match=r"method\.mslr\.factors: every encoder at the base "
                     r"learning rate is the baseline; name the encoders"):
    validate(config)
