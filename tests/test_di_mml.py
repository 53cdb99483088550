"""DI-MML against its reference (fanyunfeng-bit/DI-MML main_CFT.py `train_epoch`,
`get_indices`; loss/contrast_loss.py `SupConLoss`; main_CFT_stage2.py
`train_combine_classifier_epoch`, `valid_combine_classifier`), transcribed
loop for loop into float64 NumPy (autograd of the same formulas for the
gradient) and compared with the jitted step under plain SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import jitted_step, variant_config


def reference_get_indices(a_feats, v_feats, labels, n_classes):
  """get_indices: class centroids from per-example sums, the per-dimension
  nearest-centroid hit, the dims above the mean hit rate, the set differences."""
  dim = a_feats.shape[1]
  h_a, h_v = np.zeros((n_classes, dim)), np.zeros((n_classes, dim))
  cnts = np.zeros(n_classes)
  for a, v, y in zip(a_feats, v_feats, labels):       # the batch-size-1 loader
    h_a[y] += a
    h_v[y] += v
    cnts[y] += 1
  a_h, v_h = (h_a.T / cnts).T, (h_v.T / cnts).T
  dist_a = np.abs(np.repeat(a_feats[:, None, :], n_classes, 1) - a_h)
  dist_v = np.abs(np.repeat(v_feats[:, None, :], n_classes, 1) - v_h)
  argmin_a = (np.argmin(dist_a, axis=1) == np.repeat(labels[:, None], dim, 1)).astype(float)
  argmin_v = (np.argmin(dist_v, axis=1) == np.repeat(labels[:, None], dim, 1)).astype(float)
  top_a = np.nonzero(argmin_a.mean(0) > argmin_a.mean())[0]
  top_v = np.nonzero(argmin_v.mean(0) > argmin_v.mean())[0]
  return sorted(set(top_a) - set(top_v)), sorted(set(top_v) - set(top_a))


def reference_supcon(a, v, audio_only, image_only, temperature):
  """SupConLoss.forward, the per-example loop (values only)."""
  b = len(a)
  ao, vao = a[:, audio_only], v[:, audio_only]
  vo, avo = v[:, image_only], a[:, image_only]
  v_loss = a_loss = 0.0
  for i in range(b):
    v_loss += -np.log(np.exp(vao[i] @ ao[i] / temperature).sum()
                      / np.exp(vao[i] @ ao.T / temperature).sum())
    a_loss += -np.log(np.exp(avo[i] @ vo[i] / temperature).sum()
                      / np.exp(avo[i] @ vo.T / temperature).sum())
  return v_loss / b + a_loss / b


def _blobs(rng, n=120, classes=4, dim=24):
  labels = rng.integers(0, classes, n)
  centres_a, centres_v = rng.normal(size=(classes, dim)), rng.normal(size=(classes, dim))
  scale_a = np.where(np.arange(dim) < dim // 2, 0.5, 3.0)      # audio separable on its half
  scale_v = np.where(np.arange(dim) >= dim // 3, 0.5, 3.0)
  a = centres_a[labels] + rng.normal(size=(n, dim)) * scale_a
  v = centres_v[labels] + rng.normal(size=(n, dim)) * scale_v
  return a, v, labels


def test_di_mml_own_dimensions_are_get_indices():
  from asgml_jax.methods.di_mml import own_dimensions, top_dimensions
  rng = np.random.default_rng(0)
  a, v, labels = _blobs(rng)
  want_a, want_v = reference_get_indices(a, v, labels, 4)
  top = {"audio": top_dimensions(a, labels, 4, chunk=7).astype(np.float32),
         "visual": top_dimensions(v, labels, 4).astype(np.float32)}
  got_a = np.nonzero(np.asarray(own_dimensions(top, "audio", "visual")))[0].tolist()
  got_v = np.nonzero(np.asarray(own_dimensions(top, "visual", "audio")))[0].tolist()
  assert got_a == want_a and got_v == want_v
  assert want_a and want_v                        # both sets non-empty on these blobs


@pytest.mark.parametrize("temperature", [1.0, 50.0])
def test_di_mml_contrastive_loss_is_supconloss(temperature):
  from asgml_jax.methods.di_mml import contrastive_loss
  rng = np.random.default_rng(1)
  a, v = rng.normal(size=(16, 12)), rng.normal(size=(16, 12))
  audio_only, image_only = [0, 3, 4, 9], [1, 2, 10]
  top = {"audio": np.isin(np.arange(12), audio_only + [5, 6]).astype(np.float32),
         "visual": np.isin(np.arange(12), image_only + [5, 6]).astype(np.float32)}
  feats = {"audio": jnp.asarray(a, jnp.float32), "visual": jnp.asarray(v, jnp.float32)}
  got = float(contrastive_loss(feats, {m: jnp.asarray(t) for m, t in top.items()}, temperature))
  assert got == pytest.approx(reference_supcon(a, v, audio_only, image_only, temperature),
                              rel=1e-5)

  def reference_jnp(av):             # the same loop in jnp, for its gradient
    x, y = av
    total = 0.0
    for rows, cols, q, k in ((y, audio_only, y, x), (x, image_only, x, y)):
      q, k = q[:, cols], jax.lax.stop_gradient(k[:, cols])
      for i in range(16):
        total += -jnp.log(jnp.exp(q[i] @ k[i] / temperature)
                          / jnp.exp(q[i] @ k.T / temperature).sum()) / 16
    return total

  want = jax.grad(reference_jnp)((feats["audio"], feats["visual"]))
  have = jax.grad(lambda av: contrastive_loss({"audio": av[0], "visual": av[1]},
                                              {m: jnp.asarray(t) for m, t in top.items()},
                                              temperature))((feats["audio"], feats["visual"]))
  for w, h in zip(want, have):
    np.testing.assert_allclose(np.asarray(h), np.asarray(w), rtol=1e-4, atol=1e-7)


WD = 0.01


def _config(**settings):
  """SGD without momentum, with weight decay (torch's: added to the gradient), so a frozen
  layer's zero gradient would still move it if it were not frozen."""
  return variant_config("di_mml", **{"optimizer.momentum": 0.0, "optimizer.weight_decay": WD,
                                     "num_epochs": 4, "method.di_mml.fusion_epochs": 2,
                                     "method.di_mml.contrast_epoch": 1, **settings})


def _ce(logits, labels):
  return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])


