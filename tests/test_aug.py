"""AUG against its reference (njustkmg/NeurIPS25-AUG train_CREMAD.py
`train_audio_video`, `val` and the `add_layer` rule of its main loop;
model/AudioVideo.py `AVGBShareClassifier.classfier`), written out the
reference's way: the classifier loop over the added layers, the losses with
PyTorch's soft-target CrossEntropyLoss, one torch-SGD step per modality
(momentum, weight decay, parameters without a gradient skipped), derivatives
by autograd of those formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import jitted_step, variant_config

LR, MOMENTUM, WD = 0.05, 0.9, 0.01


def _config(**settings):
  return variant_config("aug", **{"optimizer.momentum": MOMENTUM, "optimizer.weight_decay": WD,
                                  "num_epochs": 4, **settings})


def reference_classifier(p, x, m, n_added):
  """classfier(x, is_a): embedding → fc_out, then each added layer → relu → fc_out."""
  fc = lambda h: h @ p["fc_out"]["kernel"] + p["fc_out"]["bias"]
  dense = lambda q, h: h @ q["kernel"] + q["bias"]
  feature = fc(jax.nn.relu(dense(p[f"embedding_{m}"], x)))
  o_fea, add_fea = feature, None
  for i in range(n_added):
    add_fea = fc(jax.nn.relu(dense(p[f"learner_{m}_{i}"], x)))
    feature = feature + add_fea
    if i + 1 < n_added:
      o_fea = feature
  return feature, o_fea, add_fea


def torch_ce(logits, target):
  """nn.CrossEntropyLoss(reduction='none')(logits, target).mean(), target one-hot or soft."""
  return jnp.mean(-jnp.sum(target * jax.nn.log_softmax(logits, -1), -1))


def reference_turn_loss(p, model, batch, m, n_added):
  x = model.apply({"params": p}, {k: batch[k] for k in ("audio", "visual")},
                  train=True)["features"][m]
  y = jax.nn.one_hot(batch["label"], 4)
  out, o_fea, add_fea = reference_classifier(p["method_layers"]["aug"], x, m, n_added)
  if add_fea is None:
    return torch_ce(out, y), out
  kl = y * jax.lax.stop_gradient(jax.nn.softmax(o_fea, 1))
  return (torch_ce(out, y) + torch_ce(o_fea, y) + torch_ce(add_fea, y)
          - 0.5 * torch_ce(add_fea, kl)), out


def trained_by(path: str, m: str, n_added: int, learners_in_optimizer: bool = True) -> bool:
  """Whether modality m's turn steps a parameter: it has a gradient and is one
  of the optimizer's. train_CREMAD.py:201 builds the SGD optimizer from
  model.parameters() before the epoch loop; the learners `add_layer` appends
  later (model/AudioVideo.py:67-74) are not among them
  (`learners_in_optimizer=False`, the reference as written)."""
  if path.startswith(f"encoders/{m}/"):
    return True
  if path.startswith("method_layers/aug/"):
    name = path.split("/")[2]
    return name in ("fc_out", f"embedding_{m}") or (learners_in_optimizer and any(
        name == f"learner_{m}_{k}" for k in range(n_added)))
  return False


def torch_sgd_turn(params, bufs, grads, m, counts, zeroed=(), learners=True):
  """optimizer.step(): parameters with a gradient (modality m's) step; those of
  `zeroed` modalities hold a zero gradient (PyTorch 1.11's zero_grad) and step too;
  the rest have None and are skipped."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  gflat = jax.tree.leaves(grads)
  new, new_bufs = [], dict(bufs)
  for (path, w), g in zip(flat, gflat):
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    if trained_by(key, m, counts[m], learners):
      pass
    elif any(trained_by(key, z, counts[z], learners) for z in zeroed):
      g = jnp.zeros_like(w)
    else:
      new.append(w)
      continue
    d = g + WD * w
    buf = d if key not in bufs else MOMENTUM * bufs[key] + d
    new_bufs[key] = buf
    new.append(w - LR * buf)
  return jax.tree.unflatten(jax.tree.structure(params), new), new_bufs


@pytest.mark.parametrize("skipped, learners", [("untouched", True), ("zero_grad", True),
                                               ("zero_grad", False)])
def test_aug_two_batches_are_the_reference_turns_with_torch_sgd(skipped, learners):
  """untouched: PyTorch >= 2 (zero_grad sets None); zero_grad: PyTorch 1.11, the
  reference's version, where the audio parameters' zeroed gradients make the
  visual turn's step apply momentum and weight decay to them; learners=False:
  the learners are not the optimizer's (the reference as written, and what
  `method.protocol=reference` sets)."""
  from asgml_jax.plan import Plan
  settings = {"optimizer.zero_grad": ("zeros_per_batch" if skipped == "zero_grad"
                                     else "set_to_none"),
              "method.aug.train_learners": learners}
  config = _config(**settings)
  if skipped == "zero_grad" and not learners:       # what the reference protocol sets
    reference = _config(**{"method.protocol": "reference"})
    assert reference.method.aug.train_learners is False
    assert reference.optimizer.zero_grad == "zeros_per_batch"
  state, step, batch = jitted_step(config, lr_fn=lambda s: LR)
  counts = {"audio": 1, "visual": 2}             # learners already assigned to both
  state = state.replace(opt_state=optax.tree_utils.tree_set(
      state.opt_state, aug_layers={m: jnp.asarray(v, jnp.int32) for m, v in counts.items()}))
  model = Plan.build(config).model(4)
  params, bufs, scores = state.params, {}, {"audio": 0.0, "visual": 0.0}
  for _ in range(2):
    for m in ("audio", "visual"):
      (loss, out), grads = jax.value_and_grad(reference_turn_loss, has_aux=True)(
          params, model, batch, m, counts[m])
      zeroed = ("audio",) if (skipped == "zero_grad" and m == "visual") else ()
      params, bufs = torch_sgd_turn(params, bufs, grads, m, counts, zeroed, learners)
      probs = np.asarray(jax.nn.softmax(out, 1), np.float64)
      scores[m] += sum(probs[i][int(batch["label"][i])] for i in range(len(probs)))
    state, metrics = step(state, batch)
    assert float(metrics["aug/turn_loss_visual"]) == pytest.approx(float(loss), rel=1e-5)
  for path, g, w in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(state.params),
                        jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path[0]))
  got = optax.tree_utils.tree_get(state.opt_state, "aug_score")
  for m in scores:
    assert float(got[m]) == pytest.approx(scores[m], rel=1e-5)
  # the third, unassigned learner slot of audio was never touched, nor (as the
  # reference) any assigned learner when they are not the optimizer's
  init = jitted_step(config, lr_fn=lambda s: LR)[0].params["method_layers"]["aug"]
  now = state.params["method_layers"]["aug"]
  untouched = ["learner_audio_1"] + ([] if learners else ["learner_audio_0", "learner_visual_0"])
  for name in untouched:
    np.testing.assert_array_equal(np.asarray(now[name]["kernel"]),
                                  np.asarray(init[name]["kernel"]))
  if learners:
    assert np.abs(np.asarray(now["learner_audio_0"]["kernel"])
                  - np.asarray(init["learner_audio_0"]["kernel"])).max() > 1e-6


