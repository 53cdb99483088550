"""DGL against its reference's training step (shicaiwei123/ICCV2025-GDL
main_dgl.py `train_epoch`, models/fusion_modules.py `ConcatFusion_DGL`),
written out the reference's way: two backward passes, the fusion layer's
gradient from the unimodal pass dropped (`parms.grad = None`), then
`clip_grad_norm_(…, 40)` and plain SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted_step, variant_config


def _config(three=False, **settings):
  """dgl with plain SGD (no momentum, no weight decay): an update is −lr · gradient."""
  return variant_config("dgl", three=three, **{"optimizer.momentum": 0.0,
                                               "optimizer.weight_decay": 0.0, **settings})


def _ce(logits, labels):
  return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])


def reference_dgl_gradient(model, params, batch, alpha, max_norm):
  """main_dgl.py train_epoch for one batch: the gradient that reaches optimizer.step()."""
  names = model.modality_names
  inputs = {m: batch[m] for m in names}
  labels = batch["label"]

  def forward(p):
    feats = model.apply({"params": p}, inputs, train=True)["features"]
    x = [feats[m] for m in names]
    w, b = p["fusion"]["kernel"], p["fusion"]["bias"]
    fused = jnp.concatenate([jax.lax.stop_gradient(f) for f in x], 1) @ w + b   # output.detach()
    outs = []
    for i in range(len(names)):                 # fc_out(cat(x_i, zeros_like(others)))
      parts = [x[j] if j == i else jnp.zeros_like(x[j]) for j in range(len(names))]
      outs.append(jnp.concatenate(parts, 1) @ w + b)
    return fused, outs

  def unimodal_loss(p):
    _, outs = forward(p)
    return sum(_ce(o, labels) for o in outs) * alpha

  def fused_loss(p):
    fused, _ = forward(p)
    return _ce(fused, labels)

  g1 = jax.grad(unimodal_loss)(params)
  g1 = {**g1, "fusion": jax.tree.map(jnp.zeros_like, g1["fusion"])}   # parms.grad = None
  g2 = jax.grad(fused_loss)(params)
  grad = jax.tree.map(lambda a, b: a + b, g1, g2)
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grad)))
  scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))                  # clip_grad_norm_
  loss = fused_loss(params) + unimodal_loss(params)
  return jax.tree.map(lambda g: g * scale, grad), float(loss), float(norm)


@pytest.mark.parametrize("three,max_norm", [(False, 40.0), (False, 0.5), (True, 40.0)])
def test_dgl_step_moves_every_parameter_as_the_reference(three, max_norm):
  from asgml_jax.models import model_from_config
  config = _config(three, **{"method.dgl.clip_norm": max_norm})
  lr = 0.05
  state, step, batch = jitted_step(config, lr_fn=lambda s: lr)
  model = model_from_config(config, 4)
  want, loss, norm = reference_dgl_gradient(model, state.params, batch, 4.0, max_norm)
  new, metrics = step(state, batch)
  assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
  assert (norm > max_norm) == (max_norm == 0.5)          # the clip acts in one case only
  for path, w, g, n in zip(jax.tree_util.tree_leaves_with_path(state.params),
                           jax.tree.leaves(state.params), jax.tree.leaves(want),
                           jax.tree.leaves(new.params)):
    np.testing.assert_allclose(np.asarray(n), np.asarray(w - lr * g), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path[0]))


def test_dgl_encoders_get_no_gradient_from_the_fused_loss():
  """With α = 0 nothing reaches the encoders; the fusion layer still learns."""
  from conftest import largest_change
  config = _config(**{"loss.unimodal_weight": 0.0})
  state, step, batch = jitted_step(config, lr_fn=lambda s: 0.05)
  new, _ = step(state, batch)
  assert largest_change(new.params["encoders"], state.params["encoders"]) == 0.0
  assert largest_change(new.params["fusion"], state.params["fusion"]) > 1e-4


def test_dgl_evaluates_the_unimodal_logits_with_the_whole_bias_as_the_reference():
  """shicaiwei123/ICCV2025-GDL main_dgl.py:200-210 (`valid`): the unimodal
  predictions are argmax of out_a, out_v from the model's forward, which
  models/fusion_modules.py:57-58 computes as fc_out(cat(x, 0)) and
  fc_out(cat(0, y)): W_m x_m + b with fc_out's whole bias; the fused one is
  fc_out(cat(x, y)) (:56)."""
  from asgml_jax.models import model_from_config
  from conftest import evaluated_after_a_step
  config = _config()
  state, batch, got = evaluated_after_a_step(config)
  model = model_from_config(config, 4)
  names = model.modality_names
  out = model.apply({"params": state.params}, {m: batch[m] for m in names}, train=False)
  f64 = lambda x: np.asarray(x, np.float64)
  feats = {m: f64(out["features"][m]) for m in names}
  weight = f64(state.params["fusion"]["kernel"]).T          # fc_out.weight (C, Σ D)
  bias = f64(state.params["fusion"]["bias"])
  assert np.abs(bias).max() > 1e-4                          # the bias matters here
  zeros = {m: np.zeros_like(f) for m, f in feats.items()}
  for m in names:
    cat = np.concatenate([feats[k] if k == m else zeros[k] for k in names], 1)
    np.testing.assert_allclose(np.asarray(got[f"logits_{m}"]), cat @ weight.T + bias,
                               rtol=1e-5, atol=1e-5)
  full = np.concatenate([feats[k] for k in names], 1)
  np.testing.assert_allclose(np.asarray(got["logits"]), full @ weight.T + bias, rtol=1e-5,
                             atol=1e-5)
