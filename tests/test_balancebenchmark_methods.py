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

from asgml_jax import loop
from asgml_jax.plan import Plan, teacher_config, teacher_dir, with_seed
from conftest import (evaluated_after_a_step, jitted_step, largest_change, param_mismatch,
                      tiny_mlp_config)
from conftest import variant_config as _config


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _ce(logits, labels):
  return float(-np.mean(np.log(_softmax(logits)[np.arange(len(labels)), labels])))


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


def test_cml_penalty_passes_no_gradient_at_an_exact_tie():
  """CML_trainer.py:22 (GeWu-Lab/BalanceBenchmark) returns Python's
  `max(0, torch.sub(conf_x, conf).sum())`: at a tie (gain exactly 0, e.g. a
  modality whose contribution is all zero) that is the int 0, which has no
  gradient, so the loss's gradient is the cross-entropies' alone."""
  from asgml_jax.methods.cml import cml_loss
  rng = np.random.default_rng(3)
  c = rng.normal(size=(2, 8, 4)).astype(np.float32)
  c[0] = 0.0                       # removing modality 0 changes nothing: gain == 0
  labels = jnp.asarray(rng.integers(0, 4, size=8))

  def loss(contrib, lam):
    return cml_loss(contrib.sum(0), contrib, labels, jnp.asarray([0, 1]), lam)[0]
  with_penalty = jax.grad(loss)(jnp.asarray(c), 1.0)
  without = jax.grad(loss)(jnp.asarray(c), 0.0)
  np.testing.assert_allclose(np.asarray(with_penalty), np.asarray(without), rtol=1e-6, atol=1e-7)
  assert float(loss(jnp.asarray(c), 1.0)) == pytest.approx(float(loss(jnp.asarray(c), 0.0)))


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
  config = _config("mmcosine", **{"method.protocol": protocol})
  assert config.method.mmcosine.eval_logits == ("plain" if protocol == "reference" else "cosine")
  state, batch, got = evaluated_after_a_step(config)
  names, feats, out, _, kernel, _, _ = _outputs(config, state, batch)
  cos = reference_mmcosine_logits(feats, kernel.T, names, 10.0)
  want = out if protocol == "reference" else sum(cos.values())
  np.testing.assert_allclose(np.asarray(got["logits"]), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["logits_visual"]), cos["visual"], rtol=1e-5,
                             atol=1e-5)


def test_mmcosine_gradient_at_an_all_zero_feature_row_is_torchs_not_nan():
  """main_CD.py:114-115 (GeWu-Lab/MMCosine_ICASSP23) normalises with
  torch.nn.functional.normalize, v / max(‖v‖₂, eps), eps = 1e-12: at an
  all-zero row the denominator is the constant eps, so the row's gradient is
  the numerator's, g·s·normalize(W)ᵀ / eps (finite); elsewhere it is the
  float64 derivative of the same formula (central differences)."""
  from asgml_jax.methods.mmcosine import cosine_logits
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(4, 6))
  feats[1] = 0.0
  kernel = rng.normal(size=(6, 3))
  upstream = rng.normal(size=(4, 3))
  scaling = 10.0

  def reference(f):
    return np.sum(_normalize(f, 1) @ _normalize(kernel, 0) * scaling * upstream)

  grad = np.asarray(jax.grad(lambda f: jnp.sum(
      cosine_logits({"a": f}, jnp.asarray(kernel, jnp.float32), ["a"], scaling)["a"]
      * upstream))(jnp.asarray(feats, jnp.float32)), np.float64)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad[1], scaling * upstream[1] @ _normalize(kernel, 0).T / 1e-12,
                             rtol=1e-5)
  numeric, h = np.zeros_like(feats), 1e-6
  for i, j in itertools.product([0, 2, 3], range(6)):
    up, down = feats.copy(), feats.copy()
    up[i, j] += h
    down[i, j] -= h
    numeric[i, j] = (reference(up) - reference(down)) / (2 * h)
  np.testing.assert_allclose(grad[[0, 2, 3]], numeric[[0, 2, 3]], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ Diagnosing & Re-learning


def reference_purity_score(y_true, y_pred):
  """Diagnosing_Relearning_ECCV2024 code/ours.py `purity_score`."""
  y_true = np.array(y_true)
  y_voted_labels = np.zeros(y_true.shape)
  labels = np.unique(y_true)
  ordered_labels = np.arange(labels.shape[0])
  for k in range(labels.shape[0]):
    y_true[y_true == labels[k]] = ordered_labels[k]
  labels = np.unique(y_true)
  bins = np.concatenate((labels, [np.max(labels) + 1]), axis=0)
  for cluster in np.unique(y_pred):
    hist, _ = np.histogram(y_true[y_pred == cluster], bins=bins)
    y_voted_labels[y_pred == cluster] = np.argmax(hist)
  return float(np.mean(y_voted_labels == y_true))


def reference_reinit_epochs(epochs, reinit_epoch, reinit_num):
  """ours.py `main`: after each epoch, `if epoch % reinit_epoch == 0 & epoch > 0:
  flag += 1; if flag <= reinit_num: reinit`."""
  out, flag = [], 0
  for epoch in range(epochs):
    if (epoch % reinit_epoch == 0) & (epoch > 0):
      flag += 1
      if flag <= reinit_num:
        out.append(epoch)
  return out


@pytest.mark.parametrize("seed", range(4))
def test_purity_equals_the_reference(seed):
  from asgml_jax.clustering import purity
  rng = np.random.default_rng(seed)
  labels = rng.choice([0, 2, 3, 7], size=60)        # missing labels, as the reference allows
  clusters = rng.integers(0, 5, size=60)
  clusters[:20] = 1                                 # one big cluster with a clear winner
  assert purity(labels, clusters) == pytest.approx(reference_purity_score(labels, clusters))


def reference_feature_purity(features, labels, num_classes):
  """ours.py:108-111 (GeWu-Lab/Diagnosing_Relearning_ECCV2024; BalanceBenchmark
  ReLearning_trainer.py:100-103 the same), on `.cpu().numpy()` features:
  scaler = preprocessing.MinMaxScaler(feature_range=(-1,1));
  result = scaler.fit_transform(result);
  y_pred = KMeans(n_clusters=n_classes, random_state=0).fit_predict(result);
  purity_score(label, y_pred)."""
  from sklearn import preprocessing
  from sklearn.cluster import KMeans
  result = preprocessing.MinMaxScaler(feature_range=(-1, 1)).fit_transform(
      np.asarray(features, np.float32))
  y_pred = KMeans(n_clusters=num_classes, random_state=0).fit_predict(result)
  return reference_purity_score(np.asarray(labels).copy(), y_pred)


@pytest.mark.parametrize("spread", [0.6, 1.2, 3.0])
def test_feature_purity_is_the_references_scikit_learn_pipeline(spread):
  """6-class mixtures from separable to overlapping (where k-means' seeding
  decides the clusters), and a column whose range is below float32
  resolution (scikit-learn leaves it at its minimum)."""
  from asgml_jax.clustering import feature_purity
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(6), 30)
  centres = rng.normal(scale=2.0, size=(6, 5))
  x = (centres[labels] + spread * rng.normal(size=(180, 5))).astype(np.float32)
  x[:, 4] = np.float32(0.5) + np.float32(1e-9) * rng.normal(size=180).astype(np.float32)
  want = reference_feature_purity(x, labels, 6)
  assert feature_purity(x, labels, 6) == want
  if spread == 0.6:
    assert want > 0.9                         # the clusters are found


