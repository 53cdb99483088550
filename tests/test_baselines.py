"""The comparison baselines' update rules against BASELINES.md, computed by hand.

Each test builds a small gradient example (two or three modalities, a few
parameters) and compares the transformation's output with the formula worked
out here, independently of the implementation.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgml_jax import loop
from asgml_jax.plan import Plan
from asgml_jax.transforms.torch_optimizers import torch_direction
from conftest import jitted_step, tiny_config, tiny_mlp_config, variant_record


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  """Every leaf of two same-structure pytrees agrees within the tolerance."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _tree(audio, visual, fusion=(0.0,)):
  return {"encoders": {"audio": {"w": jnp.asarray(audio, jnp.float32)},
                       "visual": {"w": jnp.asarray(visual, jnp.float32)}},
          "fusion": {"b": jnp.asarray(fusion, jnp.float32)}}


# ------------------------------------------------------------------ MMPareto

def test_mmpareto_conflict_uses_the_min_norm_gamma_and_rescales_to_the_total_norm():
  """audio: g_mm = [1, 0], g_a = [-1, 1]: cos < 0, γ = (2 - (-1)) / ‖[2, -1]‖² = 0.6;
  new = 2(0.6 g_mm + 0.4 g_a) = [0.4, 0.8]; ‖total‖ = ‖[0, 1]‖ = 1 > ‖new‖ = √0.8,
  so grad = 1.5 · (1/√0.8) · new. visual: g_mm = [1, 2], g_v = [3, 1]: cos > 0,
  k = (0.5, 0.5), new = total = [4, 3], r = 1, grad = 1.5 · [4, 3]."""
  from asgml_jax.transforms.mmpareto import mmpareto
  fused = _tree([1.0, 0.0], [1.0, 2.0], fusion=[0.3])
  loss_grads = {"fused": fused, "audio": _tree([-1.0, 1.0], [0.0, 0.0], [0.0]),
                "visual": _tree([0.0, 0.0], [3.0, 1.0], [0.0])}
  total = _tree([0.0, 1.0], [4.0, 3.0], fusion=[0.7])
  tx = mmpareto(1.5)
  out, state = tx.update(total, tx.init(total), loss_grads=loss_grads)
  np.testing.assert_allclose(out["encoders"]["audio"]["w"],
                             1.5 / np.sqrt(0.8) * np.array([0.4, 0.8]), rtol=1e-6)
  np.testing.assert_allclose(out["encoders"]["visual"]["w"], [6.0, 4.5], rtol=1e-6)
  np.testing.assert_allclose(out["fusion"]["b"], [0.7])  # heads: the plain summed gradient
  assert float(state.pareto_gammas["audio"]) == pytest.approx(0.6)
  assert float(state.pareto_gammas["visual"]) == pytest.approx(0.5)
  assert float(state.pareto_cosines["audio"]) == pytest.approx(-1 / np.sqrt(2))


def test_mmpareto_clips_gamma_and_scores_the_whole_encoder_but_rescales_per_tensor():
  """Orthogonal gradients (cos = 0 is not > 0): γ = (g·g - 0) / ‖g_mm - g‖² =
  1e-4 / (1 + 1e-4) < 0.001 is clipped to 0.001. The encoder has two tensors:
  k is computed over both, r per tensor."""
  from asgml_jax.transforms.mmpareto import mmpareto
  enc = lambda a, b: {"w1": jnp.asarray(a, jnp.float32), "w2": jnp.asarray(b, jnp.float32)}
  tree = lambda a: {"encoders": {"audio": a}, "fusion": {}}
  g_mm = enc([1.0, 0.0], [0.0])
  g_a = enc([0.0, 0.0], [0.01])
  total = enc([1.0, 0.0], [0.01])
  tx = mmpareto(1.5)
  out, state = tx.update(tree(total), tx.init(tree(total)),
                         loss_grads={"fused": tree(g_mm), "audio": tree(g_a)})
  k0 = 0.001
  new1 = 2 * (k0 * np.array([1.0, 0.0]))            # ‖new1‖ = 0.002 < ‖total1‖ = 1
  new2 = 2 * ((1 - k0) * np.array([0.01]))          # ‖new2‖ = 0.01998 > ‖total2‖ = 0.01
  np.testing.assert_allclose(out["encoders"]["audio"]["w1"], 1.5 * (1 / 0.002) * new1, rtol=1e-5)
  np.testing.assert_allclose(out["encoders"]["audio"]["w2"], 1.5 * new2, rtol=1e-5)
  assert float(state.pareto_gammas["audio"]) == pytest.approx(0.001)


def test_mmpareto_zero_gradients_stay_finite():
  from asgml_jax.transforms.mmpareto import mmpareto
  zero = _tree([0.0, 0.0], [0.0, 0.0])
  tx = mmpareto(1.5)
  out, _ = tx.update(zero, tx.init(zero),
                     loss_grads={"fused": zero, "audio": zero, "visual": zero})
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(out))


# ------------------------------------------------------------------ PCGrad

def test_pcgrad_two_tasks_projects_each_off_the_other():
  """g1 = [1, 0], g2 = [-1, 1]: g1·g2 = -1 < 0.
  g1' = g1 + 1/2 g2 = [0.5, 0.5];  g2' = g2 + 1/1 g1 = [0, 1];  Σ = [0.5, 1.5]."""
  from asgml_jax.transforms.multitask import project_conflicting
  g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
  projected, conflicts = project_conflicting(g, jnp.array([[1], [0]]))
  np.testing.assert_allclose(projected, [[0.5, 0.5], [0.0, 1.0]], rtol=1e-6)
  np.testing.assert_array_equal(conflicts, [1, 1])


def test_pcgrad_three_tasks_follow_the_order_and_the_original_gradients():
  """g0 = [1, 0], g1 = [-1, 1], g2 = [0, -1]; task 0 against 2 then 1:
  g0·g2 = 0 (no conflict), then g0·g1 = -1: g0' = [1, 0] + 1/2 [-1, 1] = [0.5, 0.5].
  Task 1 against 2 then 0: g1·g2 = -1: g1' = [-1, 1] + 1 · [0, -1] = [-1, 0];
  then g1'·g0 = -1: g1'' = [-1, 0] + 1 · [1, 0] = [0, 0].
  Task 2 against 0 then 1: g2·g0 = 0; g2·g1 = -1: g2' = [0, -1] + 1/2 [-1, 1] = [-0.5, -0.5]."""
  from asgml_jax.transforms.multitask import project_conflicting
  g = jnp.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
  projected, conflicts = project_conflicting(g, jnp.array([[2, 1], [2, 0], [0, 1]]))
  np.testing.assert_allclose(projected, [[0.5, 0.5], [0.0, 0.0], [-0.5, -0.5]], atol=1e-6)
  np.testing.assert_array_equal(conflicts, [1, 2, 1])


