"""G2D against its reference (rAIson-Lab/G2D student.py `train`,
`distillation_loss`, `feature_loss`; utils/utils.py
`modulate_gradients_based_on_scores_from_two_modalities`), written out the
reference's way: the loss in float64 NumPy, its gradient by autograd of the
same formulas, then the per-parameter loop that multiplies each encoder's
gradient by its coefficient, and plain SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgml_jax.plan import Plan
from conftest import jitted_step, variant_config


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reference_scores(teacher_logits: dict, labels) -> dict:
  """score_teacher_m = sum([softmax(t_m)[i][labels[i]] for i in range(B)])."""
  return {m: sum(_softmax(np.asarray(t, np.float64))[i][labels[i]] for i in range(len(labels)))
          for m, t in teacher_logits.items()}


def reference_coefficients(score_a, score_v) -> tuple[float, float]:
  """The reference's branch: the stronger teacher's modality gets 0."""
  if score_a > score_v:
    return 0.0, 1.0
  if score_a < score_v:
    return 1.0, 0.0
  raise ValueError("tie")


def reference_distillation_loss(student, teacher, temp):
  """kl_div(log_softmax(s/T), softmax(t/T), reduction='batchmean') · T²."""
  p = _softmax(np.asarray(teacher, np.float64) / temp)
  s = np.asarray(student, np.float64) / temp
  log_q = s - s.max(-1, keepdims=True)
  log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
  return float(np.sum(p * (np.log(p) - log_q)) / len(s)) * temp ** 2


@pytest.fixture(scope="module")
def g2d_run(tfds_dir, tmp_path_factory):
  """(config, state, step, batch) of g2d with its teachers (seed 42) trained for 1 epoch;
  plain SGD, so an update is −lr · gradient."""
  from asgml_jax import teachers
  root = tmp_path_factory.mktemp("g2d_teachers")
  config = variant_config("g2d", data_dir=tfds_dir, **{
      "num_epochs": 1, "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
      "method.teachers.dir": str(root), "method.g2d.modulation_ends": 0})
  teachers.ensure(Plan.build(config), [config.seed])
  state, step, batch = jitted_step(config, lr_fn=lambda s: 0.05)
  return config, state, step, batch


def _reference_step(config, state, batch, lr, active=True):
  """The new params of one reference step (student.py `train` + the modulation)."""
  from asgml_jax.models import model_from_config
  from asgml_jax.plan import Teachers
  names = ("audio", "visual")
  model = model_from_config(config, 4)
  held = optax.tree_utils.tree_get(state.opt_state, "umt_teachers")
  labels = np.asarray(batch["label"])
  t_out = {}
  for m in names:
    tm = Teachers(config, 4, None).model(m)
    out = tm.apply({"params": held[m]["params"]}, {m: batch[m]}, train=False)
    t_out[m] = (out["features"][m], out["logits"])

  def loss(p):
    out = model.apply({"params": p}, {m: batch[m] for m in names}, train=True)
    s = out["logits"]
    ce = -jnp.mean(jax.nn.log_softmax(s)[jnp.arange(len(labels)), labels])
    total = ce
    for m in names:
      tf, tl = t_out[m]
      pt = jax.nn.softmax(tl)
      total += jnp.sum(pt * (jnp.log(pt) - jax.nn.log_softmax(s))) / len(labels)  # T = 1
      total += jnp.mean((out["features"][m] - tf) ** 2)
    return total, out

  (value, out), grad = jax.value_and_grad(loss, has_aux=True)(state.params)
  scores = reference_scores({m: t_out[m][1] for m in names}, labels)
  coeff_a, coeff_v = reference_coefficients(scores["audio"], scores["visual"])
  grad = dict(grad)
  if active:
    grad["encoders"] = {"audio": jax.tree.map(lambda g: g * coeff_a, grad["encoders"]["audio"]),
                        "visual": jax.tree.map(lambda g: g * coeff_v, grad["encoders"]["visual"])}
  new = jax.tree.map(lambda w, g: w - lr * g, state.params, grad)
  return new, float(value), out, t_out, (coeff_a, coeff_v)


def _assert_params(got, want):
  for path, g, w in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got),
                        jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path[0]))


def test_g2d_step_is_the_reference_distillation_and_prioritisation(g2d_run):
  config, state, step, batch = g2d_run
  new, metrics = step(state, batch)
  want, value, out, t_out, coeffs = _reference_step(config, state, batch, 0.05)
  assert float(metrics["loss"]) == pytest.approx(value, rel=1e-5)
  # the loss terms, each from the NumPy transcription
  for m in ("audio", "visual"):
    kl = reference_distillation_loss(out["logits"], t_out[m][1], 1.0)
    assert float(metrics[f"g2d/kl_{m}"]) == pytest.approx(kl, rel=1e-5)
  assert sorted(coeffs) == [0.0, 1.0]          # one modality frozen in this step
  _assert_params(new.params, want)
  frozen = "audio" if coeffs[0] == 0.0 else "visual"
  for a, b in zip(jax.tree.leaves(new.params["encoders"][frozen]),
                  jax.tree.leaves(state.params["encoders"][frozen])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  logged = optax.tree_utils.tree_get(new.opt_state, "g2d_coefficients")
  assert {m: float(v) for m, v in logged.items()} == dict(zip(("audio", "visual"), coeffs))


def test_g2d_after_its_window_every_encoder_updates(g2d_run):
  config, state, step, batch = g2d_run
  later = state.replace(step=jnp.asarray(6, jnp.int32))     # epoch 1 > modulation_ends 0
  new, _ = step(later, batch)
  want, *_ = _reference_step(config, later, batch, 0.05, active=False)
  _assert_params(new.params, want)


def test_g2d_prioritises_the_weakest_teacher_for_n_modalities():
  from asgml_jax.methods.g2d import prioritised
  from asgml_jax.losses import batch_scores as teacher_scores
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 16)
  for _ in range(20):                                   # N = 2: the reference's branch
    logits = {m: rng.normal(size=(16, 5)) * 3 for m in ("audio", "visual")}
    ref = reference_scores(logits, labels)
    got = teacher_scores({m: jnp.asarray(v, jnp.float32) for m, v in logits.items()},
                         jnp.asarray(labels))
    for m in ref:
      assert float(got[m]) == pytest.approx(ref[m], rel=1e-5)
    c = prioritised(got)
    assert (float(c["audio"]), float(c["visual"])) == reference_coefficients(
        ref["audio"], ref["visual"])
  three = prioritised({"a": jnp.asarray(2.0), "b": jnp.asarray(0.5), "c": jnp.asarray(3.0)})
  assert {m: float(v) for m, v in three.items()} == {"a": 0.0, "b": 1.0, "c": 0.0}
  tie = prioritised({"a": jnp.asarray(1.0), "b": jnp.asarray(1.0)})
  assert {m: float(v) for m, v in tie.items()} == {"a": 1.0, "b": 1.0}


def test_g2d_refusals():
  from asgml_jax.config_schema import validate
  from configs.variants import apply_variant
  from conftest import tiny_mlp_config
  config = apply_variant(tiny_mlp_config("/tmp/unused"), "g2d")
  config.method.g2d.modulation_starts = 3
  config.method.g2d.modulation_ends = 2
  with pytest.raises(ValueError, match="method.g2d.modulation_ends"):
    validate(config)
  config = apply_variant(tiny_mlp_config("/tmp/unused"), "g2d")
  config.method.stack = "g2d,umt"
  with pytest.raises(ValueError, match="g2d and umt"):
    validate(config)