@pytest.mark.parametrize("reinit_epoch,reinit_num", [(20, 3), (8, 3), (1, 2), (5, 1)])
def test_relearning_runs_after_the_references_epochs(reinit_epoch, reinit_num):
  from asgml_jax.methods.relearning import reinit_due
  want = reference_reinit_epochs(70, reinit_epoch, reinit_num)
  assert [e for e in range(70) if reinit_due(e, reinit_epoch, reinit_num)] == want


def test_relearning_keeps_the_published_runs_schedule():
  """code/script/ours.sh: --epochs 90 --reinit_epoch 20 (after 20, 40, 60)."""
  from asgml_jax.methods.relearning import reinit_every
  config = _config("relearning")
  assert config.method.relearning.reinit_epoch == -1
  for epochs, every in ((90, 20), (20, 4), (50, 11), (3, 1)):
    config.num_epochs = epochs
    assert reinit_every(config) == every
  config.method.relearning.reinit_epoch = 7
  assert reinit_every(config) == 7


def _relearning_setup(tfds_dir):
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir), "relearning")
  config.method.relearning.reinit_epoch = 8
  return loop.setup_run(Plan.build(config))


def test_relearning_hook_moves_each_encoder_toward_its_init_by_the_references_alpha(tfds_dir,
                                                                                    capsys):
  """ours.py `reinit_score` + `reinit`: α_m = tanh(λ·|purity_train − purity_val|) of
  k-means on MinMax-scaled features of the whole train and validation splits;
  θ_m ← α_m·θ_init + (1 − α_m)·θ_m for encoder m only."""
  import optax

  from asgml_jax import clustering
  from asgml_jax.epoch_hooks import EpochHooks
  setup = _relearning_setup(tfds_dir)
  state = loop.fresh_state(setup, 42)
  init = jax.tree.map(np.asarray, state.params)
  moved = jax.tree.map(lambda x: x + 0.05 * jnp.sign(x) + 0.01, state.params)
  state = state.replace(params=moved)
  hooks = EpochHooks(setup, [loop.run_keys(42)[1]], stacked=False)
  assert hooks.epoch_end(state, [{}], next_epoch=3) is state      # epoch 2: not due
  after = hooks.epoch_end(state, [{}], next_epoch=9)              # epoch 8: due
  # Purity from the features of the moved model, computed here independently.
  data = setup.data
  variables = {"params": moved}
  names = setup.names
  train_out = setup.model.apply(variables, {m: data.train[m] for m in names}, train=False)
  val = {k: np.asarray(v)[:data.eval_sizes["validation"]]
         for k, v in data.eval_splits["validation"].items()}
  val_out = setup.model.apply(variables, {m: val[m] for m in names}, train=False)
  alpha = {}
  for m in names:
    p_t = clustering.feature_purity(np.asarray(train_out["features"][m]),
                                    np.asarray(data.train["label"]), data.num_classes)
    p_v = clustering.feature_purity(np.asarray(val_out["features"][m]), val["label"],
                                    data.num_classes)
    alpha[m] = float(np.tanh(3.0 * abs(p_t - p_v)))
    logged = optax.tree_utils.tree_get(after.opt_state, "relearning_alpha")
    assert float(logged[m]) == pytest.approx(alpha[m], abs=1e-6)
    for new, i, old in zip(jax.tree.leaves(after.params["encoders"][m]),
                           jax.tree.leaves(init["encoders"][m]),
                           jax.tree.leaves(moved["encoders"][m])):
      np.testing.assert_allclose(np.asarray(new), alpha[m] * i + (1 - alpha[m]) * np.asarray(old),
                                 rtol=1e-6, atol=1e-7)
  assert any(a > 0.01 for a in alpha.values())
  for new, old in zip(jax.tree.leaves(after.params["fusion"]), jax.tree.leaves(moved["fusion"])):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
  # A sweep's stacked states: each seed gets its own result, the same as alone.
  two = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  capsys.readouterr()
  swept = EpochHooks(setup, [loop.run_keys(42)[1]] * 2, stacked=True, seeds=[42, 7]).epoch_end(
      two, [{}, {}], next_epoch=9)
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[0] for line in lines] == ["seed 42", "seed 7"]
  assert all("relearning after epoch 9: purity train/val audio" in line for line in lines)
  for s in range(2):
    assert param_mismatch(jax.tree.map(lambda x: x[s], swept.params), after.params) <= 1


# ------------------------------------------------------------------ MLA