def _assert_params(got, want):
  for path, g, w in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got),
                        jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path[0]))


def test_di_mml_steps_of_both_stages_are_the_reference():
  from asgml_jax.plan import Plan
  config = _config()
  lr = 0.05
  state, step, batch = jitted_step(config, lr_fn=lambda s: lr)        # 6 steps per epoch
  model = Plan.build(config).model(4)
  names = ("audio", "visual")
  inputs, labels = {m: batch[m] for m in names}, batch["label"]
  rng = np.random.default_rng(2)
  top = {m: (rng.random(8) < 0.5).astype(np.float32) for m in names}
  opt_state = optax.tree_utils.tree_set(state.opt_state,
                                        di_mml_top={m: jnp.asarray(t) for m, t in top.items()})
  audio_only = [d for d in range(8) if top["audio"][d] and not top["visual"][d]]
  image_only = [d for d in range(8) if top["visual"][d] and not top["audio"][d]]
  assert audio_only and image_only

  for epoch, contrast in ((0, False), (1, True)):       # stage 1, before and after E
    s = state.replace(step=jnp.asarray(6 * epoch, jnp.int32), opt_state=opt_state)

    def stage1_loss(p):                                   # main_CFT.py train_epoch
      out = model.apply({"params": p}, inputs, train=True)
      a, v = out["features"]["audio"], out["features"]["visual"]
      shared = p["method_layers"]["di_mml"]["shared"]
      total = _ce(out["unimodal_logits"]["audio"], labels) + _ce(out["unimodal_logits"]["visual"],
                                                                 labels)
      total += sum(_ce(f @ shared["kernel"] + shared["bias"], labels) for f in (a, v)) * 1.0
      if contrast:
        total += supcon_jnp(a, v, audio_only, image_only, 50.0)
      return total

    value, grad = jax.value_and_grad(stage1_loss)(s.params)
    new, metrics = step(s, batch)
    assert float(metrics["loss"]) == pytest.approx(float(value), rel=1e-5)
    want = jax.tree.map(lambda w, g: w - lr * (g + WD * w), s.params, grad)
    want = {**want, "fusion": s.params["fusion"]}          # the fusion module is not trained
    _assert_params(new.params, want)
    assert (float(metrics["di_mml/contrast_audio"]) > 0) == contrast
    assert (float(metrics["di_mml/contrast_visual"]) > 0) == contrast

  s = state.replace(step=jnp.asarray(6 * 2, jnp.int32), opt_state=opt_state)   # stage 2

  def stage2_loss(fusion):                                # train_combine_classifier_epoch
    feats = model.apply({"params": s.params}, inputs, train=False)["features"]   # eval()
    x = jnp.concatenate([feats["audio"], feats["visual"]], 1)
    return _ce(x @ fusion["kernel"] + fusion["bias"], labels)

  value, grad = jax.value_and_grad(stage2_loss)(s.params["fusion"])
  new, metrics = step(s, batch)
  assert float(metrics["loss"]) == pytest.approx(float(value), rel=1e-5)
  want = {**s.params, "fusion": jax.tree.map(lambda w, g: w - lr * (g + WD * w),
                                             s.params["fusion"], grad)}
  _assert_params(new.params, want)


