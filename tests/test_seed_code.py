"""One test per row of SPEC §10: each seeds'-code option changes exactly what the
table says, and `method.protocol=seed_code` turns all of them on."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgml_jax.config_schema import SEED_CODE_PRESET, effective_config, validate
from asgml_jax.models import EncoderSpec, MultimodalClassifier
from asgml_jax.probes import ProbeConfig, init_probe_state, refresh
from asgml_jax.transforms.boost import boost
from asgml_jax.transforms.ogm_ge import ogm_ge
from asgml_jax.transforms.schedule import AdaptiveConfig, modality_schedule
from configs.default import get_config
from test_schedule import NAMES, _run


def test_frequency_soft_mask_scales_and_lets_momentum_and_decay_act():
  lr, mu = 0.1, 0.9
  inner = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(lr, momentum=mu))
  tx = modality_schedule(inner, "frequency", frequency_ratio=2, throttled=("audio",),
                         soft_mask_scale=0.1)
  history = _run(tx, 2)
  (_, s0), _, _, _ = history[0]
  (p1, s1), updates, p2, s2 = history[1]  # step 1 is a throttled step
  g = 2.0 * 0.1  # g(1) = 2, scaled by 0.1
  w = np.asarray(p1["encoders"]["audio"]["w"])
  buf0 = 1.0 + 0.01 * np.array([1.0, 2.0])  # step 0: g(0) = 1 plus decay of the initial w
  expected = w - lr * (mu * buf0 + g + 0.01 * w)
  np.testing.assert_allclose(p2["encoders"]["audio"]["w"], expected, rtol=1e-6)
  assert float(s2.flags["audio"]) == 0.0  # logged as a skip all the same


def reference_seed_staleness(gradients, tau):
  """The seeds' staleness (SPEC §10, corrections): a list of gradients; once it
  holds τ entries, apply its τ-th newest scaled by 1/(1 + 0.1·τ), else the fresh
  gradient unscaled."""
  kept, applied = [], []
  for g in gradients:
    kept.append(g)
    applied.append(kept[-tau] / (1 + 0.1 * tau) if len(kept) >= tau else g)
  return applied


@pytest.mark.parametrize("tau", [1, 2, 3, 5])
def test_staleness_seed_code_equals_the_seeds_list_rule(tau):
  tx = modality_schedule(optax.sgd(1.0), "staleness", staleness={"audio": tau},
                         staleness_seed_code=True)
  history = _run(tx, 9)
  want = reference_seed_staleness([t + 1.0 for t in range(9)], tau)   # _run's g(t) = t + 1
  got = [-float(h[1]["encoders"]["audio"]["w"][0]) for h in history]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if tau > 1:
    assert history[-1][3].buffers["audio"]["w"].shape[0] == tau - 1


def _adaptive_taus(cfg, steps=4, refresh_at=()):
  tx = modality_schedule(optax.sgd(1.0), "adaptive", adaptive=cfg)
  def extra(t):
    return {"encoder_grad_norms": {"audio": jnp.float32(9.0 + t), "visual": jnp.float32(1.0)},
            "unimodal_losses": {"audio": jnp.float32(1.0 - 0.1 * t), "visual": jnp.float32(1.0)},
            "probe_scores": {m: jnp.float32(0.5) for m in NAMES},
            "probe_refreshes": jnp.int32(sum(1 for r in refresh_at if r <= t))}
  return _run(tx, steps, extra)


def test_compensation_divides_in_the_seed_code():
  base = dict(tau_base=2.0, kappa=10.0)
  mul = _adaptive_taus(AdaptiveConfig(**base))
  div = _adaptive_taus(AdaptiveConfig(**base, compensation="divide"))
  tau = float(mul[0][3].tau["audio"])
  np.testing.assert_allclose(-mul[0][1]["encoders"]["audio"]["w"], 1.0 * (1 + 0.1 * tau), rtol=1e-6)
  np.testing.assert_allclose(-div[0][1]["encoders"]["audio"]["w"], 1.0 / (1 + 0.1 * tau), rtol=1e-6)


def test_seed_code_adaptive_soft_masks_off_steps_without_compensation():
  """The seeds' adaptive frequency path: on-steps apply g, off-steps g × 0.1, and
  SGD momentum still acts on the off-steps (the inner state advances)."""
  cfg = AdaptiveConfig(tau_base=8.0, kappa=3.0, kappa_mode="absolute", compensation="none",
                       off_steps="soft_mask", soft_mask_scale=0.1)
  tx = modality_schedule(optax.sgd(1.0, momentum=0.5), "adaptive", adaptive=cfg)
  def extra(t):
    return {"encoder_grad_norms": {"audio": jnp.float32(9.0), "visual": jnp.float32(1.0)},
            "unimodal_losses": {m: jnp.float32(1.0) for m in NAMES},
            "probe_scores": {m: jnp.float32(0.5) for m in NAMES},
            "probe_refreshes": jnp.int32(0)}
  history = _run(tx, 4, extra)
  period = round(float(history[0][3].tau["audio"]))
  assert period == 3
  buf = 0.0
  for t, (_, updates, _, state) in enumerate(history):
    g = (t + 1.0) * (1.0 if t % period == 0 else 0.1)
    buf = 0.5 * buf + g
    assert -float(updates["encoders"]["audio"]["w"][0]) == pytest.approx(buf, rel=1e-6), t
    assert float(state.flags["audio"]) == float(t % period == 0)


def test_kappa_absolute_caps_tau_at_kappa():
  rel = _adaptive_taus(AdaptiveConfig(tau_base=8.0, kappa=3.0))
  ab = _adaptive_taus(AdaptiveConfig(tau_base=8.0, kappa=3.0, kappa_mode="absolute"))
  t_rel = [float(rel[0][3].tau[m]) for m in NAMES]
  t_abs = [float(ab[0][3].tau[m]) for m in NAMES]
  assert t_rel[0] == pytest.approx(min(8.0, 3.0 * t_rel[1])) and t_rel[0] > 3.0
  assert t_abs[0] == pytest.approx(3.0)


def test_seed_code_signals_ema_norms_abs_drop_and_tau_only_at_refreshes():
  # window 2: the seeds' |ΔL| spans window − 1 = 1 step
  cfg = AdaptiveConfig(tau_base=2.0, kappa=10.0, window=2, signals="seed_code")
  history = _adaptive_taus(cfg, steps=4, refresh_at=(0, 2))
  taus = [float(h[3].tau["audio"]) for h in history]
  assert taus[1] == taus[0] and taus[3] == taus[2]  # frozen between refreshes
  # Step 2 (a refresh): G from the EMA of norms, D from |ΔL| over the window.
  ema = 9.0
  for t in (1, 2):
    ema = 0.9 * ema + 0.1 * (9.0 + t)
  norms = np.array([ema, 1.0])
  drop = np.abs(np.array([1.0 - 0.1 * 1, 1.0]) - np.array([1.0 - 0.1 * 2, 1.0]))
  g = norms / norms.mean()
  d = drop / drop.mean()
  expected = min(max(2.0 * (0.5 * g[0] + 0.5 * d[0]), 1.0), 8.0)
  assert taus[2] == pytest.approx(expected, rel=1e-5)


def test_probe_score_ema_starts_at_zero_in_the_seed_code():
  cfg = ProbeConfig(names=("a",), num_classes=2, train_steps=5, learning_rate=0.1, ema_init="zero")
  state = init_probe_state(cfg, jax.random.PRNGKey(0), 2)
  new = refresh(cfg, state, {"a": jnp.array([[1.0, 0], [0, 1.0]] * 8)}, jnp.array([0, 1] * 8))
  assert float(new.score["a"]) == pytest.approx(0.1 * float(new.accuracy["a"]))


def test_ogm_scores_from_separate_unimodal_heads():
  specs = (EncoderSpec("audio", "mlp"), EncoderSpec("visual", "mlp"))
  inputs = {"audio": jnp.ones((2, 3)), "visual": jnp.ones((2, 3))}
  model = MultimodalClassifier(specs, 4, feature_dim=5, unimodal_heads="separate")
  variables = model.init(jax.random.PRNGKey(0), inputs)
  assert set(variables["params"]["heads"]) == {"unimodal_audio", "unimodal_visual"}
  out = model.apply(variables, inputs)
  head = variables["params"]["heads"]["unimodal_audio"]
  np.testing.assert_allclose(out["unimodal_logits"]["audio"],
                             out["features"]["audio"] @ head["kernel"] + head["bias"], rtol=1e-5)


def test_ogm_leaves_and_noise_of_the_seed_code():
  g2, g1 = jnp.ones((4, 4)), jnp.ones(4)
  grads = {"encoders": {"audio": {"k": g2, "b": g1}, "visual": {"k": g2, "b": g1}}}
  tx = ogm_ge(0.8, steps_per_epoch=10, leaves="min_2d", noise_on="dominant")
  scores = {"audio": jnp.float32(30.0), "visual": jnp.float32(20.0)}
  out, _ = tx.update(grads, tx.init(grads), None, ogm_scores=scores, step=jnp.int32(0))
  np.testing.assert_array_equal(out["encoders"]["audio"]["b"], g1)       # 1-D untouched
  np.testing.assert_array_equal(out["encoders"]["visual"]["k"], g2)      # weak: no noise
  assert not np.allclose(out["encoders"]["audio"]["k"], g2)              # dominant: scaled


def test_boost_noise_and_ema_alpha_of_the_seed_code():
  g = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 8))
  grads = {"encoders": {"audio": {"k": g}, "visual": {"k": g}}}
  scores = {"audio": jnp.float32(0.5), "visual": jnp.float32(0.5)}
  plain = boost(noise_sigma=0.0)
  noisy = boost(noise_sigma=0.1)
  out_plain, _ = plain.update(grads, plain.init(grads), None, probe_scores=scores,
                              probe_refreshes=jnp.int32(1))
  out_noisy, _ = noisy.update(grads, noisy.init(grads), None, probe_scores=scores,
                              probe_refreshes=jnp.int32(1))
  np.testing.assert_array_equal(out_plain["encoders"]["audio"]["k"], g)
  assert not np.allclose(out_noisy["encoders"]["audio"]["k"], g)


def test_seed_code_preset_turns_every_row_on_and_only_with_the_flag():
  plain = effective_config(validate(get_config("boost_ogm")))
  seeded = effective_config(validate(get_config("boost_ogm_seedcode")))
  assert seeded.method.name == "boost_ogm" and seeded.method.protocol == "seed_code"
  def get(config, key):
    for part in key.split("."):
      config = config[part]
    return config
  for key, value in SEED_CODE_PRESET:
    assert get(seeded, key) == value, key
  differing = [k for k, v in SEED_CODE_PRESET if get(plain, k) != v]
  assert len(differing) >= 9  # the design defaults differ from the seeds' code
  for variant in ("frequency_seedcode", "staleness_seedcode"):
    assert effective_config(validate(get_config(variant))).method.protocol == "seed_code"


def test_the_older_seed_code_switch_still_means_protocol_seed_code():
  from asgml_jax.config_schema import ConfigError, protocol_of
  config = get_config("boost_ogm")
  config.method.seed_code = True
  seeded = effective_config(validate(config))
  assert protocol_of(seeded) == "seed_code"
  for key, value in SEED_CODE_PRESET:
    node = seeded
    for part in key.split("."):
      node = node[part]
    assert node == value, key
  config.method.protocol = "reference"
  with pytest.raises(ConfigError, match="older name of method.protocol=seed_code"):
    validate(config)


def test_seed_code_ogm_ratio_divides_by_the_mean_of_all_for_three_modalities():
  """The seeds' OGM-GE for N ≥ 3: ratio_m = s_m / mean_j s_j (all j); for N = 2
  both rules are the reference's s_m / s_other."""
  from asgml_jax.transforms.ogm_ge import score_ratios
  three = {"a": jnp.float32(6.0), "t": jnp.float32(3.0), "v": jnp.float32(3.0)}
  r = score_ratios(three, "all")
  assert [float(r[m]) for m in "atv"] == pytest.approx([1.5, 0.75, 0.75])
  r = score_ratios(three, "others")
  assert [float(r[m]) for m in "atv"] == pytest.approx([2.0, 3.0 / 4.5, 3.0 / 4.5])
  two = {"a": jnp.float32(6.0), "v": jnp.float32(3.0)}
  assert ({m: float(x) for m, x in score_ratios(two, "all").items()}
          == {m: float(x) for m, x in score_ratios(two, "others").items()})


def test_seed_code_model_has_a_512_hidden_layer_without_relu():
  """concat -> Linear(512) -> Linear(C) with nothing between (the seeds' model)."""
  from asgml_jax.models import model_from_config
  config = effective_config(validate(get_config("boost_ogm_seedcode")))
  assert config.model.fusion_dim == 512 and config.model.fusion_activation == "none"
  model = model_from_config(config, 6)
  inputs = {"audio": jnp.ones((2, 32, 32, 1)), "visual": jnp.ones((2, 24, 24, 3))}
  variables = model.init(jax.random.PRNGKey(0), inputs)
  out = model.apply(variables, inputs)
  fused = jnp.concatenate([out["features"]["audio"], out["features"]["visual"]], -1)
  p = variables["params"]
  hidden = fused @ p["fusion"]["kernel"] + p["fusion"]["bias"]
  assert float(jnp.min(hidden)) < 0          # a ReLU would have changed these
  want = hidden @ p["heads"]["classifier"]["kernel"] + p["heads"]["classifier"]["bias"]
  np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-5)