def reference_gs_before_update(p_l, grad_w, features, batch_index, len_dataloader, exp_count,
                               mode):
  """Cecile-hi/...Alternating-Unimodal-Adaptation utils/utils.py
  `GSPlugin.before_update` (mode "replace": w.grad = w.grad Pᵀ) and BalanceBenchmark's
  copy (mode "add": w.grad += w.grad Pᵀ); `grad_w` is fc_out.weight.grad (C, D)."""
  lamda = batch_index / len_dataloader + 1
  alpha = 1.0 * 0.1 ** lamda
  if exp_count != 0:
    r = np.mean(features, 0, keepdims=True)                   # (1, D)
    k = p_l @ r.T                                             # (D, 1)
    p_l = p_l - (k @ k.T) / (alpha + k @ r)                   # torch.mm(k, r): (D, D)
    p_l = p_l / np.linalg.norm(p_l)
    grad_w = grad_w @ p_l.T if mode == "replace" else grad_w + grad_w @ p_l.T
  return p_l, grad_w


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_mla_projection_equals_the_reference(mode):
  from asgml_jax.methods.mla import gradient_search
  rng = np.random.default_rng(5)
  d, c, steps_per_epoch = 6, 3, 10
  params = {"encoders": {"audio": {"w": jnp.zeros(2)}}, "fusion": {
      "kernel": jnp.zeros((d, c)), "bias": jnp.zeros(c)}}
  tx = gradient_search(steps_per_epoch, mode)
  state = tx.init(params)
  p_ref = np.eye(d)
  for count, batch_index in enumerate([0, 0, 3, 3, 9]):
    feats = np.abs(rng.normal(size=(8, d)))
    grad_w = rng.normal(size=(c, d))
    p_ref, want = reference_gs_before_update(p_ref, grad_w, feats, batch_index, steps_per_epoch,
                                             count, mode)
    grads = {"encoders": {"audio": {"w": jnp.ones(2)}},
             "fusion": {"kernel": jnp.asarray(grad_w.T, jnp.float32), "bias": jnp.ones(c)}}
    out, state = tx.update(grads, state, params, step=jnp.int32(20 + batch_index),
                           mla_feature_mean=jnp.asarray(feats.mean(0), jnp.float32))
    np.testing.assert_allclose(np.asarray(out["fusion"]["kernel"]).T, want, rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["fusion"]["bias"]), np.ones(c))
    np.testing.assert_array_equal(np.asarray(out["encoders"]["audio"]["w"]), np.ones(2))
    np.testing.assert_allclose(np.asarray(state.mla_projector), p_ref, rtol=2e-4, atol=1e-6)


def _sgd_torch(p, g, buf, lr, momentum, wd):
  """torch.optim.SGD for one parameter (first step: buf = d_p)."""
  d_p = g + wd * p
  buf = d_p if buf is None else momentum * buf + d_p
  return p - lr * buf, buf


@pytest.mark.parametrize("projection, zero_grad", [("replace", "set_to_none"),
                                                    ("none", "set_to_none"),
                                                    ("none", "zeros_per_batch")])
def test_mla_step_is_the_references_turns(projection, zero_grad):
  """main.py `train_epoch` (gs_flag, :432-466 of
  Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation): one
  forward; for audio then visual: CE(fc_out(f_m)).backward(); `before_update`;
  optimizer.step(); optimizer.zero_grad(); after the turns `del p.grad` for
  every parameter. Under PyTorch >= 2 the step skips the parameters without a
  gradient (the other encoder); under the repository's torch 1.8.1
  (requirements.txt) zero_grad() left the audio encoder a zero gradient, so
  the visual turn's step gives it weight decay and momentum too
  (`zeros_per_batch`, what `method.protocol=reference` sets). Two batches, so
  the second batch's turns are projected and momentum carries over.
  Derivatives come from jax.grad of the plain model; the turns, the skipping,
  the projection and torch's SGD are written out here."""
  from asgml_jax.methods.mla import project_kernel_grad, projector_step
  from asgml_jax.models import model_from_config
  from asgml_jax.losses import cross_entropy
  config = _config("mla", **{"method.mla.projection": projection,
                             "optimizer.zero_grad": zero_grad})
  if zero_grad == "zeros_per_batch":
    reference = _config("mla", **{"method.protocol": "reference"})
    assert (reference.method.mla.projection, reference.optimizer.zero_grad) == (
        "none", "zeros_per_batch")
  assert config.model.fusion == "shared"
  state, step, batch = jitted_step(config)
  opt = config.optimizer
  model = model_from_config(config, 4)
  names = model.modality_names
  inputs = {m: batch[m] for m in names}
  sgd = lambda p, g, b: (p - opt.learning_rate * (opt.momentum * b + g + opt.weight_decay * p),
                         opt.momentum * b + g + opt.weight_decay * p)
  params = jax.tree.map(np.asarray, state.params)
  bufs = jax.tree.map(np.zeros_like, params)
  p_l, count = np.eye(params["fusion"]["kernel"].shape[0]), 0
  ours = state
  for batch_step in range(2):
    ours, _ = step(ours, batch)
    feats = model.apply({"params": params}, inputs, train=True)["features"]
    for m in names:
      def loss(p, m=m):
        f = model.apply({"params": p}, inputs, train=True)["features"][m]
        return cross_entropy(f @ p["fusion"]["kernel"] + p["fusion"]["bias"], batch["label"])
      g = jax.tree.map(np.asarray, jax.grad(loss)(params))
      if projection != "none" and count != 0:
        alpha = 0.1 ** (batch_step / 6 + 1)
        p_l = np.asarray(projector_step(jnp.asarray(p_l), jnp.mean(feats[m], 0), alpha))
        g["fusion"]["kernel"] = np.asarray(project_kernel_grad(
            jnp.asarray(g["fusion"]["kernel"]), jnp.asarray(p_l), projection))
      count += 1
      for part in ("encoders", "fusion"):
        sub = (lambda t, part=part, m=m: t[part][m] if part == "encoders" else t[part])
        moved = jax.tree.map(sgd, sub(params), sub(g), sub(bufs))
        new_p = jax.tree.map(lambda x: x[0], moved, is_leaf=lambda x: isinstance(x, tuple))
        new_b = jax.tree.map(lambda x: x[1], moved, is_leaf=lambda x: isinstance(x, tuple))
        if part == "encoders":
          params["encoders"][m], bufs["encoders"][m] = new_p, new_b
        else:
          params["fusion"], bufs["fusion"] = new_p, new_b
      if zero_grad == "zeros_per_batch":          # the earlier turns' zeroed gradients
        for e in names[:names.index(m)]:
          moved = jax.tree.map(lambda p, b: sgd(p, np.zeros_like(p), b),
                               params["encoders"][e], bufs["encoders"][e])
          params["encoders"][e] = jax.tree.map(lambda x: x[0], moved,
                                               is_leaf=lambda x: isinstance(x, tuple))
          bufs["encoders"][e] = jax.tree.map(lambda x: x[1], moved,
                                             is_leaf=lambda x: isinstance(x, tuple))
  assert largest_change(state.params, params) > 1e-3
  assert param_mismatch(ours.params, params) <= 1