def test_aug_prediction_is_the_merged_shared_classifier_outputs():
  from asgml_jax.methods import aug
  from asgml_jax.methods.base import BuildContext
  from asgml_jax.plan import Plan
  config = _config()
  state, step, batch = jitted_step(config, lr_fn=lambda s: LR)
  counts = {"audio": 0, "visual": 3}
  state = state.replace(opt_state=optax.tree_utils.tree_set(
      state.opt_state, aug_layers={m: jnp.asarray(v, jnp.int32) for m, v in counts.items()}))
  model = Plan.build(config).model(4)
  out = model.apply({"params": state.params}, {m: batch[m] for m in ("audio", "visual")},
                    train=False)
  got = aug.eval_logits(BuildContext(config, 6, 4, ("audio", "visual")))(state, batch, out)
  p = state.params["method_layers"]["aug"]
  out_a = reference_classifier(p, out["features"]["audio"], "audio", 0)[0]
  out_v = reference_classifier(p, out["features"]["visual"], "visual", 3)[0]
  np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(0.4 * out_a + 0.6 * out_v),
                             rtol=1e-5, atol=1e-5)                 # merge_alpha 0.4
  np.testing.assert_allclose(np.asarray(got["unimodal_logits"]["visual"]), np.asarray(out_v),
                             rtol=1e-5, atol=1e-5)


def test_aug_assigns_learners_by_the_references_rule_and_epochs():
  from asgml_jax.methods.aug import assign, check_epochs
  # the main loop: check = epochs // 10 if epochs > 10 else 1; (epoch + 1) % check == 0 or 0
  for epochs in (4, 20, 200):
    check = epochs // 10 if epochs > 10 else 1
    want = [e for e in range(epochs) if (e + 1) % check == 0 or e == 0]
    assert check_epochs(epochs, 10) == [e for e in want if e < epochs - 1]
  # ratio_a = score_a / score_v: > lam + 0.01 → visual, < lam − 0.01 → audio
  assert assign({"audio": 102.0, "visual": 100.0}, 1.0) == "visual"
  assert assign({"audio": 100.5, "visual": 100.0}, 1.0) is None
  assert assign({"audio": 98.0, "visual": 100.0}, 1.0) == "audio"
  assert assign({"audio": 120.0, "visual": 100.0}, 1.25) == "audio"   # 1.2 < λ − 0.01
  assert assign({"a": 50.0, "b": 80.0, "c": 79.0}, 1.0) == "a"


def test_aug_merges_with_the_references_default_without_its_variant():
  """train_CREMAD.py:166 `--merge_alpha` default 0.4, the audio weight of
  `merge_alpha * out_a + (1 - merge_alpha) * out_v` (:128), also when aug
  runs in a stack (no variant preset); other modality sets weigh 1/N."""
  from asgml_jax.methods.aug import _merge
  from conftest import tiny_mlp_config, with_stack
  config = with_stack(tiny_mlp_config("/tmp/unused"), "aug,ogm_ge")
  assert _merge(config) == {"audio": 0.4, "visual": 0.6}
  config.modalities.text = config.modalities.audio
  assert _merge(config) == pytest.approx({"audio": 1 / 3, "text": 1 / 3, "visual": 1 / 3})
