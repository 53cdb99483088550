"""Every method variant composes and trains; the chain order of SPEC §4.5; the
unimodal loss terms gated by the schedule's update flags (SPEC §2)."""

import numpy as np
import pytest

from asgml_jax.config_schema import effective_config, modality_config, validate
from asgml_jax.transforms.boost import BoostState
from asgml_jax.transforms.ogm_ge import OGMGEState
from asgml_jax.transforms.schedule import ModalityScheduleState
from configs.variants import VARIANTS, apply_variant
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


def _kinds(opt_state):
  return [type(s) for s in opt_state if isinstance(s, (OGMGEState, BoostState,
                                                       ModalityScheduleState))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_steps_and_logs_its_signals(variant):
  config, state, step, batch = _setup(variant)
  for _ in range(3):
    state, metrics = step(state, batch)
  assert int(state.health[0]) == -1 and np.isfinite(float(metrics["loss"]))
  assert {"sched/tau_audio", "sched/update_audio", "sched/update_ratio_visual",
          "grad_norm_after_audio", "probe/acc_visual", "probe/utilization_gap"} <= set(metrics)
  name = config.method.name
  assert ("ogm/coeff_audio" in metrics) == (name in ("ogm", "ogm_ge", "boost_ogm"))
  assert ("boost/scale_visual" in metrics) == (name in ("boost", "boost_ogm"))
  expected = ([OGMGEState] if "ogm" in name else []) + (
      [BoostState] if "boost" in name else []) + [ModalityScheduleState]
  assert _kinds(state.opt_state) == expected  # SPEC §4.5 order


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