def reference_mla_gating(outputs, key):
  """BalanceBenchmark avclassify_model.py `BaseClassifierMLAModel.calculate_gating_weights`
  (per-example entropy, dim=1; the max over the first two modalities' entropies)."""
  entropy = {m: -np.sum(_softmax(outputs[m]) * np.log(_softmax(outputs[m])), 1, keepdims=True)
             for m in key}
  max_entropy = np.maximum(entropy[key[0]], entropy[key[1]])
  gating = {m: np.exp(max_entropy - entropy[m]) for m in key}
  total = sum(gating.values())
  return sum(outputs[m] * gating[m] / total for m in key)


@pytest.mark.parametrize("num", [2, 3])
def test_mla_predicts_with_the_references_entropy_gating(num):
  from asgml_jax.methods.base import BuildContext
  from asgml_jax.methods.mla import eval_logits
  rng = np.random.default_rng(num)
  names = tuple(f"m{i}" for i in range(num))
  logits = {m: rng.normal(scale=3.0, size=(10, 5)) for m in names}
  hook = eval_logits(BuildContext(None, 1, 5, names))
  got = hook(None, {}, {"logits": None, "unimodal_logits": {m: jnp.asarray(v, jnp.float32)
                                                       for m, v in logits.items()}})
  np.testing.assert_allclose(np.asarray(got["logits"]), reference_mla_gating(logits, names),
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ UMT


def _umt_config(data_dir, root):
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(data_dir, num_epochs=1), "umt")
  for m in config.modalities:
    config.modalities[m].dropout = 0.0
  config.method.teachers.dir = str(root)
  return config


@pytest.fixture(scope="module")
def trained_teachers(tfds_dir, tmp_path_factory):
  """(UMT config, teachers root) with the teachers of seeds 42 and 0 trained (1 epoch)."""
  from asgml_jax import teachers
  from asgml_jax.config_schema import effective_config, validate
  root = tmp_path_factory.mktemp("teachers")
  config = effective_config(validate(_umt_config(tfds_dir, root)))
  teachers.ensure(Plan.build(config), [42, 0])
  return config, str(root)


def test_umt_trains_teachers_once_and_distils_their_best_features(trained_teachers):
  """BalanceBenchmark UMT_trainer.py `training_step`: loss = CE(out) + scaling ·
  Σ_m MSELoss(teacher_m features, student features); the teachers are the
  unimodal runs of the same config, trained first, read from their checkpoints."""
  import json
  import os

  from asgml_jax import checkpointing, teachers
  from asgml_jax.models import model_from_config
  config, root = trained_teachers
  dirs = {m: teacher_dir(root, m, 42) for m in ("audio", "visual")}
  stamps = {m: os.path.getmtime(os.path.join(d, "summary.json")) for m, d in dirs.items()}
  teachers.ensure(Plan.build(config), [42, 0])                     # finished: nothing retrained
  assert stamps == {m: os.path.getmtime(os.path.join(d, "summary.json"))
                    for m, d in dirs.items()}
  for m in ("audio", "visual"):
    for seed in (42, 0):
      with open(os.path.join(teacher_dir(root, m, seed), "summary.json")) as f:
        assert json.load(f)["label"] == f"unimodal_{m}"

  state, step, batch = jitted_step(config)
  _, metrics = step(state, batch)
  # The teacher held by the student is the teacher run's best checkpoint.
  import optax
  held = optax.tree_utils.tree_get(state.opt_state, "umt_teachers")
  want = 0.0
  student = model_from_config(config, 4).apply({"params": state.params},
                                               {m: batch[m] for m in ("audio", "visual")},
                                               train=True)
  for m in ("audio", "visual"):
    setup = loop.setup_run(Plan.build(teacher_config(config, m)))
    best, _ = checkpointing.restore_best(dirs[m], loop.fresh_state(setup, 42))
    assert param_mismatch(held[m]["params"], best.params) == 0
    t_feats = setup.model.apply({"params": best.params}, {m: batch[m]}, train=False)["features"][m]
    mse = float(np.mean((np.asarray(t_feats, np.float64)
                         - np.asarray(student["features"][m], np.float64)) ** 2))
    assert float(metrics[f"umt/mse_{m}"]) == pytest.approx(mse, rel=1e-5)
    want += mse
  want = _ce(np.asarray(student["logits"], np.float64), np.asarray(batch["label"])) + 10.0 * want
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_umt_without_its_teachers_says_where_they_should_be(tmp_path):
  from asgml_jax.config_schema import ConfigError, effective_config, validate
  config = effective_config(validate(_umt_config("/tmp/unused", tmp_path / "none")))
  with pytest.raises(ConfigError, match=r"no teacher for audio \(seed 42\).*unimodal_audio"):
    jitted_step(config)


def test_umt_sweep_trains_each_seeds_teachers_in_one_program_and_each_student_holds_its_own(
    tfds_dir, tmp_path):
  """launch.sweep's layout: the teachers are the sweep's own unimodal_<m> rows, so
  the variant unimodal_<m> of the same sweep finds them trained (same config)."""
  import os

  import optax

  from asgml_jax import checkpointing, sweep, teachers
  from configs.variants import apply_variant
  root = tmp_path / "sweep"
  config = apply_variant(tiny_mlp_config(tfds_dir, num_epochs=1), "umt")
  config = teachers.with_root(config, str(root))        # what launch.sweep does
  workdirs = [str(root / "umt" / f"seed_{s}") for s in (42, 0)]
  sweep.train_sweep(config, [42, 0], workdirs)
  held = {}
  for seed, workdir in zip((42, 0), workdirs):
    seeded = with_seed(config, seed)
    setup = loop.setup_run(Plan.build(seeded))
    student, _ = checkpointing.restore_newest(workdir, loop.fresh_state(setup, seed))
    held[seed] = optax.tree_utils.tree_get(student.opt_state, "umt_teachers")
    for m in ("audio", "visual"):
      tsetup = loop.setup_run(Plan.build(teacher_config(seeded, m)))
      best, _ = checkpointing.restore_best(teacher_dir(str(root), m, seed),
                                           loop.fresh_state(tsetup, seed))
      assert param_mismatch(held[seed][m]["params"], best.params) == 0
  assert largest_change(held[42]["audio"]["params"], held[0]["audio"]["params"]) > 1e-3
  assert sorted(os.listdir(root)) == ["umt", "unimodal_audio", "unimodal_visual"]
  # The sweep's variant unimodal_audio: the same runs, already trained.
  summary = root / "unimodal_audio" / "seed_42" / "summary.json"
  stamp = os.path.getmtime(summary)
  rows = sweep.train_sweep(apply_variant(tiny_mlp_config(tfds_dir, num_epochs=1),
                                         "unimodal_audio"), [42, 0],
                           [str(root / "unimodal_audio" / f"seed_{s}") for s in (42, 0)])
  assert all("error" not in r for r in rows)
  assert os.path.getmtime(summary) >= stamp
  with open(summary) as f:
    assert '"num_epochs": 1' in f.read()