def test_pcgrad_transform_sums_the_projected_weighted_task_gradients():
  """Two modalities, tasks (fused, audio, visual) with weights (1, 2, 2): the
  audio task's gradient is 2·[-0.5, 0.5] = [-1, 1] and conflicts with fused's [1, 0]."""
  from asgml_jax.transforms.multitask import pcgrad
  loss_grads = {"fused": _tree([1.0, 0.0], [0.0, 0.0]),
                "audio": _tree([-0.5, 0.5], [0.0, 0.0]),
                "visual": _tree([0.0, 0.0], [0.0, 3.0])}
  weights = {"fused": 1.0, "audio": 2.0, "visual": 2.0}
  total = _tree([0.0, 1.0], [0.0, 6.0])
  tx = pcgrad(seed=0)
  out, state = tx.update(total, tx.init(total), loss_grads=loss_grads, task_weights=weights)
  # fused' = [0.5, 0.5], audio' = [0, 1] (visual is orthogonal to both), visual' = [0, 6].
  np.testing.assert_allclose(out["encoders"]["audio"]["w"], [0.5, 1.5], rtol=1e-6)
  np.testing.assert_allclose(out["encoders"]["visual"]["w"], [0.0, 6.0], rtol=1e-6)
  assert {k: int(v) for k, v in state.conflicts.items()} == {"fused": 1, "audio": 1, "visual": 0}


# ------------------------------------------------------------------ DWA

def test_dwa_weights_follow_the_last_two_epoch_mean_losses():
  """2 steps per epoch. Epoch means: e0 = (2, 1, 4), e1 = (1, 1, 1) -> in epoch 2,
  r = (0.5, 1, 0.25), w = 3·softmax(r / 2). Epochs 0 and 1 use w = 1."""
  from asgml_jax.transforms.multitask import dwa
  per_epoch = [((2.0, 1.0, 4.0), (2.0, 1.0, 4.0)), ((0.5, 1.5, 1.0), (1.5, 0.5, 1.0)),
               ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))]
  grads = {"fused": _tree([1.0, 0.0], [0.0, 0.0]), "audio": _tree([0.0, 1.0], [0.0, 0.0]),
           "visual": _tree([0.0, 0.0], [1.0, 0.0])}
  tx = dwa(steps_per_epoch=2, temperature=2.0)
  state = tx.init(grads["fused"])
  step = 0
  for epoch, steps in enumerate(per_epoch):
    for losses in steps:
      task_losses = dict(zip(("fused", "audio", "visual"), map(jnp.float32, losses)))
      out, state = tx.update(grads["fused"], state, loss_grads=grads, task_losses=task_losses,
                             step=jnp.int32(step))
      step += 1
      r = np.array([0.5, 1.0, 0.25])
      want = 3 * np.exp(r / 2) / np.exp(r / 2).sum() if epoch == 2 else np.ones(3)
      got = [float(state.task_weights[t]) for t in ("fused", "audio", "visual")]
      np.testing.assert_allclose(got, want, rtol=1e-6)
      np.testing.assert_allclose(out["encoders"]["audio"]["w"], want[:2], rtol=1e-6)
      np.testing.assert_allclose(out["encoders"]["visual"]["w"], [want[2], 0.0], rtol=1e-6)


# ------------------------------------------------------------------ GradNorm

def test_gradnorm_weight_step_by_hand():
  """w = 1, ‖∇_W L‖ = (1, 2, 3), L = (1, 1, 1), L(0) = (2, 1, 1), α = 1.5, lr = 0.1:
  rates (0.5, 1, 1) / 0.8333 = (0.6, 1.2, 1.2); G = (1, 2, 3), Ḡ = 2;
  target = 2·(0.6^1.5, 1.2^1.5, 1.2^1.5) = (0.9295, 2.6290, 2.6290);
  ∂ = sign(G - target)·‖∇L‖ = (1, -2, 3); w - 0.1∂ = (0.9, 1.2, 0.7), ×3/2.8."""
  from asgml_jax.transforms.multitask import gradnorm_weight_step
  new = gradnorm_weight_step(jnp.ones(3), jnp.array([1.0, 2.0, 3.0]), jnp.ones(3),
                             jnp.array([2.0, 1.0, 1.0]), alpha=1.5, lr=0.1)
  np.testing.assert_allclose(new, np.array([0.9, 1.2, 0.7]) * 3 / 2.8, rtol=1e-6)


def test_gradnorm_transform_uses_the_current_weights_then_updates_them():
  from asgml_jax.transforms.multitask import gradnorm
  grads = {"fused": _tree([1.0, 0.0], [0.0, 0.0], [1.0]),
           "audio": _tree([0.0, 1.0], [0.0, 0.0], [2.0]),
           "visual": _tree([0.0, 0.0], [1.0, 0.0], [3.0])}
  tx = gradnorm(alpha=1.5, lr=0.1, layer="fusion")
  state = tx.init(grads["fused"])
  losses = dict(zip(("fused", "audio", "visual"), map(jnp.float32, (2.0, 1.0, 1.0))))
  out, state = tx.update(grads["fused"], state, loss_grads=grads, task_losses=losses)
  # First step: L(0) = L, so every rate is 1: target = Ḡ = 2, ∂ = (-1, 0... sign(0)=0, 3)
  np.testing.assert_allclose(out["fusion"]["b"], [6.0])  # w = 1 on this step
  np.testing.assert_allclose(state.weights, np.array([1.1, 1.0, 0.7]) * 3 / 2.8, rtol=1e-6)
  losses = dict(zip(("fused", "audio", "visual"), map(jnp.float32, (1.0, 1.0, 1.0))))
  out, _ = tx.update(grads["fused"], state, loss_grads=grads, task_losses=losses)
  w = np.array([1.1, 1.0, 0.7]) * 3 / 2.8
  np.testing.assert_allclose(out["fusion"]["b"], [w @ np.array([1.0, 2.0, 3.0])], rtol=1e-6)
  np.testing.assert_allclose(out["encoders"]["audio"]["w"], w[:2], rtol=1e-6)


# ------------------------------------------------------------------ CGGM

def test_cggm_balance_coefficients_and_the_optional_guard():
  """Δ = (0.1, 0.3): S = 0.4, B = (0.3/0.4, 0.1/0.4) = (0.75, 0.25).
  Δ = (0.1, 0.2, 0.2): S = 0.5, B = (0.8, 0.6, 0.6), Σ B = N − 1 = 2.
  S < 0 follows the reference formula: Δ = (−0.1, 0.05): S = −0.05, B = (−1, 2).
  Δ = (0, 0): S = 1e-8, B = (1, 1); guard="near_zero" gives (N−1)/N = 0.5 there."""
  from asgml_jax.transforms.cggm import balance_coefficients
  b = lambda *d, guard="none": [float(v) for v in balance_coefficients(
      {f"m{i}": jnp.float32(x) for i, x in enumerate(d)}, guard).values()]
  np.testing.assert_allclose(b(0.1, 0.3), [0.75, 0.25], rtol=1e-5)
  np.testing.assert_allclose(b(0.1, 0.2, 0.2), [0.8, 0.6, 0.6], rtol=1e-5)
  np.testing.assert_allclose(b(-0.1, 0.05), [-1.0, 2.0], rtol=1e-5)
  np.testing.assert_allclose(b(0.0, 0.0), [1.0, 1.0])
  np.testing.assert_allclose(b(0.0, 0.0, guard="near_zero"), [0.5, 0.5])
  np.testing.assert_allclose(b(-0.1, 0.05, guard="near_zero"), [-1.0, 2.0], rtol=1e-5)


