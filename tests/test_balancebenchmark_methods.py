"""BalanceBenchmark's methods against NumPy transcriptions of their reference code.

Each `reference_*` function is written from the file its docstring names
(GeWu-Lab/BalanceBenchmark `balancemm/trainer/`, or the method's own
repository), loop for loop in float64, independently of the project's code.
The tests feed both the same random inputs (and, through a jitted train step,
the same model outputs) and assert agreement.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted_step, tiny_mlp_config


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _ce(logits, labels):
  return float(-np.mean(np.log(_softmax(logits)[np.arange(len(labels)), labels])))


def _config(variant, *, three=False, **settings):
  from asgml_jax.config_checks import set_dotted
  from asgml_jax.config_schema import effective_config, validate
  from asgml_jax.config_schema import modality_config
  from configs.variants import apply_variant
  config = tiny_mlp_config("/tmp/unused")
  if three:
    config.modalities.text = modality_config("mlp", (10,), mlp_hidden_dim=16, dropout=0.0)
    config.dataset.synthetic.signal.text = 0.3
  config = apply_variant(config, variant)
  for m in config.modalities:
    config.modalities[m].dropout = 0.0
  for key, value in settings.items():
    set_dotted(config, key, value)
  return effective_config(validate(config))


def _outputs(config, state, batch):
  """The step's forward pass (train mode; no dropout, MLPs have no BatchNorm), float64."""
  from asgml_jax.models import model_from_config
  model = model_from_config(config, 4)
  names = model.modality_names
  out = model.apply({"params": state.params}, {m: batch[m] for m in names}, train=True)
  f64 = lambda x: np.asarray(x, np.float64)
  return (names, {m: f64(out["features"][m]) for m in names}, f64(out["logits"]),
          {m: f64(out["unimodal_logits"][m]) for m in names},
          f64(state.params["fusion"]["kernel"]), f64(state.params["fusion"]["bias"]),
          np.asarray(batch["label"]))


# ------------------------------------------------------------------ CML


def reference_cml_loss(out, unimodal, bias, label, random_dict, lam):
  """BalanceBenchmark CML_trainer.py `training_step` (+ `conf_loss`): `random_dict`
  is the epoch's shuffled modality list, popped from the end; unimodal[m] is
  f_m·W_m + b/N (`Unimodality_Calculate`)."""
  n = len(unimodal)
  out_s = out
  random_dict = list(random_dict)
  loss, loss_c = None, 0.0
  for i in range(n - 1):
    removed = random_dict.pop()
    out_p = out_s - unimodal[removed] + bias / n
    conf_s = _softmax(out_s).max(1)
    conf_p = _softmax(out_p).max(1)
    if i == 0:
      loss = _ce(out_s, label)
    loss += _ce(out_p, label)
    loss_c += max(0.0, float(np.sum(conf_p - conf_s)))
    out_s = out_p
  return loss / n + lam * loss_c


@pytest.mark.parametrize("num,seed", [(2, 0), (2, 1), (3, 2), (3, 3), (4, 4)])
def test_cml_loss_equals_the_reference(num, seed):
  from asgml_jax.methods.cml import cml_loss
  rng = np.random.default_rng(seed)
  names = [f"m{i}" for i in range(num)]
  contributions = {m: rng.normal(scale=2.0, size=(16, 5)) for m in names}
  bias = rng.normal(size=5)
  labels = rng.integers(0, 5, size=16)
  out = sum(contributions.values()) + bias
  unimodal = {m: c + bias / num for m, c in contributions.items()}
  order = rng.permutation(num)
  for lam in (0.1, 5.0):
    want = reference_cml_loss(out, unimodal, bias, labels, [names[i] for i in order[::-1]], lam)
    got, penalty = cml_loss(jnp.asarray(out, jnp.float32),
                            jnp.asarray(np.stack([contributions[m] for m in names]), jnp.float32),
                            jnp.asarray(labels), jnp.asarray(order), lam)
    assert float(got) == pytest.approx(want, rel=1e-5)
  assert float(penalty[order[-1]]) == 0.0     # the last modality is never removed


def test_cml_penalty_is_active_on_some_batches():
  """The hinge is not always 0: some random batches are more confident with less."""
  from asgml_jax.methods.cml import cml_loss
  rng = np.random.default_rng(7)
  active = 0
  for _ in range(20):
    c = rng.normal(scale=3.0, size=(2, 8, 4))
    labels = rng.integers(0, 4, size=8)
    with_pen, _ = cml_loss(jnp.asarray(c.sum(0)), jnp.asarray(c), jnp.asarray(labels),
                           jnp.asarray([0, 1]), 1.0)
    without, _ = cml_loss(jnp.asarray(c.sum(0)), jnp.asarray(c), jnp.asarray(labels),
                          jnp.asarray([0, 1]), 0.0)
    active += float(with_pen) > float(without) + 1e-6
  assert 3 <= active <= 17