# ------------------------------------------------------------------ UME


def test_ume_trains_nothing_and_predicts_with_the_mean_of_its_teachers_logits(trained_teachers):
  from asgml_jax import checkpointing, steps
  from asgml_jax.models import model_from_config
  from asgml_jax.probes import probe_config_from
  from configs.variants import apply_variant
  umt_config, root = trained_teachers
  config = apply_variant(tiny_mlp_config(umt_config.dataset.data_dir, num_epochs=1), "ume")
  config.method.teachers.dir = root
  config = Plan.build(config).config
  state, step, batch = jitted_step(config)
  after = state
  for _ in range(2):
    after, _ = step(after, batch)
  assert largest_change(after.params, state.params) == 0.0
  got = steps.eval_step(after, batch, model=model_from_config(config, 4),
                        probe_cfg=probe_config_from(config, 4),
                        eval_logits=Plan.build(config).evaluation(6, 4).eval_logits)
  logits = {}
  for m in ("audio", "visual"):
    setup = loop.setup_run(Plan.build(teacher_config(config, m)))
    best, _ = checkpointing.restore_best(teacher_dir(root, m, 42),
                                         loop.fresh_state(setup, 42))
    logits[m] = np.asarray(setup.model.apply({"params": best.params}, {m: batch[m]},
                                             train=False)["logits"])
    np.testing.assert_allclose(np.asarray(got[f"logits_{m}"]), logits[m], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got["logits"]), (logits["audio"] + logits["visual"]) / 2,
                             rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ LFM


def _kl_div_batchmean(inp, target):
  """torch.nn.functional.kl_div(input, target, reduction="batchmean")."""
  return float(np.sum(target * (np.log(target) - inp)) / inp.shape[0])


def reference_lfm_alignment(p, q):
  """BalanceBenchmark LFM_trainer.py `Alignment`."""
  p, q = _softmax(p), _softmax(q)
  m = 0.5 * p + 0.5 * q
  return 0.5 * (_kl_div_batchmean(np.log(p), m) + _kl_div_batchmean(np.log(q), m))


def reference_lfm_alpha_schedule(grads, lr_alpha=1e-4):
  """`fit` + `getAlpha_Learnable`: α = {1: 0.05, 0: 0.95}; before each epoch:
  if epoch % 20 == 0 and epoch != 0: lr /= 2; α1 -= lr·g; clip; α0 = 1 − α1."""
  alpha, out = {1: 0.05, 0: 0.95}, []
  for epoch, g in enumerate(grads):
    if epoch % 20 == 0 and epoch != 0:
      lr_alpha = lr_alpha / 2
    alpha[1] -= lr_alpha * g
    alpha[1] = max(0.05, min(0.95, alpha[1]))
    alpha[0] = 1.0 - alpha[1]
    out.append((alpha[0], alpha[1]))
  return out


@pytest.mark.parametrize("three", [False, True])
def test_lfm_step_loss_is_the_references_mix(three):
  config = _config("lfm", three=three)
  state, step, batch = jitted_step(config)
  _, metrics = step(state, batch)
  names, _, out, unimodal, _, _, labels = _outputs(config, state, batch)
  pairs = list(itertools.combinations(names, 2))
  align = sum(reference_lfm_alignment(unimodal[j], unimodal[k]) for j, k in pairs) / len(pairs)
  assert float(metrics["lfm/alignment"]) == pytest.approx(align, rel=1e-4)
  assert float(metrics["loss"]) == pytest.approx(2 * (0.95 * _ce(out, labels) + 0.05 * align),
                                                 rel=1e-5)


def test_lfm_neurips_code_trains_on_the_mean_of_separate_heads_from_its_alpha():
  """njustkmg/NeurIPS24-LFM Crema_epoch_learnable.py: o_a, o_v from separate
  heads cls_a, cls_v (model/AudioVideo.py:54-55); loss_cls = CE(0.5·o_v +
  0.5·o_a) (:115), loss = 2·(cls_k[0]·loss_cls + cls_k[1]·Alignment(o_a, o_v))
  (:114-116) with cls_k = [0.05, 0.95] before the first hypergradient (:250);
  `Alignment` (:37-44) as BalanceBenchmark's."""
  config = _config("lfm", **{"method.protocol": "reference"})
  assert config.method.lfm.code == "neurips" and config.model.fusion == "sum"
  state, step, batch = jitted_step(config)
  _, metrics = step(state, batch)
  from asgml_jax.models import model_from_config
  model = model_from_config(config, 4)
  out = model.apply({"params": state.params}, {m: batch[m] for m in model.modality_names},
                    train=True)
  labels = np.asarray(batch["label"])
  # cls_a, cls_v: the sum fusion's per-modality Linear layers, read off the parameters
  feats = {m: np.asarray(out["features"][m], np.float64) for m in model.modality_names}
  fc = {m: jax.tree.map(lambda x: np.asarray(x, np.float64), state.params["fusion"][f"fc_{m}"])
        for m in model.modality_names}
  o_a, o_v = (feats[m] @ fc[m]["kernel"] + fc[m]["bias"] for m in ("audio", "visual"))
  align = reference_lfm_alignment(o_a, o_v)
  assert float(metrics["lfm/alignment"]) == pytest.approx(align, rel=1e-4)
  assert float(metrics["loss"]) == pytest.approx(
      2 * (0.05 * _ce(0.5 * o_v + 0.5 * o_a, labels) + 0.95 * align), rel=1e-5)