def test_cggm_direction_loss_by_hand_reaches_only_the_fusion_layer():
  """B = (0.75, 0.25); W_cls_a ∥ W_fus_a (cos 1), W_cls_v = −W_fus_v (cos −1):
  L = (1 − (0.75 − 0.25)) / 2 = 0.25. Its gradient w.r.t. the classifiers is zero."""
  from asgml_jax.transforms.cggm import direction_loss, fusion_blocks
  params = {"fusion": {"kernel": jnp.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0], [1.0, 1.0]]),
                       "bias": jnp.zeros(2)}}
  blocks = fusion_blocks(params, ("audio", "visual"), 2)
  np.testing.assert_allclose(blocks["visual"], [[3.0, 0.0], [1.0, 1.0]])
  kernels = {"audio": 2.0 * blocks["audio"], "visual": -blocks["visual"]}
  balance = {"audio": jnp.float32(0.75), "visual": jnp.float32(0.25)}
  assert float(direction_loss(balance, kernels, blocks)) == pytest.approx(0.25, rel=1e-6)
  g_cls = jax.grad(lambda k: direction_loss(balance, k, blocks))(kernels)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_cls))
  # Away from cos = ±1 (where the cosine is flat) the fusion layer gets a gradient.
  tilted = {"audio": jnp.eye(2), "visual": jnp.array([[0.0, 1.0], [1.0, 0.0]])}
  g_fus = jax.grad(lambda p: direction_loss(balance, tilted, fusion_blocks(
      p, ("audio", "visual"), 2)))(params)
  assert float(jnp.abs(g_fus["fusion"]["kernel"]).max()) > 1e-3  # differentiable, not detached


