"""Methods against NumPy transcriptions of their reference repositories' code.

Each `reference_*` function below is written from the reference file named in
its docstring (the rule as that code executes it, in float64), independent of
the project's implementation; each test feeds both the same random inputs and
asserts agreement to 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# ------------------------------------------------------------------ CGGM


def reference_cggm_gradients(prev_acc, acc, encoder_grads, other_grads, rho, clip):
  """zrguo/CGGM src/msatrain.py, `train`: diff = acc2 − acc1; diff_sum = Σ diff +
  1e-8; coeff_i = (diff_sum − diff_i)/diff_sum; encoder i's grads ×= coeff_i·ρ;
  then torch.nn.utils.clip_grad_norm_(model.parameters(), clip):
  total = ‖all grads‖₂, coef = clip/(total + 1e-6), grads ×= coef if coef < 1."""
  diff = [a - p for a, p in zip(acc, prev_acc)]
  diff_sum = sum(diff) + 1e-8
  coeff = [(diff_sum - d) / diff_sum for d in diff]
  scaled = [[g * c * rho for g in grads] for grads, c in zip(encoder_grads, coeff)]
  every = [g for grads in scaled for g in grads] + list(other_grads)
  total = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in every))
  coef = clip / (total + 1e-6)
  if coef < 1:
    scaled = [[g * coef for g in grads] for grads in scaled]
    other_grads = [g * coef for g in other_grads]
  return scaled, list(other_grads), coeff


def _cggm_case(rng, prev_acc, batch=16, feature_dim=3, classes=4, scale=1.0):
  """Random features, classifiers and gradients; the classifiers' batch accuracy
  is what the transformation measures (before its Adam step, as the reference)."""
  names = ("audio", "text", "visual")
  features = {m: rng.normal(size=(batch, feature_dim)).astype(np.float32) for m in names}
  labels = rng.integers(0, classes, size=batch)
  classifiers = {m: {"kernel": rng.normal(size=(feature_dim, classes)).astype(np.float32),
                     "bias": rng.normal(size=(classes,)).astype(np.float32)} for m in names}
  acc = [float(np.mean(np.argmax(features[m] @ classifiers[m]["kernel"]
                                 + classifiers[m]["bias"], -1) == labels)) for m in names]
  grads = {"encoders": {m: {"w": (scale * rng.normal(size=(5, 2))).astype(np.float32),
                            "kernel": (scale * rng.normal(size=(3,))).astype(np.float32)}
                        for m in names},
           "fusion": {"kernel": (scale * rng.normal(size=(feature_dim * 3, classes))
                                 ).astype(np.float32)}}
  return names, features, labels, classifiers, acc, grads


@pytest.mark.parametrize("case", range(12))
def test_cggm_scaling_and_clip_equal_the_reference(case):
  """Cases 0-3: previous accuracies equal to this batch's but one (S of either
  sign); 4-7: exactly cancelling gains (S = 1e-8, huge coefficients, then the
  clip); 8-11: random previous accuracies, small gradients (clip inactive)."""
  from asgml_jax.transforms.cggm import cggm
  rng = np.random.default_rng(case)
  names, features, labels, classifiers, acc, grads = _cggm_case(
      rng, None, scale=1e-3 if case >= 8 else 1.0)
  if case < 4:
    prev = [a + rng.choice([-2, -1, 1, 2]) / 16 if i == case % 3 else a
            for i, a in enumerate(acc)]
  elif case < 8:
    shift = rng.choice([1, 2]) / 16
    prev = [acc[0] - shift, acc[1] + shift, acc[2]]  # Σ Δ = 0
  else:
    prev = list(rng.integers(0, 17, size=3) / 16)
  tx = optax.chain(cggm(rho=1.3, cls_lr=5e-4, feature_dim=3), optax.clip_by_global_norm(0.8))
  params = jax.tree.map(jnp.zeros_like, grads)
  state = tx.init(params)
  cggm_state = state[0]._replace(
      classifiers=jax.tree.map(jnp.asarray, classifiers),
      previous_accuracy={m: jnp.float32(p) for m, p in zip(names, prev)})
  state = (cggm_state,) + tuple(state[1:])
  out, new_state = tx.update(jax.tree.map(jnp.asarray, grads), state, params,
                             features={m: jnp.asarray(f) for m, f in features.items()},
                             labels=jnp.asarray(labels))
  ref_enc, ref_other, coeff = reference_cggm_gradients(
      prev, acc, [[grads["encoders"][m]["kernel"], grads["encoders"][m]["w"]] for m in names],
      [grads["fusion"]["kernel"]], rho=1.3, clip=0.8)
  np.testing.assert_allclose([float(new_state[0].cggm_balance[m]) for m in names], coeff,
                             rtol=1e-5)
  for i, m in enumerate(names):
    for got, want in zip((out["encoders"][m]["kernel"], out["encoders"][m]["w"]), ref_enc[i]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(out["fusion"]["kernel"], ref_other[0], rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ G-Blending


def reference_blending_weights(train_after, holdout_after):
  """pliang279/MultiBench training_structures/gradient_blend.py (delta=False):
  per task, oi = lv − lt (after the copy's training), oi = 1e-4 if oi < 0,
  g = lv, w = |g/(oi·oi)|; `gb_estimate` returns w/Σw."""
  weights = []
  for lt, lv in zip(train_after, holdout_after):
    oi = lv - lt
    if oi < 0:
      oi = 0.0001
    weights.append(abs(lv / (oi * oi)))
  z = sum(weights)
  return [w / z for w in weights]


@pytest.mark.parametrize("seed", range(20))
def test_gblend_weights_equal_the_reference(seed):
  """Random train/holdout losses, the holdout often below the train loss (O < 0)."""
  from asgml_jax.transforms.gblend import blending_weights
  rng = np.random.default_rng(seed)
  train = rng.uniform(0.2, 2.0, size=3)
  holdout = train + rng.uniform(-0.3, 0.5, size=3)
  np.testing.assert_allclose(blending_weights(train, holdout),
                             reference_blending_weights(train, holdout), rtol=1e-9)


def test_gblend_negative_overfitting_takes_almost_all_the_weight():
  """O < 0 is 1e-4 (not |O|): that task's weight ∝ L^V/1e-8 dominates."""
  from asgml_jax.transforms.gblend import blending_weights
  w = blending_weights([1.0, 1.0, 1.0], [1.2, 0.9, 1.3])
  assert w[1] > 0.999


# ------------------------------------------------------------------ InfoReg


def reference_inforeg_betas(score_a, score_v, k):
  """GeWu-Lab/InfoReg_CVPR2025 main.py, `train_epoch`: k from the audio trace list
  gates both; audio more confident: β_a = 0.95·exp(tanh(s_a − s_v)); visual
  more confident: β_v = 0.1·exp(tanh(s_v − s_a)); k ≤ 0.05: neither."""
  if score_a > score_v and k > 0.05:
    return 0.95 * np.exp(np.tanh(score_a - score_v)), 0.0
  if score_a < score_v and k > 0.05:
    return 0.0, 0.1 * np.exp(np.tanh(score_v - score_a))
  return 0.0, 0.0


def reference_window(trace_list):
  """k = (mean(list[-10:]) − mean(list[-11:-1])) / mean(list[-10:])."""
  tr1 = sum(trace_list[-10:]) / 10
  tr2 = sum(trace_list[-11:-1]) / 10
  return (tr1 - tr2) / tr1


@pytest.mark.parametrize("seed", range(16))
def test_inforeg_variant_gates_both_modalities_by_the_audio_window(seed):
  """The `inforeg` variant's transformation (scales 0.95 / 0.1, the audio window
  for both) on random scores and random trace histories of both encoders."""
  from asgml_jax.transforms.inforeg import HISTORY, inforeg
  from configs.variants import apply_variant
  from conftest import tiny_mlp_config
  config = apply_variant(tiny_mlp_config("/tmp/unused"), "inforeg")
  assert config.method.inforeg.window_modality == "audio"
  rng = np.random.default_rng(seed)
  traces = {m: list(rng.uniform(0.1, 1.0, size=HISTORY) * rng.choice([0.5, 1.0, 3.0], HISTORY))
            for m in ("audio", "visual")}
  scores = {m: float(rng.uniform(0, 32)) for m in ("audio", "visual")}
  tx = inforeg(4, {"audio": 0.95, "visual": 0.1}, config.method.inforeg.threshold,
               config.method.inforeg.window_modality)
  params = {"encoders": {m: {"kernel": jnp.ones((2, 2))} for m in ("audio", "visual")}}
  state = tx.init(params)._replace(
      epoch=jnp.int32(12), trace_history={m: jnp.asarray(t, jnp.float32)
                                          for m, t in traces.items()})
  _, new = tx.update(jax.tree.map(jnp.zeros_like, params), state, params, step=jnp.int32(48),
                     ogm_scores={m: jnp.float32(s) for m, s in scores.items()})
  beta_a, beta_v = reference_inforeg_betas(scores["audio"], scores["visual"],
                                           reference_window(traces["audio"]))
  np.testing.assert_allclose([float(new.inforeg_beta["audio"]), float(new.inforeg_beta["visual"])],
                             [beta_a, beta_v], rtol=1e-5)


# ------------------------------------------------------------------ ARL


def _softmax_ce(logits, labels):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return float(-np.mean(logp[np.arange(len(labels)), labels]))


def test_arl_loss_uses_the_fusion_layer_on_zeroed_other_features():
  """shicaiwei123/ICCV2025-ARL main_arl_variance.py `train_epoch`: loss = CE(out) +
  γ_eff·(CE(out_a) + CE(out_v)), out_a = fc(cat(a, 0)) = a·W_a + b (the full
  bias), γ_eff = 1 up to `start`."""
  from asgml_jax.models import model_from_config
  from configs.variants import apply_variant
  from conftest import jitted_step, tiny_mlp_config
  config = apply_variant(tiny_mlp_config("/tmp/unused"), "arl")
  config.modalities.audio.dropout = config.modalities.visual.dropout = 0.0
  state, step, batch = jitted_step(config)
  _, metrics = step(state, batch)
  model = model_from_config(config, 4)
  out = model.apply({"params": state.params}, {m: batch[m] for m in ("audio", "visual")},
                    train=True)
  kernel = np.asarray(state.params["fusion"]["kernel"], np.float64)
  bias = np.asarray(state.params["fusion"]["bias"], np.float64)
  labels = np.asarray(batch["label"])
  a = np.asarray(out["features"]["audio"], np.float64)
  v = np.asarray(out["features"]["visual"], np.float64)
  d = a.shape[1]
  fused = np.concatenate([a, v], 1) @ kernel + bias
  out_a = np.concatenate([a, np.zeros_like(v)], 1) @ kernel + bias
  out_v = np.concatenate([np.zeros_like(a), v], 1) @ kernel + bias
  np.testing.assert_allclose(out_a, a @ kernel[:d] + bias, rtol=1e-9)
  want = _softmax_ce(fused, labels) + 1.0 * (_softmax_ce(out_a, labels)
                                             + _softmax_ce(out_v, labels))
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  assert float(metrics["unimodal_loss_audio"]) == pytest.approx(_softmax_ce(out_a, labels),
                                                                rel=1e-5)


# ------------------------------------------------------------------ AGM


def reference_agm_clip(fusion_weight_grad, all_grads, max_norm=1.0):
  """Lingy12/AGM_ICCV2023 run/CREMAD_main.py `train`: if max(fc_out.weight.grad) > 1
  or min(...) < −1: clip_grad_norm_(model.parameters(), 1.0), i.e. coef =
  1/(total + 1e-6), applied when < 1."""
  if fusion_weight_grad.max() > 1 or fusion_weight_grad.min() < -1:
    total = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in all_grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
      return [g * coef for g in all_grads]
  return list(all_grads)


@pytest.mark.parametrize("seed", range(12))
def test_agm_conditional_clip_equals_the_reference(seed):
  from asgml_jax.transforms.agm import conditional_clip
  rng = np.random.default_rng(seed)
  scale = [0.05, 0.3, 2.0][seed % 3]
  grads = {"encoders": {"audio": {"kernel": rng.normal(size=(6, 4)) * scale},
                        "visual": {"kernel": rng.normal(size=(5, 4)) * scale}},
           "fusion": {"kernel": rng.normal(size=(8, 3)) * scale, "bias": rng.normal(size=3)}}
  grads = jax.tree.map(lambda x: np.asarray(x, np.float32), grads)
  tx = conditional_clip(1.0, 1.0)
  out, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(grads))
  leaves, treedef = jax.tree.flatten(grads)
  want = jax.tree.unflatten(treedef, reference_agm_clip(grads["fusion"]["kernel"], leaves))
  for got, ref in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_agm_keeps_the_last_coefficient_after_its_window():
  """The reference's backward hooks keep the last `update_scale` once the window
  has closed (and 1.0 before the first)."""
  from asgml_jax.transforms.agm import agm_coefficients
  scores, running = {"a": 0.5, "v": 1.0}, {"a": 1.0, "v": 1.0}
  last = {"a": jnp.float32(1.7), "v": jnp.float32(0.4)}
  c = agm_coefficients(scores, running, 2.0, False, previous=last)
  assert [float(c["a"]), float(c["v"])] == pytest.approx([1.7, 0.4])
  c = agm_coefficients(scores, running, 2.0, True, previous=last)
  ratio_a, opt_a = np.exp(1.0 - 0.5), np.exp(0.0)
  assert float(c["a"]) == pytest.approx(np.exp(2.0 * min(opt_a - ratio_a, 10)), rel=1e-5)