def test_lfm_alpha_follows_the_references_schedule_and_clip():
  from asgml_jax.methods.lfm import ALPHA_INIT, next_alpha
  grads = [300.0, -50.0] + [2000.0] * 10 + [-1e5] * 30 + [1e5] * 5
  want = reference_lfm_alpha_schedule(grads)
  alpha = np.asarray(ALPHA_INIT["balancebenchmark"])
  for epoch, g in enumerate(grads):
    alpha = next_alpha(alpha, g, epoch, 1e-4)
    np.testing.assert_allclose(alpha, want[epoch], rtol=1e-6)
  assert want[41][1] == pytest.approx(0.95) and want[-1][1] == pytest.approx(0.05)


def _lfm_hook_at_half(config):
  """(setup, state with α = (½, ½), the epoch hooks, the first 8 validation rows)."""
  import optax

  from asgml_jax.epoch_hooks import EpochHooks
  config.method.lfm.lr_alpha = 200.0           # so that α moves visibly
  setup = loop.setup_run(Plan.build(config))
  state = loop.fresh_state(setup, 42)
  state = state.replace(opt_state=optax.tree_utils.tree_set(
      state.opt_state, lfm_alpha=jnp.asarray([0.5, 0.5])))   # away from the clip
  hooks = EpochHooks(setup, [loop.run_keys(42)[1]], stacked=False)
  batch = jax.tree.map(lambda x: jnp.asarray(x[:8]), setup.data.eval_splits["validation"])
  return setup, state, hooks, batch


def _torch_hypergradient(losses, alpha, params):
  """torch.autograd.grad(∇L_total, θ, grad_outputs=∇CE), written as reverse over
  reverse: grad_θ ⟨∇(α₀·CE + α₁·A)(θ), stop_gradient(∇CE)⟩."""
  g_cls = jax.grad(lambda p: losses(p)[0])(params)
  total_grad = jax.grad(lambda p: alpha[0] * losses(p)[0] + alpha[1] * losses(p)[1])
  return jax.grad(lambda p: sum(jnp.vdot(a, jax.lax.stop_gradient(b)) for a, b in zip(
      jax.tree.leaves(total_grad(p)), jax.tree.leaves(g_cls))))(params)


def test_lfm_hypergradient_is_torchs_hessian_vector_product(tfds_dir):
  """getAlpha_Learnable: torch.autograd.grad(∇L_total, θ, grad_outputs=∇CE) — written
  here as reverse over reverse, grad_θ ⟨∇L_total(θ), stop_gradient(∇CE)⟩ — then the
  mean of the first parameter's entries; the hook writes next_alpha of it."""
  from asgml_jax.methods.lfm import next_alpha
  from asgml_jax.models.encoders import first_weight
  from asgml_jax.losses import cross_entropy
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir), "lfm")
  for m in config.modalities:
    config.modalities[m].dropout = 0.0
  setup, state, hooks, batch = _lfm_hook_at_half(config)
  alpha, names = jnp.asarray([0.5, 0.5]), setup.names

  def losses(p):
    out = setup.model.apply({"params": p}, {m: batch[m] for m in names}, train=True)
    pairs = list(itertools.combinations(names, 2))
    from asgml_jax.methods.lfm import alignment
    align = sum(alignment(out["unimodal_logits"][j], out["unimodal_logits"][k])
                for j, k in pairs) / len(pairs)
    return cross_entropy(out["logits"], batch["label"]), align

  hvp = _torch_hypergradient(losses, alpha, state.params)
  # the MLP's first layer: fc1 of torch's Sequential(Linear, ReLU, Linear)
  want_grad = float(jnp.mean(hvp["encoders"]["audio"]["fc1"]["kernel"]))
  assert first_weight(hvp["encoders"]["audio"], "mlp").shape == (
      config.modalities.audio.input_shape[-1], config.modalities.audio.mlp_hidden_dim)
  assert abs(want_grad) > 1e-6
  after = hooks.epoch_end(state, [{}], next_epoch=21)
  got = np.asarray(optax_get(after.opt_state, "lfm_alpha"))
  np.testing.assert_allclose(got, next_alpha(np.asarray(alpha), want_grad, 21, 200.0), rtol=1e-4)
  assert abs(got[1] - 0.5) > 1e-3


@pytest.mark.parametrize("encoder, shape, first", [
    ("resnet18", (32, 32, 1), (7, 7, 1, 64)), ("small_cnn", (16, 16, 1), (3, 3, 1, 32)),
    ("vit", (8, 8, 3), (4, 4, 3, 8)), ("transformer", (6, 5), (5, 8))])
def test_lfm_reads_the_weight_torch_lists_first(encoder, shape, first):
  """LFM_trainer.py:57-70 takes `hessian_vector_prod[0]`, the gradient of
  `model.parameters()`'s first tensor: the first encoder's first-built layer.
  For torchvision's ResNet-18 that is `conv1`, the 7×7 stem convolution
  (torchvision/models/resnet.py, `ResNet.__init__` builds conv1 first); the
  params tree's sorted leaves would give stage1_block1's 3×3 kernel."""
  from asgml_jax.config_schema import modality_config
  from asgml_jax.models import model_from_config
  from asgml_jax.models.encoders import first_weight
  config = tiny_mlp_config("/tmp/unused")
  small = dict(transformer_width=8, transformer_depth=1, transformer_heads=2)
  extra = {"vit": dict(patch_size=4, **small), "transformer": dict(sequence_mask="none", **small)}
  config.modalities.audio = modality_config(encoder, shape, **extra.get(encoder, {}))
  if encoder == "resnet18":
    config.model.feature_dim = 512                 # the reference's widths (64 in the stem)
  model = model_from_config(config, 4)
  inputs = {m: jnp.zeros((2, *config.modalities[m].input_shape)) for m in model.modality_names}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
  encoder_params = params["params"]["encoders"]["audio"]
  assert first_weight(encoder_params, encoder).shape == first
  if encoder == "resnet18":
    assert next(leaf for leaf in jax.tree.leaves(encoder_params) if leaf.ndim >= 2).shape \
        == (3, 3, 64, 64)                          # what sorted order would have read