def test_cggm_transform_scales_encoders_by_rho_b_and_trains_its_classifiers():
  """Step 1 from acc(0) = 0: Δ_m = acc_m(1); the encoder gradients are × 1.3·B_m
  and the classifiers take one Adam step on their CE of the detached features."""
  import optax
  from asgml_jax.transforms.cggm import balance_coefficients, cggm
  params = {"encoders": {"audio": {"w": jnp.ones(2)}, "visual": {"w": jnp.ones(2)}},
            "fusion": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
  tx = cggm(rho=1.3, cls_lr=0.01, feature_dim=2, seed=0)
  state = tx.init(params)
  assert state.classifiers["audio"]["kernel"].shape == (2, 3)
  features = {"audio": jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]),
              "visual": jnp.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])}
  labels = jnp.array([0, 1, 2, 0])
  acc = {m: float(jnp.mean(jnp.argmax(features[m] @ state.classifiers[m]["kernel"]
                                      + state.classifiers[m]["bias"], -1) == labels))
         for m in ("audio", "visual")}
  grads = {"encoders": {"audio": {"w": jnp.array([1.0, -2.0])},
                        "visual": {"w": jnp.array([0.5, 0.5])}},
           "fusion": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
  out, new_state = tx.update(grads, state, features=features, labels=labels)
  b = balance_coefficients({m: jnp.float32(v) for m, v in acc.items()})
  np.testing.assert_allclose(out["encoders"]["audio"]["w"], 1.3 * float(b["audio"])
                             * np.array([1.0, -2.0]), rtol=1e-6)
  np.testing.assert_allclose(out["encoders"]["visual"]["w"], 1.3 * float(b["visual"])
                             * np.array([0.5, 0.5]), rtol=1e-6)
  np.testing.assert_allclose(out["fusion"]["kernel"], grads["fusion"]["kernel"])
  assert {m: float(v) for m, v in new_state.previous_accuracy.items()} == acc

  def ce(classifiers):
    return sum(optax.softmax_cross_entropy_with_integer_labels(
        features[m] @ p["kernel"] + p["bias"], labels).mean() for m, p in classifiers.items())
  adam = optax.adam(0.01)
  step, _ = adam.update(jax.grad(ce)(state.classifiers), adam.init(state.classifiers))
  want = optax.apply_updates(state.classifiers, step)
  for a, c in zip(jax.tree.leaves(want), jax.tree.leaves(new_state.classifiers)):
    np.testing.assert_allclose(a, c, rtol=1e-6)


# ------------------------------------------------------------------ OPM

def test_opm_drop_probabilities_two_and_three_modalities():
  """s = (3, 1): ρ = (3, 1/3): q_a = 0.5(1 + 0.5 tanh(2)), q_v = 0.
  s = (4, 2, 1): ρ_1 = mean(4/2, 4/1) = 3, ρ_2 = mean(2/4, 2/1) = 1.25,
  ρ_3 = mean(1/4, 1/2) = 0.375: q = (0.5(1 + 0.5 tanh 2), 0.5(1 + 0.5 tanh 0.25), 0)."""
  from asgml_jax.methods.opm import drop_probabilities
  q = drop_probabilities({"audio": jnp.float32(3.0), "visual": jnp.float32(1.0)}, 0.5, 0.5)
  assert float(q["audio"]) == pytest.approx(0.5 * (1 + 0.5 * np.tanh(2.0)), rel=1e-6)
  assert float(q["visual"]) == 0.0
  q = drop_probabilities({"a": jnp.float32(4.0), "b": jnp.float32(2.0), "c": jnp.float32(1.0)},
                         0.5, 0.5)
  np.testing.assert_allclose([float(q[m]) for m in "abc"],
                             [0.5 * (1 + 0.5 * np.tanh(2.0)), 0.5 * (1 + 0.5 * np.tanh(0.25)),
                              0.0], rtol=1e-6)
  q = drop_probabilities({"a": jnp.float32(100.0), "b": jnp.float32(1.0)}, 0.9, 0.5)
  assert float(q["a"]) == 1.0  # 0.9 (1 + 0.5 tanh 98) > 1 is clamped


def test_opm_drop_rescales_kept_features_and_excludes_all_dropped_samples():
  """q = (0.6, 0.2): kept features × 1/(1 - 0.4); sample 2 lost both modalities."""
  from asgml_jax.methods.opm import apply_drop, masked_cross_entropy
  feats = {"audio": jnp.ones((3, 2)), "visual": 2 * jnp.ones((3, 2))}
  keep = {"audio": jnp.array([True, False, False]), "visual": jnp.array([False, True, False])}
  q = {"audio": jnp.float32(0.6), "visual": jnp.float32(0.2)}
  gated, valid = apply_drop(feats, keep, q, jnp.bool_(True))
  np.testing.assert_allclose(gated["audio"][:, 0], [1 / 0.6, 0.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(gated["visual"][:, 0], [0.0, 2 / 0.6, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(valid, [True, True, False])
  untouched, valid = apply_drop(feats, keep, q, jnp.bool_(False))
  np.testing.assert_allclose(untouched["visual"], feats["visual"])
  assert bool(valid.all())
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
  labels = jnp.array([0, 1, 1])
  ce = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
  assert float(masked_cross_entropy(logits, labels, jnp.array([True, True, False]))) == (
      pytest.approx(float(ce[:2].mean()), rel=1e-6))


def test_opm_step_without_execution_is_fused_only_joint_training(tfds_dir):
  """p_exe = 0: OPM never drops, so its step is the baseline's with γ = 0; with
  p_exe = 1 and no warm-up it drops on every step and logs its signals."""
  config = tiny_mlp_config(tfds_dir)
  config.loss.unimodal_weight = 0.0
  state, step, batch = jitted_step(config)
  config.method.name = "opm"
  config.method.opm.p_exe = 0.0
  state_o, step_o, _ = jitted_step(config)
  new, _ = step(state, batch)
  new_o, metrics = step_o(state_o, batch)
  assert float(metrics["opm/executed"]) == 0.0
  _assert_trees_close(new.params, new_o.params)
  config.method.opm.p_exe = 1.0
  config.method.opm.warmup_epochs = 0
  state_o, step_o, _ = jitted_step(config)
  _, metrics = step_o(state_o, batch)
  assert float(metrics["opm/executed"]) == 1.0
  dominant = max(("audio", "visual"), key=lambda m: float(metrics[f"opm/drop_prob_{m}"]))
  other = "visual" if dominant == "audio" else "audio"
  assert float(metrics[f"opm/drop_prob_{dominant}"]) >= 0.5  # q_base·(1 + ...) when ρ > 1
  assert float(metrics[f"opm/drop_prob_{other}"]) == 0.0


# ------------------------------------------------------------------ InfoReg

def test_inforeg_window_coefficient_by_hand():
  """k = (T(e−1) − T(e−11)) / Σ_{last 10} T over a history that starts with zeros."""
  from asgml_jax.transforms.inforeg import window_coefficient
  assert float(window_coefficient(jnp.zeros(11), 0)) == 1.0
  first = jnp.array([0.0] * 10 + [2.0])
  assert float(window_coefficient(first, 1)) == pytest.approx(1.0)   # (2 − 0) / 2
  rising = jnp.arange(1.0, 12.0)                                      # T = 1 … 11
  assert float(window_coefficient(rising, 20)) == pytest.approx(10.0 / 65.0)
  assert float(window_coefficient(jnp.zeros(11), 3)) == 0.0           # Σ T = 0: closed


def test_inforeg_strengths_two_and_three_modalities():
  """N = 2: the larger batch-sum score gets scale·exp(tanh(s − s_other)), the
  other 0; a closed window gives 0. N = 3: N/(N−1)·(s − mean) for those above."""
  from asgml_jax.transforms.inforeg import regulation_strengths
  on = {"audio": True, "visual": True}
  scales = {"audio": 0.95, "visual": 0.1}
  beta = regulation_strengths({"audio": 10.0, "visual": 7.0}, on, scales)
  assert float(beta["audio"]) == pytest.approx(0.95 * np.exp(np.tanh(3.0)))
  assert float(beta["visual"]) == 0.0
  beta = regulation_strengths({"audio": 7.0, "visual": 7.5}, on, scales)
  assert float(beta["visual"]) == pytest.approx(0.1 * np.exp(np.tanh(0.5)))
  assert float(beta["audio"]) == 0.0
  beta = regulation_strengths({"audio": 10.0, "visual": 7.0}, {"audio": False, "visual": True},
                              scales)
  assert float(beta["audio"]) == 0.0 and float(beta["visual"]) == 0.0
  three = regulation_strengths({"audio": 6.0, "text": 3.0, "visual": 0.0},
                               {"audio": True, "text": True, "visual": True},
                               {"audio": 0.5, "text": 0.5, "visual": 0.5})
  assert float(three["audio"]) == pytest.approx(0.5 * np.exp(np.tanh(1.5 * 3.0)))
  assert float(three["text"]) == 0.0 and float(three["visual"]) == 0.0


def test_inforeg_transform_pulls_towards_the_epoch_anchor_and_keeps_the_fisher_trace():
  """2 steps per epoch. Step 0: θ = θ0, no pull. Step 1: audio (the larger score)
  gets g + β(θ − θ0) on every leaf, visual g. Step 2 starts epoch 1: the anchor
  moves to θ, T(0) = Σ_steps mean(g_after²) over `kernel` leaves only."""
  from asgml_jax.transforms.inforeg import inforeg
  enc = lambda k, b: {"kernel": jnp.asarray(k, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}
  tree = lambda a, v: {"encoders": {"audio": a, "visual": v}, "fusion": {}}
  theta0 = tree(enc([1.0, 2.0], [0.5]), enc([0.0, 0.0], [0.0]))
  grads = tree(enc([0.1, -0.2], [0.3]), enc([0.4, 0.0], [1.0]))
  scores = {"audio": jnp.float32(5.0), "visual": jnp.float32(4.0)}
  tx = inforeg(2, {"audio": 0.95, "visual": 0.1})
  state = tx.init(theta0)
  beta = 0.95 * np.exp(np.tanh(1.0))
  out0, state = tx.update(grads, state, theta0, step=jnp.int32(0), ogm_scores=scores)
  np.testing.assert_allclose(out0["encoders"]["audio"]["kernel"], [0.1, -0.2], rtol=1e-6)
  theta1 = tree(enc([2.0, 2.0], [1.5]), enc([1.0, 1.0], [1.0]))
  out1, state = tx.update(grads, state, theta1, step=jnp.int32(1), ogm_scores=scores)
  np.testing.assert_allclose(out1["encoders"]["audio"]["kernel"], [0.1 + beta, -0.2], rtol=1e-6)
  np.testing.assert_allclose(out1["encoders"]["audio"]["bias"], [0.3 + beta], rtol=1e-6)
  np.testing.assert_allclose(out1["encoders"]["visual"]["kernel"], [0.4, 0.0], rtol=1e-6)
  assert float(state.inforeg_beta["audio"]) == pytest.approx(beta)
  trace_audio = np.mean(np.square([0.1, -0.2])) + np.mean(np.square([0.1 + beta, -0.2]))
  out2, state = tx.update(grads, state, theta1, step=jnp.int32(2), ogm_scores=scores)
  np.testing.assert_allclose(out2["encoders"]["audio"]["kernel"], [0.1, -0.2], rtol=1e-6)
  assert float(state.trace_history["audio"][-1]) == pytest.approx(trace_audio, rel=1e-6)
  assert float(state.trace_history["visual"][-1]) == pytest.approx(2 * np.mean([0.16, 0.0]))
  assert float(state.inforeg_window["audio"]) == pytest.approx(1.0)
  assert int(state.epoch) == 1


# ------------------------------------------------------------------ AGM

def test_agm_shapley_outputs_two_and_three_modalities():
  """N = 2 is BASELINES.md's m_a = ½(f(a,v) − f(0,v) + f(a,0)); N = 3: an additive
  game gives each its own part, a majority game (v = 1 for ≥ 2 players) 1/3 each."""
  from asgml_jax.transforms.agm import shapley_outputs
  f = {frozenset({"a", "v"}): 5.0, frozenset({"a"}): 2.0, frozenset({"v"}): 1.0}
  phi = shapley_outputs(lambda s: f[s], ["a", "v"])
  assert phi["a"] == pytest.approx(0.5 * (5.0 - 1.0 + 2.0))
  assert phi["v"] == pytest.approx(0.5 * (5.0 - 2.0 + 1.0))
  parts = {"a": 1.0, "t": 2.0, "v": 4.0}
  phi = shapley_outputs(lambda s: sum(parts[m] for m in s), parts)
  assert phi == pytest.approx(parts)
  phi = shapley_outputs(lambda s: float(len(s) >= 2), parts)
  assert phi == pytest.approx({m: 1 / 3 for m in parts})


def test_agm_coefficients_by_hand_with_caps_and_window():
  """ratio_a = exp(s_v − s_a), opt_a = exp(S̄_v − S̄_a), c = exp(α·min(opt − ratio, cap));
  cap 10 for N = 2, 7 for N = 3; outside the modulation epochs c = 1."""
  from asgml_jax.transforms.agm import agm_coefficients
  c = agm_coefficients({"a": 0.5, "v": 1.0}, {"a": 1.0, "v": 1.0}, 2.0, True)
  assert float(c["a"]) == pytest.approx(np.exp(2.0 * (1.0 - np.exp(0.5))), rel=1e-5)
  assert float(c["v"]) == pytest.approx(np.exp(2.0 * (1.0 - np.exp(-0.5))), rel=1e-5)
  c = agm_coefficients({"a": 0.5, "v": 1.0}, {"a": 0.0, "v": 20.0}, 1.0, True)
  assert float(c["a"]) == pytest.approx(np.exp(10.0), rel=1e-5)
  s3 = {"a": 1.0, "t": 1.0, "v": 1.0}
  c = agm_coefficients(s3, {"a": 0.0, "t": 10.0, "v": 10.0}, 1.0, True)
  assert float(c["a"]) == pytest.approx(np.exp(7.0), rel=1e-5)
  # opt_t = exp(1.5·(20/3 − 10)) = exp(−5), ratio 1
  assert float(c["t"]) == pytest.approx(np.exp(np.exp(-5.0) - 1.0), rel=1e-5)
  c = agm_coefficients({"a": 0.5, "v": 1.0}, {"a": 1.0, "v": 1.0}, 2.0, False)
  assert float(c["a"]) == 1.0 and float(c["v"]) == 1.0


def test_agm_scores_floor_and_gradient_scaling():
  from asgml_jax.transforms.agm import agm_scores, scale_gradient
  s = agm_scores({"a": jnp.array([[0.0, -100.0], [0.0, 0.0]])}, jnp.array([1, 0]))
  assert float(s["a"]) == pytest.approx(0.5 * (-np.log(1e-8) - np.log(0.5)), rel=1e-5)
  x = jnp.array([1.0, -2.0])
  assert np.allclose(scale_gradient(x, 3.0), x)
  np.testing.assert_allclose(jax.grad(lambda y: jnp.sum(scale_gradient(y, 3.0) ** 2))(x),
                             3.0 * 2 * x)


def test_agm_step_without_modulation_is_fused_only_joint_training(tfds_dir):
  """c = 1 (α = 0): Σ_m m_m = f(a, v) exactly, so AGM's step is the baseline's
  with γ = 0. With α = 1 the logged c follow the formula from the logged scores
  and the running mean of the steps before."""
  config = tiny_mlp_config(tfds_dir)
  config.loss.unimodal_weight = 0.0
  config.modalities.audio.dropout = config.modalities.visual.dropout = 0.0
  state, step, batch = jitted_step(config)
  config.method.name = "agm"
  config.method.agm.alpha = 0.0
  state_g, step_g, _ = jitted_step(config)
  new, m_base = step(state, batch)
  new_g, m_agm = step_g(state_g, batch)
  assert float(m_agm["fused_loss"]) == pytest.approx(float(m_base["fused_loss"]), rel=1e-5)
  _assert_trees_close(new.params, new_g.params)
  config.method.agm.alpha = 1.0
  state_g, step_g, _ = jitted_step(config)
  state_g, first = step_g(state_g, batch)
  assert float(first["agm/coeff_audio"]) == pytest.approx(1.0)   # S̄ = s on the first step
  _, second = step_g(state_g, batch)
  s = {m: float(second[f"agm/score_{m}"]) for m in ("audio", "visual")}
  r = {m: float(first[f"agm/score_{m}"]) for m in ("audio", "visual")}
  expected_a = np.exp(min(np.exp(r["visual"] - r["audio"]) - np.exp(s["visual"] - s["audio"]),
                          10.0))
  assert float(second["agm/coeff_audio"]) == pytest.approx(expected_a, rel=1e-4)
  assert s["audio"] != r["audio"]   # the first step changed the model


# ------------------------------------------------------------------ MILES

def test_miles_utilization_and_learning_rate_rule_by_hand():
  """u_a = (acc_av − acc_v)/acc_av; the largest u gets μ when max u − min u > τ."""
  from asgml_jax.transforms.miles import next_lr_scales, utilization_rates
  u = utilization_rates(0.5, {"audio": 0.45, "visual": 0.2})
  assert u["audio"] == pytest.approx(0.6) and u["visual"] == pytest.approx(0.1)
  assert next_lr_scales(u, 0.2, 0.5) == {"audio": 0.5, "visual": 1.0}
  assert next_lr_scales(u, 0.5, 0.5) == {"audio": 1.0, "visual": 1.0}        # δ = 0.5 ≤ τ
  assert next_lr_scales({"audio": -0.1, "visual": -0.5}, 0.2, 0.5) == {"audio": 1.0,
                                                                     "visual": 1.0}
  three = utilization_rates(0.6, {"audio": 0.3, "text": 0.5, "visual": 0.1})
  assert three["text"] == pytest.approx((0.6 - 0.2) / 0.6)                   # mean(0.3, 0.1)
  assert three["visual"] == pytest.approx((0.6 - 0.4) / 0.6)
  assert next_lr_scales(three, 0.2, 0.25)["text"] == 0.25
  assert utilization_rates(0.0, {"audio": 0.3, "visual": 0.1}) == {"audio": 0.0, "visual": 0.0}


def test_miles_transform_scales_only_that_encoders_update():
  from asgml_jax.transforms.miles import miles
  tx = miles()
  updates = _tree([1.0, -2.0], [3.0], fusion=[4.0])
  state = tx.init(updates)
  state = state._replace(miles_lr_scale={"audio": jnp.float32(0.5), "visual": jnp.float32(1.0)})
  out, _ = tx.update(updates, state)
  np.testing.assert_allclose(out["encoders"]["audio"]["w"], [0.5, -1.0])
  np.testing.assert_allclose(out["encoders"]["visual"]["w"], [3.0])
  np.testing.assert_allclose(out["fusion"]["b"], [4.0])


def test_miles_run_sets_the_next_epochs_rates_from_validation(tmp_path, tfds_dir):
  """After epoch 1, the rates logged through epoch 2 follow the rule applied to
  epoch 1's *validation* accuracies (never the test split's)."""
  from asgml_jax import train
  from asgml_jax.report import train_signals
  from asgml_jax.run_dir import train_tag
  from asgml_jax.transforms.miles import next_lr_scales, utilization_rates
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir, num_epochs=2), "miles")
  config.method.miles.tau = 0.0
  train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 192 // 32
  evals = train_signals(str(tmp_path), ["eval/"])   # validation scalars, per epoch-end step
  first = {tag: values[list(steps).index(steps_per_epoch)]
           for tag, (steps, values) in evals.items()}
  u = utilization_rates(first["eval/accuracy"], {m: first[f"eval/unimodal_accuracy_{m}"]
                                                 for m in ("audio", "visual")})
  expected = next_lr_scales(u, 0.0, config.method.miles.mu)
  tags = {m: train_tag(f"miles__lr_scale_{m}") for m in expected}
  logged = train_signals(str(tmp_path), list(tags.values()))
  assert min(expected.values()) == config.method.miles.mu   # τ = 0: someone was slowed
  for m, tag in tags.items():
    steps, values = logged[tag]
    assert np.all(values[np.asarray(steps) <= steps_per_epoch] == 1.0)
    assert np.allclose(values[np.asarray(steps) > steps_per_epoch], expected[m])


# ------------------------------------------------------------------ PMR

def test_pmr_class_means_keep_absent_classes_and_ema():
  from asgml_jax.transforms.pmr import class_means, class_sums, ema
  feats = jnp.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
  sums, counts = class_sums(feats, jnp.array([0, 0, 2]), 3)
  previous = jnp.full((3, 2), 9.0)
  means = class_means(sums, counts, previous)
  np.testing.assert_allclose(means, [[2.0, 1.0], [9.0, 9.0], [5.0, 5.0]])
  np.testing.assert_allclose(ema(means, previous, 0.2), 0.8 * means + 0.2 * 9.0)


def test_pmr_prototype_loss_pushes_only_the_weaker_modality():
  """audio sits on its prototypes (score 2·σ(2)), visual halfway between them
  (score 2·½ = 1): ρ > 1, so the loss is α·CE(sim_v) = α·log 2 and its gradient
  reaches the visual features only."""
  from asgml_jax.transforms.pmr import prototype_loss
  labels = jnp.array([0, 1])
  protos = {"audio": jnp.array([[0.0], [2.0]]), "visual": jnp.array([[0.0], [2.0]])}
  feats = {"audio": jnp.array([[0.0], [2.0]]), "visual": jnp.array([[1.0], [1.0]])}
  loss, scores = prototype_loss(feats, protos, labels, 2.0, True)
  assert float(scores["audio"]) == pytest.approx(2 / (1 + np.exp(-2.0)), rel=1e-5)
  assert float(scores["visual"]) == pytest.approx(1.0)
  assert float(loss) == pytest.approx(2.0 * np.log(2.0), rel=1e-5)
  grads = jax.grad(lambda f: prototype_loss(f, protos, labels, 2.0, True)[0])(feats)
  assert np.all(np.asarray(grads["audio"]) == 0.0)
  # d/dh of α·mean CE: sample 0 (y=0) moves towards prototype 0, sample 1 towards 1
  assert float(grads["visual"][0, 0]) > 0 > float(grads["visual"][1, 0])
  assert np.all(np.isfinite(np.asarray(grads["audio"])))   # zero distance: finite gradient
  loss_off, _ = prototype_loss(feats, protos, labels, 2.0, False)
  assert float(loss_off) == 0.0


def test_pmr_prototypes_in_the_checkpoint_are_the_class_means_of_the_next_epochs_batches(
    tmp_path, tfds_dir):
  """With momentum 0, the saved prototypes are the inference-mode class means
  of the encoder features over the first max(1, steps/10) batches of the next
  epoch's order, under the saved parameters."""
  from asgml_jax import input_pipeline, run_dir, train
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir, num_epochs=1), "pmr")
  config.method.pmr.momentum = 0.0
  train.train_and_evaluate(config, str(tmp_path))
  setup = loop.setup_run(Plan.build(config))
  state = run_dir.RunDir(setup.config, str(tmp_path), setup.plan.identity).restore(
      loop.fresh_state(setup, config.seed))
  assert int(state.step) == setup.steps_per_epoch
  perm = input_pipeline.epoch_order(setup.data, loop.run_keys(config.seed)[1], 1)
  batch = input_pipeline.gather_batch(setup.data.train, perm, 0, config.batch_size)
  feats = setup.model.apply(state.variables(), {m: batch[m] for m in ("audio", "visual")},
                            train=False)["features"]
  protos = state.opt_state[0].pmr_prototypes
  labels = np.asarray(batch["label"])
  for m in ("audio", "visual"):
    for c in np.unique(labels):
      np.testing.assert_allclose(protos[m][c], np.asarray(feats[m])[labels == c].mean(0),
                                 rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ ARL

def _arl_by_hand(z_a, z_v, temperature):
  """BASELINES.md §ARL, step by step as the reference's train_epoch does it."""
  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p_a, p_v = softmax(z_a), softmax(z_v)
  h_a = np.mean(np.sum(-p_a * np.log(p_a + 1e-16), -1))
  h_v = np.mean(np.sum(-p_v * np.log(p_v + 1e-16), -1))
  h_a, h_v = max(h_a / (h_a + h_v), 0.3), max(h_v / (h_a + h_v), 0.3)
  a_w, v_w = 1 / h_a, 1 / h_v
  a_w, v_w = a_w / (a_w + v_w), v_w / (a_w + v_w)
  c_a, c_v = np.mean(np.abs(z_a), 0).sum(), np.mean(np.abs(z_v), 0).sum()
  c_a, c_v = c_a / (c_a + c_v), c_v / (c_a + c_v)
  return softmax(np.array([c_v * a_w * temperature, c_a * v_w * temperature]))


def test_arl_coefficients_by_hand_including_the_entropy_clamp():
  from asgml_jax.transforms.arl import arl_coefficients
  z_a = np.array([[4.0, 0.0, -1.0], [3.0, 0.5, 0.0]])    # confident: H_a/ΣH < 0.3, clamped
  z_v = np.array([[0.1, 0.0, 0.2], [0.0, 0.3, 0.1]])     # unsure
  w = arl_coefficients({"audio": jnp.asarray(z_a), "visual": jnp.asarray(z_v)}, 8.0)
  expected = _arl_by_hand(z_a, z_v, 8.0)
  assert float(w["audio"]) == pytest.approx(expected[0], rel=1e-5)
  assert float(w["visual"]) == pytest.approx(expected[1], rel=1e-5)


def test_arl_zero_other_logits_carry_the_full_bias():
  from asgml_jax.transforms.arl import zero_other_logits
  split = {"audio": jnp.array([[1.0, 2.0]]), "visual": jnp.array([[0.0, 0.0]])}
  out = zero_other_logits(split, {"kernel": jnp.zeros((4, 2)), "bias": jnp.array([0.4, -2.0])})
  np.testing.assert_allclose(out["audio"], [[1.2, 1.0]])    # b/2 already in, + b/2
  np.testing.assert_allclose(out["visual"], [[0.2, -1.0]])


@pytest.mark.parametrize("scaling", ["coefficients", "fixed"])
def test_arl_transform_scales_encoders_after_start_with_the_previous_steps_weights(scaling):
  """2 steps per epoch, start 0: epoch 0 is untouched (w reset to 0.5); the first
  step of epoch 1 uses w = 0.5 (×1.5), the next the w of the step before
  (the reference's backbone reads w before the step sets it); `fixed` is ×1.5."""
  from asgml_jax.transforms.arl import arl
  tx = arl(2, 8.0, 0, scaling)
  grads = _tree([1.0, -2.0], [3.0], fusion=[0.0])
  params = {"encoders": grads["encoders"], "fusion": {"kernel": jnp.zeros((2, 3)),
                                                      "bias": jnp.zeros(3)}}
  z_a = np.array([[4.0, 0.0, -1.0], [3.0, 0.5, 0.0]])
  z_v = np.array([[0.1, 0.0, 0.2], [0.0, 0.3, 0.1]])
  logits = {"audio": jnp.asarray(z_a), "visual": jnp.asarray(z_v)}
  state = tx.init(params)
  for step in (0, 1):
    out, state = tx.update(grads, state, params, step=jnp.int32(step), unimodal_logits=logits)
    np.testing.assert_allclose(out["encoders"]["audio"]["w"], [1.0, -2.0])
    assert float(state.arl_weight["audio"]) == 0.5
  out, state = tx.update(grads, state, params, step=jnp.int32(2), unimodal_logits=logits)
  np.testing.assert_allclose(out["encoders"]["audio"]["w"], [1.5, -3.0], rtol=1e-6)
  np.testing.assert_allclose(out["fusion"]["b"], [0.0])
  w = _arl_by_hand(z_a, z_v, 8.0)
  assert float(state.arl_weight["audio"]) == pytest.approx(w[0], rel=1e-5)
  out, state = tx.update(grads, state, params, step=jnp.int32(3), unimodal_logits=logits)
  factor = (1 + w[1]) if scaling == "coefficients" else 1.5
  np.testing.assert_allclose(out["encoders"]["visual"]["w"], [3.0 * factor], rtol=1e-5)


def test_arl_step_raises_the_unimodal_weight_after_start(tfds_dir):
  """Loss = CE_f + γ_eff·Σ CE_m: γ_eff = 1 in epoch 0, γ = 4 once the epoch
  index passes start_epoch = 0."""
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir), "arl")
  config.method.arl.start_epoch = 0
  state, step, batch = jitted_step(config, steps_per_epoch=6)
  _, early = step(state, batch)
  _, late = step(state.replace(step=state.step + 6), batch)
  for metrics, gamma in ((early, 1.0), (late, 4.0)):
    expected = float(metrics["fused_loss"]) + gamma * sum(
        float(metrics[f"unimodal_loss_{m}"]) for m in ("audio", "visual"))
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ G-Blending

def test_gblend_weights_by_hand_with_the_overfitting_floor():
  """w_k = |L^V| / max(|L^V − L^T|, 1e-4)², normalised."""
  from asgml_jax.transforms.gblend import blending_weights
  w = blending_weights([1.0, 1.0, 2.0], [1.5, 1.1, 2.0])
  raw = np.array([1.5 / 0.25, 1.1 / 0.01, 2.0 / 1e-8])
  np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-9)
  assert w.sum() == pytest.approx(1.0)