def test_agm_zero_input_passes_run_in_inference_mode():
  """GradMod.forward: f(a, v) in training mode, f(a, 0) and f(0, v) after
  `self.net.eval()`; loss CE(½(f(a,v) − f(0,v) + f(a,0)) + ½(f(a,v) − f(a,0) +
  f(0,v))). With BatchNorm the inference-mode passes use the running statistics."""
  from asgml_jax.models import model_from_config
  from configs.variants import apply_variant
  from conftest import jitted_step, tiny_config
  config = apply_variant(tiny_config("/tmp/unused"), "agm")   # small CNNs with BatchNorm
  state, step, batch = jitted_step(config)
  # running statistics unlike the batch's, so the two modes differ
  state = state.replace(batch_stats=jax.tree.map(lambda x: x + 0.3, state.batch_stats))
  _, metrics = step(state, batch)
  model = model_from_config(config, 4)
  names = ("audio", "visual")
  inputs = {m: batch[m] for m in names}
  full, _ = model.apply(state.variables(), inputs, train=True, mutable=["batch_stats"])
  no_v = model.apply(state.variables(), {**inputs, "visual": jnp.zeros_like(inputs["visual"])},
                     train=False)
  no_a = model.apply(state.variables(), {**inputs, "audio": jnp.zeros_like(inputs["audio"])},
                     train=False)
  f, fa0, f0v = (np.asarray(x["logits"], np.float64) for x in (full, no_v, no_a))
  m_a = 0.5 * (f - f0v + fa0)
  m_v = 0.5 * (f - fa0 + f0v)
  want = _softmax_ce(m_a + m_v, np.asarray(batch["label"]))
  assert float(metrics["fused_loss"]) == pytest.approx(want, rel=1e-5)
  score = lambda z: float(np.mean(-np.log(np.maximum(
      np.exp(z - z.max(-1, keepdims=True))[np.arange(len(z)), np.asarray(batch["label"])]
      / np.exp(z - z.max(-1, keepdims=True)).sum(-1), 1e-8))))
  assert float(metrics["agm/score_audio"]) == pytest.approx(score(m_a), rel=1e-4)