def test_lfm_neurips_hypergradient_rows_and_mode(tfds_dir):
  """Crema_epoch_learnable.py `getAlpha_Learnable`: the first half (:59) of a
  batch of 16 held-out rows (:217-227), CE on 0.5·o_v + 0.5·o_a (:71), the
  mean of hessian_vector_prod[0] (:87); the model is in training mode for
  epoch 0 (built in train mode) and in eval() from epoch 1 on (`val()` at
  :136 leaves it there). With dropout on, epoch 1's gradient is the
  inference-mode one and epoch 0's is not."""
  from asgml_jax.losses import cross_entropy
  from asgml_jax.methods.lfm import alignment, next_alpha
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir), "lfm")
  config.method.protocol = "reference"
  config.model.fusion = "sum"
  config.batch_size = 64                      # BalanceBenchmark's rule would take 16 rows
  setup, state, hooks, batch = _lfm_hook_at_half(config)
  alpha, names = jnp.asarray([0.5, 0.5]), setup.names

  def losses(p):
    out = setup.model.apply({"params": p}, {m: batch[m] for m in names}, train=False)
    o_a, o_v = out["unimodal_logits"]["audio"], out["unimodal_logits"]["visual"]
    return cross_entropy(0.5 * o_v + 0.5 * o_a, batch["label"]), alignment(o_a, o_v)

  hvp = _torch_hypergradient(losses, alpha, state.params)
  want_grad = float(jnp.mean(hvp["encoders"]["audio"]["fc1"]["kernel"]))
  assert abs(want_grad) > 1e-6
  after = hooks.epoch_end(state, [{}], next_epoch=1)
  got = np.asarray(optax_get(after.opt_state, "lfm_alpha"))
  np.testing.assert_allclose(got, next_alpha(np.asarray(alpha), want_grad, 1, 200.0), rtol=1e-4)
  first = hooks.prepare(state)
  first_alpha = np.asarray(optax_get(first.opt_state, "lfm_alpha"))
  assert abs(first_alpha[1] - next_alpha(np.asarray(alpha), want_grad, 0, 200.0)[1]) > 1e-6


def optax_get(tree, field):
  import optax
  return optax.tree_utils.tree_get(tree, field)


# ------------------------------------------------------------------ ReconBoost


def reference_reconboost_passes(num_bb_epochs, modalities, t_epochs):
  """ReconBoost_trainer.py `fit` / `train_loop`: every epoch, for each modality:
  T passes of training_step1(modality), then T passes of training_step2."""
  out = []
  for _ in range(num_bb_epochs):
    for m in modalities:
      out += [(1, m)] * t_epochs + [(2, None)] * t_epochs
  return out


def reference_reconboost_step1_loss(unimodal, rate, label, modality, pre_modality, key,
                                    weight1, weight2, alpha, first_epoch):
  """`training_step1`: out_join = boost_rate · Σ_{n≠m} fc_out(f_n) (no grad);
  boosting_loss = −w1·(y·log_softmax(o_m)).mean(-1) + w2·(y·softmax(out_join)·
  log_softmax(o_m)).mean(-1); + α·MSE(softmax(o_m), softmax(o_pre)) after epoch 0;
  loss.mean()."""
  out_join = rate * sum(unimodal[n] for n in key if n != modality)
  target = np.eye(unimodal[modality].shape[1])[label]
  log_p = np.log(_softmax(unimodal[modality]))
  boosting = (-weight1 * (target * log_p).mean(-1)
              + weight2 * (target * _softmax(out_join) * log_p).mean(-1))
  if first_epoch:
    return float(boosting.mean())
  ga = float(np.mean((_softmax(unimodal[modality]) - _softmax(unimodal[pre_modality])) ** 2))
  return float((boosting + alpha * ga).mean())


@pytest.mark.parametrize("num,t_epochs", [(2, 1), (3, 1), (2, 2)])
def test_reconboost_stages_follow_the_references_order(num, t_epochs):
  from asgml_jax.methods.reconboost import stage_of
  names = [f"m{i}" for i in range(num)]
  want = reference_reconboost_passes(3, names, t_epochs)
  got = []
  for epoch in range(len(want)):
    stage, index = stage_of(epoch, t_epochs, num)
    got.append((int(stage), names[int(index)] if int(stage) == 1 else None))
  assert got == want