@pytest.mark.parametrize("three", [False, True])
def test_cml_step_loss_is_the_reference_loss_of_the_models_outputs(three):
  from asgml_jax.methods.cml import removal_order
  config = _config("cml", three=three)
  assert config.loss.unimodal_weight == 0.0
  state, step, batch = jitted_step(config)
  _, metrics = step(state, batch)
  names, _, out, unimodal, _, bias, labels = _outputs(config, state, batch)
  order = np.asarray(removal_order(state.rng, state.step, 6, len(names)))
  want = reference_cml_loss(out, unimodal, bias, labels, [names[i] for i in order[::-1]],
                            config.method.cml.lam)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_cml_order_is_fixed_within_an_epoch_and_drawn_anew_per_epoch_and_seed():
  from asgml_jax.methods.cml import removal_order
  key = jax.random.PRNGKey(0)
  orders = [tuple(np.asarray(removal_order(key, s, 10, 4))) for s in range(0, 200, 5)]
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
  assert orders[0] == orders[1]                         # steps 0 and 5: epoch 0
  assert len(set(orders[::2])) > 5                      # epochs differ
  seeds = {tuple(np.asarray(removal_order(jax.random.PRNGKey(s), 0, 10, 4))) for s in range(6)}
  assert len(seeds) > 2                                 # seeds differ


# ------------------------------------------------------------------ MBSD


def reference_mbsd_total(out, unimodal, label, key):
  """BalanceBenchmark MBSD_trainer.py `training_step` (modulation on): the 2- and
  3-modality branches as written, per-example loops; `key` the modality order."""
  ce = lambda z: _ce(z, label)
  prediction = {m: _softmax(unimodal[m]) for m in key}
  y_pred = {m: prediction[m].argmax(-1) for m in key}
  n, c = len(label), unimodal[key[0]].shape[1]
  kl_div = lambda inp, target: target * (np.log(target) - inp) if target > 0 else 0.0
  if len(key) == 2:
    loss_rs = 1 / c * np.sum((unimodal[key[0]] - unimodal[key[1]]) ** 2, axis=1)
    w, ps, pw = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
      a, b = prediction[key[0]][i][label[i]], prediction[key[1]][i][label[i]]
      if y_pred[key[0]][i] == label[i] or y_pred[key[1]][i] == label[i]:
        w[i] = max(a, b) - min(a, b)
      ps[i], pw[i] = max(a, b), min(a, b)
    loss_kl = np.array([kl_div(ps[i], pw[i]) for i in range(n)])
    return (ce(out) + ce(unimodal[key[0]]) + ce(unimodal[key[1]])
            + w @ loss_rs / n + w @ loss_kl / n)
  pairs = [(0, 1), (0, 2), (1, 2)]
  kl_total = rs_total = 0.0
  for j, k in pairs:
    w, ps, pw = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
      a, b = prediction[key[j]][i][label[i]], prediction[key[k]][i][label[i]]
      if y_pred[key[j]][i] == label[i] or y_pred[key[k]][i] == label[i]:
        w[i] = max(a, b) - min(a, b)
      ps[i], pw[i] = max(a, b), min(a, b)
    rs = 1 / c * np.sum((prediction[key[j]] - prediction[key[k]]) ** 2, axis=1)
    kl = np.array([kl_div(ps[i], pw[i]) for i in range(n)])
    kl_total += w @ kl / n
    rs_total += w @ rs / n
  return (ce(out) + sum(ce(unimodal[m]) for m in key) + kl_total / 3 + rs_total / 3)