# ------------------------------------------------------------------ the reference protocol


def _reference_config(variant):
  from configs.variants import apply_variant
  from conftest import needed_settings, tiny_mlp_config
  config = tiny_mlp_config("/tmp/unused")
  config.method.frequency.throttled = "audio"
  config.method.staleness.modalities = "audio"
  config = apply_variant(config, variant)
  config.method.protocol = "reference"
  return needed_settings(config)


def _variants():
  from configs.variants import VARIANTS
  return [v for v in VARIANTS if not v.endswith("_seedcode")] + ["unimodal_audio"]


@pytest.mark.parametrize("variant", _variants())
def test_every_variant_has_a_reference_protocol(variant):
  from asgml_jax.config_schema import effective_config, validate
  from asgml_jax.methods.stack import run_label
  config = effective_config(validate(_reference_config(variant)))
  assert run_label(config).endswith("_reference")


def test_ogm_ge_reference_is_the_official_loss_and_leaves():
  """GeWu-Lab/OGM-GE_CVPR2022 main.py: loss = CE(out) alone; only 4-D gradients
  are modulated; the GE noise on both modalities."""
  from asgml_jax.config_schema import effective_config, validate
  config = effective_config(validate(_reference_config("boost_ogm")))
  assert config.loss.unimodal_weight == 0.0
  assert config.method.ogm.leaves == "conv" and config.method.ogm.noise_on == "all"
  assert config.method.boost.alpha == 0.75     # boost has no reference of its own


@pytest.mark.parametrize("variant", ["ogm_ge", "agm", "arl", "cggm"])
def test_reference_protocol_trains(variant):
  from asgml_jax.config_schema import effective_config
  from conftest import jitted_step
  config = effective_config(_reference_config(variant))
  state, step, batch = jitted_step(config)
  for _ in range(2):
    state, metrics = step(state, batch)
  assert int(state.health[0]) == -1 and np.isfinite(float(metrics["loss"]))


def test_reference_protocol_refuses_a_stack_whose_references_disagree():
  """OGM-GE's reference trains on CE(fused) alone (γ = 0), ARL's on γ = 1."""
  from asgml_jax.config_schema import ConfigError, effective_config, validate
  config = _reference_config("arl")
  config.method.stack = "ogm_ge,arl"
  with pytest.raises(ConfigError, match="ogm_ge and arl cannot stack: their references set "
                                        "loss.unimodal_weight"):
    effective_config(validate(config))