def test_reconboost_losses_and_skipped_parameters_equal_the_reference():
  """One step per epoch: epoch 0 stage 1 audio, 1 stage 2, 2 stage 1 visual (with the
  reconcilement term), 3 stage 2. In stage 1 the other encoder and the boost rate do
  not move at all (no momentum, no weight decay: PyTorch skips them)."""
  config = _config("reconboost")
  r = config.method.reconboost
  state, step, batch = jitted_step(config, steps_per_epoch=1)
  names = ("audio", "visual")
  for epoch in range(4):
    _, _, out, unimodal, _, _, labels = _outputs(config, state, batch)
    rate = float(state.params["fusion"]["boost_rate"])
    new, metrics = step(state, batch)
    if epoch in (0, 2):
      m = names[epoch // 2]
      want = reference_reconboost_step1_loss(unimodal, rate, labels, m, names[1 - names.index(m)],
                                             names, r.weight1, r.weight2, r.alpha, epoch == 0)
      assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
      other = names[1 - names.index(m)]
      assert largest_change(new.params["encoders"][other], state.params["encoders"][other]) == 0
      assert float(new.params["fusion"]["boost_rate"]) == rate
      assert largest_change(new.params["encoders"][m], state.params["encoders"][m]) > 0
      assert largest_change(new.params["fusion"]["kernel"], state.params["fusion"]["kernel"]) > 0
    else:
      assert float(metrics["loss"]) == pytest.approx(_ce(out, labels), rel=1e-5)
      np.testing.assert_allclose(out, rate * (unimodal["audio"] + unimodal["visual"]), rtol=1e-5,
                                 atol=1e-6)
      assert float(new.params["fusion"]["boost_rate"]) != rate
    state = new


def test_reconboost_under_torch_1_12_steps_every_parameter_that_had_a_gradient():
  """BalanceBenchmark's README installs torch 1.12.1, whose
  `optimizer.zero_grad()` (ReconBoost_trainer.py:247, :293) fills `.grad` with
  zeros and nothing deletes them: after the first stage 2 (epoch 1) every
  parameter holds a gradient, so stage 1 of visual (epoch 2) also steps the
  audio encoder and the boost rate, on a zero gradient: with plain SGD
  (momentum 0) p ← p − lr·wd·p exactly. In epoch 0 the visual encoder has
  never had one and stays put."""
  lr, wd = 0.05, 0.01
  config = _config("reconboost", **{"method.protocol": "reference", "optimizer.momentum": 0.0,
                                    "optimizer.weight_decay": wd})
  assert config.optimizer.zero_grad == "zeros"
  state, step, batch = jitted_step(config, steps_per_epoch=1, lr_fn=lambda s: lr)
  for epoch in range(3):
    new, _ = step(state, batch)
    if epoch == 0:
      assert largest_change(new.params["encoders"]["visual"],
                            state.params["encoders"]["visual"]) == 0
    if epoch == 2:
      for got, old in zip(jax.tree.leaves(new.params["encoders"]["audio"]),
                          jax.tree.leaves(state.params["encoders"]["audio"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(old) * (1 - lr * wd),
                                   rtol=1e-6, atol=1e-9)
      rate = float(state.params["fusion"]["boost_rate"])
      assert float(new.params["fusion"]["boost_rate"]) == pytest.approx(rate * (1 - lr * wd),
                                                                         rel=1e-6)
    state = new


# ------------------------------------------------------------------ AMCo


def reference_amco_mask_sizes(epoch, num_batches, num_classes, eps=0.3):
  """AMCo_trainer.py `train_loop`: l_t = 0 at the epoch's start; per batch
  pt = sin(π/2·min(eps, l_t)/eps), N = int(pt·C) zeros, then l_t += epoch/10."""
  out, l_t = [], 0.0
  for _ in range(num_batches):
    pt = np.sin(np.pi / 2 * (min(eps, l_t) / eps))
    out.append(int(pt * num_classes))
    l_t += epoch / 10
  return out


def reference_amco_step(unimodal, dependent, mask, mixer_kernel, mixer_bias, label, key, sigma):
  """`BaseClassifierAMCoModel.forward` + `training_step`: ũ_m = u_m·mask for the
  dependent; out = linear_star(Σ ũ); loss = CE(out) + Σ CE(ũ_m) (each backward'ed);
  next dependent = share of softmax(cat ũ) > σ. (The mask broadcast over the batch.)"""
  masked = {m: unimodal[m] * mask if dependent[m] else unimodal[m] for m in key}
  out = sum(masked.values()) @ mixer_kernel + mixer_bias
  loss = _ce(out, label) + sum(_ce(masked[m], label) for m in key)
  sft = _softmax(np.concatenate([masked[m] for m in key], 1))
  c = unimodal[key[0]].shape[1]
  nxt = {m: bool(np.sum(sft[:, i * c:(i + 1) * c]) / len(label) > sigma)
         for i, m in enumerate(key)}
  return loss, nxt


@pytest.mark.parametrize("epoch", [0, 1, 2, 5])
def test_amco_mask_grows_as_in_the_reference(epoch):
  from asgml_jax.methods.amco import class_mask
  want = reference_amco_mask_sizes(epoch, 12, 10)
  got = []
  for b in range(12):
    mask, _ = class_mask(jax.random.PRNGKey(0), jnp.int32(epoch * 12 + b), 12, 10, 0.3)
    got.append(int(10 - np.asarray(mask).sum()))
  assert got == want


def test_amco_step_equals_the_reference_with_a_dependent_modality():
  import optax

  from asgml_jax.methods.amco import class_mask
  config = _config("amco")
  state, step, batch = jitted_step(config, steps_per_epoch=4)
  for _ in range(6):                            # into epoch 1, batch 2: a partial mask
    state, _ = step(state, batch)
  state = state.replace(opt_state=optax.tree_utils.tree_set(
      state.opt_state, amco_dependent={"audio": jnp.float32(1.0), "visual": jnp.float32(0.0)}))
  names, _, _, unimodal, _, _, labels = _outputs(config, state, batch)
  mask, p = class_mask(state.rng, state.step, 4, 4, 0.3)
  assert 0 < float(np.asarray(mask).sum()) < 4
  mixer = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params["logit_mixer"])
  want, nxt = reference_amco_step(unimodal, {"audio": True, "visual": False}, np.asarray(mask),
                                  mixer["kernel"], mixer["bias"], labels, names, 0.5)
  new, metrics = step(state, batch)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  got = optax.tree_utils.tree_get(new.opt_state, "amco_dependent")
  assert {m: bool(got[m]) for m in names} == nxt


def reference_amco_validation_logits(features, weight, bias, key):
  """BalanceBenchmark avclassify_model.py: `BaseClassifierAMCoModel` has no
  `validation_step` of its own; `BaseClassifierModel.validation_step` (:303-324)
  runs the forward pass, then `self.unimodality_calculate()` (:311), the AMCo
  model's (:357-385) with mask=None and no dependent modality:
  unimodal[m] = mm(x_m, fc_out.weight[:, block_m]ᵀ) + fc_out.bias / N and
  output = Σ_m unimodal[m] (:378); `out = self.unimodal_result['output']` (:318)
  is what the loss and the prediction read; `linear_star` is not applied."""
  unimodal, start = {}, 0
  for m in key:
    d = features[m].shape[1]
    unimodal[m] = features[m] @ weight[:, start:start + d].T + bias / len(key)
    start += d
  return sum(unimodal.values()), unimodal


@pytest.mark.parametrize("choice", ["default", "mixer"])
def test_amco_evaluates_as_the_reference_with_the_sum_of_split_logits(choice):
  overrides = {"method.amco.eval_logits": "mixer"} if choice == "mixer" else {}
  config = _config("amco", **overrides)
  assert config.method.amco.eval_logits == ("mixer" if choice == "mixer" else "sum")
  state, batch, got = evaluated_after_a_step(config)
  names, feats, out, _, kernel, bias, _ = _outputs(config, state, batch)
  fused, unimodal = reference_amco_validation_logits(feats, kernel.T, bias, names)
  want = out if choice == "mixer" else fused       # out: linear_star(Σ_m u_m)
  assert np.abs(out - fused).max() > 1e-3          # the two choices differ here
  np.testing.assert_allclose(np.asarray(got["logits"]), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["logits_audio"]), unimodal["audio"], rtol=1e-5,
                             atol=1e-5)