@pytest.mark.parametrize("three", [False, True])
def test_mbsd_step_loss_equals_the_reference(three):
  config = _config("mbsd", three=three)
  state, step, batch = jitted_step(config)
  # A few steps first, so that some examples are right in one modality (w ≠ 0).
  for _ in range(3):
    state, _ = step(state, batch)
  _, metrics = step(state, batch)
  names, _, out, unimodal, _, _, labels = _outputs(config, state, batch)
  want = reference_mbsd_total(out, unimodal, labels, list(names))
  assert float(metrics["mbsd/rs"]) > 0 and float(metrics["mbsd/kl"]) != 0
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("rs_on", ["logits", "probabilities"])
def test_mbsd_gradient_flows_through_the_weights_as_in_the_reference(rs_on):
  """The reference fills w, ps, pw by index assignment, which autograd records:
  the gradient of the terms matches central differences of the float64 transcription."""
  from asgml_jax.methods.mbsd import mbsd_terms
  rng = np.random.default_rng(3)
  names = ("a", "v")
  labels = rng.integers(0, 3, size=12)
  z = {m: rng.normal(scale=2.0, size=(12, 3)) for m in names}

  def reference_terms(za):
    p = {"a": _softmax(za), "v": _softmax(z["v"])}
    rows = np.arange(12)
    t_a, t_v = p["a"][rows, labels], p["v"][rows, labels]
    right = (p["a"].argmax(-1) == labels) | (p["v"].argmax(-1) == labels)
    w = np.where(right, np.abs(t_a - t_v), 0.0)
    x = za - z["v"] if rs_on == "logits" else p["a"] - p["v"]
    rs = np.mean(x ** 2, -1)
    strong, weak = np.maximum(t_a, t_v), np.minimum(t_a, t_v)
    return float(np.sum(w * rs) / 12 + np.sum(w * weak * (np.log(weak) - strong)) / 12)

  def ours(za):
    rs, kl = mbsd_terms({"a": za, "v": jnp.asarray(z["v"])}, jnp.asarray(labels), names, rs_on)
    return rs + kl

  grad = np.asarray(jax.grad(ours)(jnp.asarray(z["a"], jnp.float32)))
  assert float(ours(jnp.asarray(z["a"], jnp.float32))) == pytest.approx(
      reference_terms(z["a"]), rel=1e-5)
  numeric = np.zeros_like(z["a"])
  eps = 1e-6
  for idx in itertools.product(range(12), range(3)):
    up, down = z["a"].copy(), z["a"].copy()
    up[idx] += eps
    down[idx] -= eps
    numeric[idx] = (reference_terms(up) - reference_terms(down)) / (2 * eps)
  assert np.abs(numeric).max() > 1e-2
  np.testing.assert_allclose(grad, numeric, atol=2e-5)


# ------------------------------------------------------------------ MMCosine


def _normalize(x, axis):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def reference_mmcosine_logits(features, weight, key, scaling):
  """GeWu-Lab/MMCosine_ICASSP23 main_CD.py `train_epoch` (and BalanceBenchmark's
  port for 3 modalities): out_m = mm(normalize(m, dim=1),
  normalize(transpose(fc_out.weight[:, block_m], 0, 1), dim=0)) · scaling;
  `weight` is fc_out.weight, (C, Σ D)."""
  out, start = {}, 0
  for m in key:
    d = features[m].shape[1]
    out[m] = _normalize(features[m], 1) @ _normalize(weight[:, start:start + d].T, 0) * scaling
    start += d
  return out


@pytest.mark.parametrize("three", [False, True])
def test_mmcosine_trains_on_the_sum_of_the_references_cosine_logits(three):
  config = _config("mmcosine", three=three)
  state, step, batch = jitted_step(config)
  _, metrics = step(state, batch)
  names, feats, _, _, kernel, _, labels = _outputs(config, state, batch)
  cos = reference_mmcosine_logits(feats, kernel.T, names, 10.0)
  assert float(metrics["loss"]) == pytest.approx(_ce(sum(cos.values()), labels), rel=1e-5)
  rows = np.arange(len(labels))
  assert float(metrics["mmcosine/true_cos_audio"]) == pytest.approx(
      np.mean(cos["audio"][rows, labels]) / 10.0, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("protocol", ["design", "reference"])
def test_mmcosine_evaluates_with_cosine_logits_or_as_the_reference_with_the_plain_output(
    protocol):
  """Design (BalanceBenchmark's `validation_step`): Σ cosine logits;
  reference (MMCosine_ICASSP23 `valid`): the model's plain fused output. Both
  score the unimodal heads with the cosine logits."""
  from asgml_jax import steps
  from asgml_jax.methods import stack
  from asgml_jax.models import model_from_config
  from asgml_jax.probes import probe_config_from
  config = _config("mmcosine", **{"method.protocol": protocol})
  assert config.method.mmcosine.eval_logits == ("plain" if protocol == "reference" else "cosine")
  state, step, batch = jitted_step(config)
  state, _ = step(state, batch)
  model = model_from_config(config, 4)
  got = steps.eval_step(state, batch, model=model, probe_cfg=probe_config_from(config, 4),
                        eval_logits=stack.eval_logits(config))
  names, feats, out, _, kernel, _, _ = _outputs(config, state, batch)
  cos = reference_mmcosine_logits(feats, kernel.T, names, 10.0)
  want = out if protocol == "reference" else sum(cos.values())
  np.testing.assert_allclose(np.asarray(got["logits"]), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["logits_visual"]), cos["visual"], rtol=1e-5,
                             atol=1e-5)