def test_gblend_transform_sums_the_weighted_task_gradients():
  from asgml_jax.transforms.gblend import gblend
  tx = gblend()
  total = _tree([9.0, 9.0], [9.0], fusion=[9.0])
  loss_grads = {"fused": _tree([1.0, 0.0], [2.0], [1.0]),
                "audio": _tree([0.0, 1.0], [0.0], [0.0]),
                "visual": _tree([0.0, 0.0], [4.0], [0.0])}
  state = tx.init(total)._replace(task_weights={"fused": jnp.float32(0.5),
                                                "audio": jnp.float32(0.2),
                                                "visual": jnp.float32(0.3)})
  out, _ = tx.update(total, state, loss_grads=loss_grads)
  np.testing.assert_allclose(out["encoders"]["audio"]["w"], [0.5, 0.2], rtol=1e-6)
  np.testing.assert_allclose(out["encoders"]["visual"]["w"], [0.5 * 2 + 0.3 * 4], rtol=1e-6)
  np.testing.assert_allclose(out["fusion"]["b"], [0.5], rtol=1e-6)


def test_gblend_estimate_measures_each_tasks_train_and_holdout_loss(tfds_dir):
  """With no copy training (0 epochs) the estimate's losses are the model's own
  inference-mode CE_k on the two disjoint parts of the train split."""
  from asgml_jax.methods import gblend
  from asgml_jax.losses import loss_terms
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir), "gblend")
  setup = loop.setup_run(Plan.build(config))
  state = loop.fresh_state(setup, config.seed)
  train_idx, holdout_idx = gblend.split_train(setup.data.num_train, jax.random.PRNGKey(3), 0.08)
  assert len(holdout_idx) == round(192 * 0.08) and not set(train_idx) & set(holdout_idx)
  assert len(train_idx) + len(holdout_idx) == 192
  trainer = gblend.BranchTrainer(
      setup.model, optax.chain(*torch_direction("sgd", 1e-4, 0.9)), {})
  rows = lambda idx: jax.tree.map(lambda x: jnp.take(x, jnp.asarray(idx), axis=0),
                                  setup.data.train)
  result = gblend.estimate_weights(trainer, state.variables(), rows, train_idx, holdout_idx,
                                   epochs=0, batch_size=32, lr=0.05, key=jax.random.PRNGKey(0))

  def by_hand(idx):
    batch = {k: np.asarray(v)[idx] for k, v in setup.data.train.items()}
    out = setup.model.apply(state.variables(), {m: batch[m] for m in ("audio", "visual")},
                            train=False)
    return np.asarray(loss_terms(out, jnp.asarray(batch["label"]), ("audio", "visual")))

  np.testing.assert_allclose(result["train_losses"], by_hand(train_idx), rtol=1e-5)
  np.testing.assert_allclose(result["holdout_losses"], by_hand(holdout_idx), rtol=1e-5)
  trained = gblend.estimate_weights(trainer, state.variables(), rows, train_idx, holdout_idx,
                                    epochs=1, batch_size=32, lr=0.05, key=jax.random.PRNGKey(0))
  # training task k's copy lowers CE_k on the data it trained on
  assert np.all(trained["train_losses"] < result["train_losses"])