def supcon_jnp(a, v, audio_only, image_only, temperature):
  total = 0.0
  for q, k, cols in ((v, a, audio_only), (a, v, image_only)):
    q, k = q[:, cols], jax.lax.stop_gradient(k[:, cols])
    logits = q @ k.T / temperature
    total += jnp.mean(-jnp.log(jnp.exp(jnp.diagonal(logits)) / jnp.exp(logits).sum(1)))
  return total


def test_di_mml_prediction_is_the_confidence_weighted_sum():
  from asgml_jax.methods.di_mml import prediction
  rng = np.random.default_rng(3)
  out1, out2, out3 = (rng.normal(size=(8, 5)) * 2 for _ in range(3))
  for temperature in (1.0, 0.2):
    soft = lambda x, axis=1: np.exp(x - x.max(axis, keepdims=True)) / np.exp(
        x - x.max(axis, keepdims=True)).sum(axis, keepdims=True)
    w = np.concatenate([soft(out1).max(1)[None], soft(out2).max(1)[None], soft(out3).max(1)[None]])
    w = soft(w / temperature, axis=0)
    want = out1 * np.repeat(w[0][:, None], 5, 1) + out2 * np.repeat(w[1][:, None], 5, 1) \
        + out3 * np.repeat(w[2][:, None], 5, 1)
    got = prediction({"audio": jnp.asarray(out1), "visual": jnp.asarray(out2)},
                     jnp.asarray(out3), temperature)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_di_mml_schedule_follows_the_reference_proportions():
  from asgml_jax.methods.di_mml import schedule
  assert schedule(_config(**{"method.di_mml.fusion_epochs": -1,
                             "method.di_mml.contrast_epoch": -1, "num_epochs": 170})) == (150, 20)
  assert schedule(_config(**{"method.di_mml.fusion_epochs": -1,
                             "method.di_mml.contrast_epoch": -1, "num_epochs": 20})) == (18, 2)


def test_di_mml_fusion_layer_starts_stage_2_with_a_fresh_optimizer():
  """main_CFT_stage2.py:284-285 builds `optim.SGD(classifier.parameters(),
  momentum=0.9, weight_decay=1e-4)` for stage 2 over the fusion module alone,
  so its first update is torch's first SGD step, buf = d_p = g + wd·w,
  w ← w − lr·buf, however long stage 1 ran (in which the stage-1 script has
  no fusion module); the encoders are not in that optimizer and stay put."""
  from asgml_jax.plan import Plan
  lr, wd = 0.05, 0.01
  config = _config(**{"optimizer.momentum": 0.9, "optimizer.weight_decay": wd})
  state, step, batch = jitted_step(config, lr_fn=lambda s: lr)        # 6 steps per epoch
  for _ in range(12):                                                  # stage 1: epochs 0, 1
    state, _ = step(state, batch)
  assert int(state.step) == 12
  model = Plan.build(config).model(4)
  names = ("audio", "visual")
  inputs, labels = {m: batch[m] for m in names}, batch["label"]

  def stage2_loss(fusion):
    feats = model.apply({"params": state.params}, inputs, train=False)["features"]
    x = jnp.concatenate([feats["audio"], feats["visual"]], 1)
    return _ce(x @ fusion["kernel"] + fusion["bias"], labels)

  grad = jax.grad(stage2_loss)(state.params["fusion"])
  new, _ = step(state, batch)
  want = jax.tree.map(lambda w, g: w - lr * (g + wd * w), state.params["fusion"], grad)
  _assert_params(new.params["fusion"], want)
  _assert_params(new.params["encoders"], state.params["encoders"])
