"""The unimodal loss terms gated by the schedule's update flags (SPEC §2).

Every variant's steps are pinned by tests/test_golden_variants.py; stacks and
the chain order of SPEC §4.5 by tests/test_method_stacks.py."""

import pytest

from asgml_jax.config_schema import effective_config, modality_config, validate
from configs.variants import apply_variant
from conftest import jitted_step, tiny_config


def _setup(variant):
  """Tiny MLP encoders: the composition does not depend on the encoder, and they compile fast."""
  config = tiny_config("/tmp/unused")
  config.modalities.audio = modality_config("mlp", (16,), mlp_hidden_dim=16)
  config.modalities.visual = modality_config("mlp", (12,), mlp_hidden_dim=16)
  config.method.frequency.throttled = "audio"
  config.method.staleness.modalities = "audio"
  config = effective_config(validate(apply_variant(config, variant)))
  return (config,) + jitted_step(config, lr_fn=lambda s: 0.05)


def test_unimodal_loss_of_a_skipped_modality_is_gated_off():
  config, state, step, batch = _setup("frequency")  # audio skips odd steps
  gamma = config.loss.unimodal_weight
  for t in range(3):
    state, m = step(state, batch)
    expected = float(m["fused_loss"]) + gamma * float(m["unimodal_loss_visual"])
    if t % 2 == 0:
      expected += gamma * float(m["unimodal_loss_audio"])
    assert float(m["loss"]) == pytest.approx(expected, rel=1e-5), t
    assert float(m["sched/update_audio"]) == float(t % 2 == 0)