# ------------------------------------------------------------------ the step

def test_per_loss_gradients_are_each_losses_own_gradient_and_sum_to_the_total(tfds_dir):
  """The step's per-loss gradients (one forward, K vjps) equal jax.grad of each loss
  alone, and their γ-weighted sum is the single-backward gradient."""
  from asgml_jax import steps
  from asgml_jax.losses import loss_terms
  config = tiny_mlp_config(tfds_dir)
  from asgml_jax.config_schema import modality_config
  config.modalities.text = modality_config("mlp", (10,), mlp_hidden_dim=16)
  config.dataset.synthetic.signal.text = 0.3
  state, _, batch = jitted_step(config)
  model_state = state
  names = ("audio", "text", "visual")
  key = jax.random.fold_in(model_state.rng, model_state.step)
  from asgml_jax.models import model_from_config
  model = model_from_config(config, 4)

  def losses_fn(params):
    outputs, new_vars = model.apply({"params": params, "batch_stats": state.batch_stats},
                                    {m: batch[m] for m in names}, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": key})
    return loss_terms(outputs, batch["label"], names), outputs

  grads, losses, _ = steps.per_loss_gradients(losses_fn, state.params, 4)
  for k in range(4):
    alone = jax.grad(lambda p, k=k: losses_fn(p)[0][k])(state.params)
    _assert_trees_close(alone, grads[k], atol=1e-7)
  total = jax.grad(lambda p: jnp.dot(jnp.array([1.0, 0.5, 0.5, 0.5]), losses_fn(p)[0]))(
      state.params)
  summed = jax.tree.map(lambda *g: g[0] + 0.5 * (g[1] + g[2] + g[3]), *grads)
  _assert_trees_close(total, summed, atol=1e-7)


@pytest.mark.parametrize("method", ["dwa", "pcgrad"])
def test_weight_one_methods_match_joint_training_when_nothing_conflicts(tfds_dir, method):
  """DWA in its first two epochs (w = 1) is joint training; the step computes
  the same update through per-loss gradients as through one backward pass."""
  config = tiny_mlp_config(tfds_dir)
  config.modalities.audio.dropout = config.modalities.visual.dropout = 0.0
  state, step, batch = jitted_step(config)
  config.method.name = method
  state_m, step_m, _ = jitted_step(config)
  new, _ = step(state, batch)
  new_m, metrics = step_m(state_m, batch)
  if method == "pcgrad" and any(float(v) > 0 for k, v in metrics.items()
                                if k.startswith("pcgrad/conflicts")):
    pytest.skip("this batch has conflicting task gradients")
  _assert_trees_close(new.params, new_m.params)


VARIANTS = ["mmpareto", "pcgrad", "dwa", "gradnorm", "opm", "cggm", "inforeg", "agm",
            "miles", "pmr", "arl", "arl_fixed", "gblend", "unimodal_audio"]
EXPECTED_SIGNAL = {"mmpareto": "mmpareto/gamma_audio", "pcgrad": "pcgrad/conflicts_fused",
                   "dwa": "task_weight_fused", "gradnorm": "task_weight_visual",
                   "opm": "opm/drop_prob_audio", "cggm": "cggm/balance_audio",
                   "inforeg": "inforeg/window_k_audio", "agm": "agm/coeff_visual",
                   "miles": "miles/lr_scale_audio", "pmr": "pmr/score_visual",
                   "arl": "arl/weight_audio", "arl_fixed": "arl/grad_scale_visual",
                   "gblend": "task_weight_fused"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_baseline_variants_step_healthily_and_log_their_signals(variant):
  """Four steps of each variant (the golden record, one compiled program for the
  golden, health and signal checks): nothing non-finite, the variant's signal
  among the step's metrics."""
  record = variant_record(variant)
  assert record["health"] == [-1, -1], variant
  last = record["metrics"][-1]
  assert all(np.isfinite(v) for v in last.values()), variant
  if variant in EXPECTED_SIGNAL:
    assert EXPECTED_SIGNAL[variant] in last, f"{variant} logs no {EXPECTED_SIGNAL[variant]}"


@pytest.mark.parametrize("variant", ["unimodal_audio", "unimodal_visual"])
def test_unimodal_variants_keep_one_modality(tfds_dir, variant):
  from configs.variants import apply_variant
  plan = Plan.build(apply_variant(tiny_mlp_config(tfds_dir), variant))
  assert sorted(plan.config.modalities) == [variant.removeprefix("unimodal_")]
  assert plan.identity.method == "unimodal" and plan.identity.label == variant


def test_a_variant_run_writes_its_config_summary_and_signals_to_tensorboard(tmp_path, tfds_dir):
  """G-Blending end to end (a combiner, an epoch hook that trains branch copies):
  its summary, config.json and the loss weights in TensorBoard, finite."""
  from asgml_jax import train
  from asgml_jax.report import train_signals
  from asgml_jax.run_dir import train_tag
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir, num_epochs=1), "gblend")
  summary = train.train_and_evaluate(config, str(tmp_path / "gblend"))
  assert summary["method"] == "gblend" and "error" not in summary
  assert 0.0 <= summary["final"]["test"]["accuracy"] <= 1.0
  with open(os.path.join(tmp_path, "gblend", "config.json")) as f:
    assert json.load(f)["method"]["name"] == "gblend"
  tag = train_tag(EXPECTED_SIGNAL["gblend"].replace("/", "__"))
  signals = train_signals(str(tmp_path / "gblend"), [tag])
  assert tag in signals and np.all(np.isfinite(signals[tag][1]))


def test_unimodal_variant_names_a_configured_modality(tfds_dir):
  from configs.variants import apply_variant
  with pytest.raises(ValueError, match="no modality 'depth'"):
    apply_variant(tiny_config(tfds_dir), "unimodal_depth")


def test_gradnorm_on_the_fusion_layer_needs_split_heads(tfds_dir):
  from asgml_jax.config_schema import ConfigError, validate
  config = tiny_config(tfds_dir)
  config.method.name = "gradnorm"
  config.model.unimodal_heads = "separate"
  with pytest.raises(ConfigError, match="method.gradnorm.layer"):
    validate(config)


def test_inforeg_scales_must_name_configured_modalities(tfds_dir):
  from asgml_jax.config_schema import ConfigError, validate
  from configs.variants import apply_variant
  config = apply_variant(tiny_config(tfds_dir), "inforeg")
  assert config.method.inforeg.scales == "audio=0.95,visual=0.1"
  config.method.inforeg.scales = "depth=0.5"
  with pytest.raises(ConfigError, match=r"method.inforeg.scales: 'depth=0.5' is not"):
    validate(config)
  config.method.inforeg.scales = "audio=high"
  with pytest.raises(ConfigError, match="'high' is not a number"):
    validate(config)
