"""IPRM against its reference (njustkmg/IJCAI25-IPRM main_av.py `train_epoch`,
`slerp`, `compute_kl_divergence`, `valid`; main_trimodal.py `tri_cls`),
transcribed into float64 NumPy for the probe and the loss, autograd of the
same formulas for the gradient, and plain SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import jitted_step, variant_config


def np_slerp(x, y, lam_x, lam_y):
  x = x / np.linalg.norm(x, 2, axis=1, keepdims=True)
  y = y / np.linalg.norm(y, 2, axis=1, keepdims=True)
  dot = np.clip(np.sum(x * y, axis=1), -1.0, 1.0)
  theta = np.arccos(dot)[:, None] * np.ones_like(x)
  sin_theta = np.sin(theta) + 1e-8
  return np.sin(lam_x * theta) / sin_theta * x + np.sin(lam_y * theta) / sin_theta * y


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_kl(logits1, logits2):
  p = np.exp(np_log_softmax(logits1))
  return float(np.mean(np.sum(p * (np_log_softmax(logits1) - np_log_softmax(logits2)), -1)))


def np_ce(logits, labels):
  return float(-np.mean(np_log_softmax(logits)[np.arange(len(labels)), labels]))


def np_dense(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def reference_probe_and_loss(params, feats, uni, labels, lam_prev, hat_prev, alpha):
  """One train_epoch iteration: λ (EMA), the no-grad probe, λ̂, and the loss."""
  names = sorted(feats)
  lam, hat, loss = {}, {}, sum(np_ce(uni[m], labels) for m in names)
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      k = f"{names[i]}_and_{names[j]}"
      head = params["method_layers"]["iprm"][k]
      lam[k] = np.asarray(lam_prev[k]) * alpha + np.asarray(hat_prev[k]) * (1 - alpha)
      out_tmp = np_dense(head, np_slerp(feats[names[i]], feats[names[j]], *lam[k]))
      kl_a, kl_v = np_kl(uni[names[i]], out_tmp), np_kl(uni[names[j]], out_tmp)
      hat[k] = np.array([kl_v / (kl_a + kl_v), kl_a / (kl_a + kl_v)])
      out_mm = np_dense(head, np_slerp(feats[names[i]], feats[names[j]], *hat[k]))
      loss += np_ce(out_mm, labels)
  return lam, hat, loss


def _config(three=False):
  return variant_config("iprm", three=three, **{"optimizer.momentum": 0.0,
                                                "optimizer.weight_decay": 0.0})


@pytest.mark.parametrize("three", [False, True])
def test_iprm_two_steps_are_the_reference_probe_rebalance_and_update(three):
  from asgml_jax.plan import Plan
  config = _config(three)
  # njustkmg/IJCAI25-IPRM README.md:8 and :12 run every script with --alpha 0.8
  assert config.method.iprm.alpha == 0.8
  lr = 0.05
  state, step, batch = jitted_step(config, lr_fn=lambda s: lr)
  model = Plan.build(config).model(4)
  names = model.modality_names
  labels = np.asarray(batch["label"])
  lam_prev = {k: np.full(2, 0.5) for k in optax.tree_utils.tree_get(state.opt_state,
                                                                    "iprm_lambda")}
  hat_prev = dict(lam_prev)
  for _ in range(2):
    out = model.apply({"params": state.params}, {m: batch[m] for m in names}, train=True)
    f64 = lambda d: {m: np.asarray(v, np.float64) for m, v in d.items()}
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
    lam, hat, loss = reference_probe_and_loss(params64, f64(out["features"]),
                                              f64(out["unimodal_logits"]), labels,
                                              lam_prev, hat_prev, 0.8)

    def reference_loss(p):        # the rebalance loss with λ̂ a constant (autograd)
      from asgml_jax.methods.iprm import slerp
      o = model.apply({"params": p}, {m: batch[m] for m in names}, train=True)
      ce = lambda z: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(len(labels)), labels])
      total = sum(ce(o["unimodal_logits"][m]) for m in names)
      for k, h in hat.items():
        a, b = k.split("_and_")
        head = p["method_layers"]["iprm"][k]
        mixed = slerp(o["features"][a], o["features"][b], *jnp.asarray(h, jnp.float32))
        total += ce(mixed @ head["kernel"] + head["bias"])
      return total

    grad = jax.grad(reference_loss)(state.params)
    new, metrics = step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
    got_lam = optax.tree_utils.tree_get(new.opt_state, "iprm_lambda")
    got_hat = optax.tree_utils.tree_get(new.opt_state, "iprm_lambda_hat")
    for k in lam:
      np.testing.assert_allclose(np.asarray(got_lam[k]), lam[k], rtol=1e-5)
      np.testing.assert_allclose(np.asarray(got_hat[k]), hat[k], rtol=1e-4)
    for path, w, g, n in zip(jax.tree_util.tree_leaves_with_path(state.params),
                             jax.tree.leaves(state.params), jax.tree.leaves(grad),
                             jax.tree.leaves(new.params)):
      np.testing.assert_allclose(np.asarray(n), np.asarray(w - lr * g), rtol=1e-4, atol=1e-6,
                                 err_msg=jax.tree_util.keystr(path[0]))
    state, lam_prev, hat_prev = new, lam, hat
  # after two steps λ has left ½ (the EMA of a probe that is not ½)
  assert all(abs(v[0] - 0.5) > 1e-4 for v in lam.values())
  assert len(lam) == (3 if three else 1)


def test_iprm_predicts_with_the_unimodal_heads_plus_the_mean_mixup_head():
  from asgml_jax.methods import iprm
  from asgml_jax.plan import Plan
  config = _config(three=True)
  state, step, batch = jitted_step(config, lr_fn=lambda s: 0.05)
  state, _ = step(state, batch)
  model = Plan.build(config).model(4)
  names = model.modality_names
  out = model.apply({"params": state.params}, {m: batch[m] for m in names}, train=False)
  from asgml_jax.methods.base import BuildContext
  replace = iprm.eval_logits(BuildContext(config, 6, 4, names))
  got = replace(state, batch, out)["logits"]
  lam = optax.tree_utils.tree_get(state.opt_state, "iprm_lambda")        # λ, not λ̂
  f = {m: np.asarray(v, np.float64) for m, v in out["features"].items()}
  params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
  mixed = [np_dense(params64["method_layers"]["iprm"][k],
                    np_slerp(f[k.split("_and_")[0]], f[k.split("_and_")[1]], *np.asarray(v)))
           for k, v in lam.items()]
  want = sum(np.asarray(out["unimodal_logits"][m], np.float64) for m in names) \
      + sum(mixed) / len(mixed)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_iprm_slerp_matches_the_reference_at_the_ends_and_between():
  from asgml_jax.methods.iprm import slerp
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
  for lx, ly in [(0.5, 0.5), (0.2, 0.8), (1.0, 0.0)]:
    np.testing.assert_allclose(np.asarray(slerp(jnp.asarray(x), jnp.asarray(y), lx, ly)),
                               np_slerp(x, y, lx, ly), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np_slerp(x, y, 1.0, 0.0),
                             x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
