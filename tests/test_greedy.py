"""Greedy (conditional learning speed) and its MMTM mid-fusion model, against
NumPy transcriptions of GeWu-Lab/BalanceBenchmark balancemm/models/
avclassify_model.py (`MMTM.forward`) and balancemm/trainer/Greedy_trainer.py
(`train_loop`, `compute_learning_speed`), written loop for loop in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import jitted_step, tiny_mlp_config, variant_config


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def reference_mmtm(data, params, names, curation_mode=False, caring_modality=0,
                   running_avg=None, step=0):
  """`MMTM.forward` on channels-first maps data[m] (B, C, ...) (a visual clip
  (B, C, T, H, W) after the reference's permute); params as the Flax block.
  Returns (rescaled maps, new running averages)."""
  squeeze_array = []
  for m in names:
    b, c = data[m].shape[:2]
    squeeze_array.append(data[m].reshape(b, c, -1).mean(-1))
  squeeze = np.concatenate(squeeze_array, 1)
  excitation = np.maximum(squeeze @ params["squeeze"]["kernel"] + params["squeeze"]["bias"], 0)
  out, avg = {}, {}
  for m in names:
    e = excitation @ params[f"excite_{m}"]["kernel"] + params[f"excite_{m}"]["bias"]
    out[m] = _sigmoid(e)
    avg[m] = (out[m].mean(0) + running_avg[m] * step) / (step + 1)
  result = {}
  for i, m in enumerate(names):
    scale = out[m]
    if curation_mode and caring_modality == i:
      scale = np.stack(scale.shape[0] * [avg[m]])
    extra = data[m].ndim - 2
    result[m] = data[m] * scale.reshape(scale.shape + (1,) * extra)
  return result, avg


def _block_params(rng, widths, ratio=4):
  total = sum(widths.values())
  hidden = int(2 * total / ratio)
  p = {"squeeze": {"kernel": rng.normal(size=(total, hidden)), "bias": rng.normal(size=hidden)}}
  for m, c in widths.items():
    p[f"excite_{m}"] = {"kernel": rng.normal(size=(hidden, c)), "bias": rng.normal(size=c)}
  return p


@pytest.mark.parametrize("curated", [None, 0, 1])
def test_mmtm_block_equals_the_reference_forward(curated):
  from asgml_jax.models.mid_fusion import MMTM
  rng = np.random.default_rng(3)
  names = ("audio", "visual")
  batch, frames = 3, 2
  audio = rng.normal(size=(batch, 5, 4, 6))                 # (B, H, W, C)
  visual = rng.normal(size=(batch * frames, 3, 3, 8))        # (B·T, H, W, C), frames folded
  params = _block_params(rng, {"audio": 6, "visual": 8})
  running = {"audio": rng.uniform(size=6), "visual": rng.uniform(size=8)}
  count = 4.0

  def control(block, excitation):
    new = {m: (jnp.mean(excitation[m], 0) + running[m] * count) / (count + 1) for m in names}
    scales = {m: (new[m][None] if curated == i else excitation[m]) for i, m in enumerate(names)}
    return scales, new

  out, info = MMTM(names).apply({"params": params},
                                {"audio": jnp.asarray(audio, jnp.float32),
                                 "visual": jnp.asarray(visual, jnp.float32)},
                                batch, control if curated is not None else None, "mmtm1")
  # The reference's layouts: audio (B, C, H, W); visual (B, C, T, H, W).
  data = {"audio": audio.transpose(0, 3, 1, 2),
          "visual": visual.reshape(batch, frames, 3, 3, 8).transpose(0, 4, 1, 2, 3)}
  want, avg = reference_mmtm(data, params, names, curated is not None, curated or 0,
                             running, int(count))
  np.testing.assert_allclose(np.asarray(out["audio"]), want["audio"].transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)
  got_visual = np.asarray(out["visual"]).reshape(batch, frames, 3, 3, 8)
  np.testing.assert_allclose(got_visual, want["visual"].transpose(0, 2, 3, 4, 1),
                             rtol=1e-5, atol=1e-5)
  if curated is not None:
    for m in names:
      np.testing.assert_allclose(np.asarray(info[m]), avg[m], rtol=1e-5, atol=1e-6)
    # The curated modality's maps are scaled by one vector for the whole batch.
    m = names[curated]
    ratio = np.asarray(out[m]).reshape(batch, -1, out[m].shape[-1]) / (
        data[m].transpose(*((0,) + tuple(range(2, data[m].ndim)) + (1,)))
        .reshape(batch, -1, out[m].shape[-1]))
    np.testing.assert_allclose(ratio, np.broadcast_to(avg[m], ratio.shape), rtol=1e-4)


@pytest.mark.parametrize("encoder", ["resnet18", "small_cnn", "mlp"])
def test_staged_encoder_equals_the_whole_encoder(encoder):
  from asgml_jax.config_schema import modality_config
  from asgml_jax.models.encoders import make_encoder, stage_count
  from asgml_jax.models.multimodal import encoder_spec
  shape = {"resnet18": (2, 8, 8, 3), "small_cnn": (2, 12, 12, 1), "mlp": (10,)}[encoder]
  mod = modality_config(encoder, shape, cnn_width=4, mlp_hidden_dim=8, dropout=0.0)
  spec = encoder_spec("audio", mod)
  net = make_encoder(spec, 16, jnp.float32, "audio")
  x = jax.random.normal(jax.random.PRNGKey(0), (3,) + shape)
  frames = shape[0] if len(shape) == 4 else 1

  @jax.jit     # one program (op-by-op dispatch of a ResNet is slower than compiling it)
  def both(x):
    variables = net.init(jax.random.PRNGKey(1), x, False)
    y = x
    for k in range(stage_count([encoder]) + 1):
      y = net.apply(variables, y, False, stage=k, frames=frames)
    return net.apply(variables, x, False), y

  whole, staged = both(x)
  np.testing.assert_allclose(np.asarray(staged), np.asarray(whole), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the learning-speed test


def reference_learning_speed(named_grads, named_params, modality_list, trainer):
  """Greedy_trainer.compute_learning_speed over torch-style parameter names."""
  wn_main, wn_bypass = [0] * len(modality_list), [0] * len(modality_list)
  gn_main, gn_bypass = [0] * len(modality_list), [0] * len(modality_list)
  for name, parameter in named_params.items():
    wn = float((parameter ** 2).sum())
    gn = float((named_grads[name] ** 2).sum())
    if "mmtm_layers" in name:
      shared = True
      for ind, modal in enumerate(modality_list):
        if modal in name:
          wn_bypass[ind] += wn
          gn_bypass[ind] += gn
          shared = False
      if shared:
        for ind, modal in enumerate(modality_list):
          wn_bypass[ind] += wn
          gn_bypass[ind] += gn
    else:
      for ind, modal in enumerate(modality_list):
        if modal in name:
          wn_main[ind] += wn
          gn_main[ind] += gn
  for i in range(len(modality_list)):
    trainer["M_bypass"][i] += gn_bypass[i] / wn_bypass[i]
    trainer["M_main"][i] += gn_main[i] / wn_main[i]
  bdr = [np.log10(trainer["M_bypass"][i] / trainer["M_main"][i]) for i in range(len(modality_list))]
  return bdr


def reference_after_backward(trainer, bdr_fn, alpha, window_size):
  """Greedy_trainer.train_loop's branch after `training_step` (N = 2: the sign of
  BDR_0 − BDR_1)."""
  if not trainer["curation_mode"]:
    bdr = bdr_fn()
    speed = bdr[0] - bdr[1]
    if abs(speed) > alpha:
      trainer["curation_mode"] = True
      trainer["curation_step"] = 0
      trainer["caring_modality"] = 1 if np.sign(speed) == -1 else 0
    else:
      trainer["curation_mode"] = False
      trainer["caring_modality"] = 0
  else:
    trainer["curation_step"] += 1
    if trainer["curation_step"] == window_size:
      trainer["curation_mode"] = False


def _torch_names(tree, names):
  """Our params tree flattened under BalanceBenchmark's parameter names."""
  out = {}
  for m in names:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree["encoders"][m]):
      out[f"modality_encoder.{m}." + ".".join(p.key for p in path)] = np.asarray(leaf, np.float64)
  for block, parts in tree["mid_fusion"].items():
    for part, leaves in parts.items():
      torch_part = ("fc_squeeze" if part == "squeeze"
                    else "fc_excites." + part.removeprefix("excite_"))
      for key, leaf in leaves.items():
        out[f"mmtm_layers.{block}.{torch_part}.{key}"] = np.asarray(leaf, np.float64)
  out["fusion_module.fc_out.weight"] = np.asarray(tree["fusion"]["kernel"], np.float64)
  return out


def _random_tree(rng, names, scale):
  tree = {"encoders": {m: {"fc1": {"kernel": rng.normal(size=(4, 3)) * scale[m],
                                   "bias": rng.normal(size=3) * scale[m]}} for m in names},
          "mid_fusion": {f"mmtm{k}": {"squeeze": {"kernel": rng.normal(size=(6, 3)),
                                                  "bias": rng.normal(size=3)},
                                      **{f"excite_{m}": {"kernel": rng.normal(size=(3, 2)),
                                                         "bias": rng.normal(size=2)}
                                         for m in names}}
                         for k in (1, 2)},
          "fusion": {"kernel": rng.normal(size=(5, 4))}}
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def test_curation_windows_follow_the_reference_trainer():
  """30 steps of random gradients: the M sums, BDRs, curation windows and the
  curated modality equal the reference trainer's, step by step (α is chosen so
  that some steps start a window and some do not)."""
  from asgml_jax.methods.greedy import conditional_speed
  names = ("audio", "visual")
  alpha, window = 0.05, 3
  tx = conditional_speed(alpha, window, start_step=0)
  rng = np.random.default_rng(0)
  params = _random_tree(rng, names, {"audio": 1.0, "visual": 1.0})
  state = tx.init(params)
  trainer = {"M_bypass": [0.0, 0.0], "M_main": [0.0, 0.0], "curation_mode": False,
             "curation_step": window, "caring_modality": 0}
  starts, curated_steps = 0, 0
  for step in range(30):
    scale = {"audio": rng.uniform(0.2, 3.0), "visual": rng.uniform(0.2, 3.0)}
    grads = _random_tree(rng, names, scale)
    was_curating = trainer["curation_mode"]
    ref_bdr = []
    reference_after_backward(
        trainer, lambda: ref_bdr.extend(reference_learning_speed(
            _torch_names(grads, names), _torch_names(params, names), list(names), trainer))
        or ref_bdr, alpha, window)
    out, state = tx.update(grads, state, params, step=jnp.int32(step))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), out, grads))
    want = {m: float(trainer["curation_mode"] and trainer["caring_modality"] == i)
            for i, m in enumerate(names)}
    got = {m: float(state.greedy_curated[m]) for m in names}
    assert got == want, (step, got, want)
    for i, m in enumerate(names):
      np.testing.assert_allclose(float(state.greedy_speed_main[m]), trainer["M_main"][i],
                                 rtol=1e-5)
      np.testing.assert_allclose(float(state.greedy_speed_bypass[m]), trainer["M_bypass"][i],
                                 rtol=1e-5)
      if ref_bdr:
        np.testing.assert_allclose(float(state.greedy_bdr[m]), ref_bdr[i], rtol=1e-4, atol=1e-6)
    starts += int(not was_curating and trainer["curation_mode"])
    curated_steps += int(was_curating)
  assert starts >= 2 and 0 < curated_steps < 30, (starts, curated_steps)


def test_three_modalities_curate_the_largest_bdr_and_nothing_before_start_epoch():
  from asgml_jax.methods.greedy import conditional_speed
  names = ("audio", "text", "visual")
  rng = np.random.default_rng(1)
  params = _random_tree(rng, names, {m: 1.0 for m in names})
  tx = conditional_speed(0.01, 2, start_step=2)
  state = tx.init(params)
  grads = _random_tree(rng, names, {"audio": 1.0, "text": 0.1, "visual": 1.0})
  for step in range(2):   # locked: the sums grow, nothing is curated
    _, state = tx.update(grads, state, params, step=jnp.int32(step))
    assert all(float(v) == 0.0 for v in state.greedy_curated.values())
  _, state = tx.update(grads, state, params, step=jnp.int32(2))
  bdr = {m: float(state.greedy_bdr[m]) for m in names}
  top = max(bdr, key=bdr.get)
  assert max(bdr.values()) - min(bdr.values()) > 0.01
  assert {m: float(v) for m, v in state.greedy_curated.items()} == {
      m: float(m == top) for m in names}
  assert top == "text"       # the smallest encoder gradient: the largest bypass/main ratio


# ------------------------------------------------------------------ in the train step


def test_a_curated_modality_takes_no_gradient_through_its_excitation():
  """In a curation step of audio, audio's MMTM scales are the (stop-gradient)
  running average, as the reference's detached `running_avg_weight`: its
  excitation layers get exactly zero gradient, visual's do not; the features
  differ from the same forward outside curation."""
  from asgml_jax.methods import greedy
  from asgml_jax.methods.base import BuildContext, StepContext
  from asgml_jax.models import model_from_config
  from asgml_jax.losses import cross_entropy
  config = variant_config("greedy")
  state, _, batch = jitted_step(config)
  model = model_from_config(config, 4)
  names = model.modality_names
  opt_state = optax_set(state.opt_state, "greedy_curated", {"audio": jnp.float32(1.0),
                                                            "visual": jnp.float32(0.0)})
  opt_state = optax_set(opt_state, "greedy_average_count", jnp.float32(3.0))
  state = state.replace(opt_state=opt_state)
  ctx = BuildContext(config, 6, 4, names)
  control = greedy.mid_fusion_control(ctx)(StepContext(model, batch, batch["label"], names,
                                                       state, None))
  inputs = {m: batch[m] for m in names}

  def loss(params, ctl):
    out, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, inputs, train=True,
                         mutable=["batch_stats"], mid_fusion_control=ctl)
    return cross_entropy(out["logits"], batch["label"]), out

  grads, out = jax.grad(loss, has_aux=True)(state.params, control)
  _, plain = loss(state.params, None)
  for block in grads["mid_fusion"].values():
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(block["excite_audio"]))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(block["excite_visual"])) > 0
  assert float(jnp.max(jnp.abs(out["features"]["audio"] - plain["features"]["audio"]))) > 1e-4
  assert set(out["mid_fusion"]) == set(grads["mid_fusion"])


def optax_set(opt_state, field, value):
  return optax.tree_utils.tree_set(opt_state, **{field: value})


def test_train_steps_keep_the_running_average_of_the_excitations():
  """Three jitted steps: the state's averages are the mean over the three
  batches' batch-mean excitations (recomputed from each step's params)."""
  from asgml_jax.models import model_from_config
  config = variant_config("greedy", **{"method.greedy.alpha": 1e9})     # no curation window
  state, step, batch = jitted_step(config, lr_fn=lambda s: 0.05)
  model = model_from_config(config, 4)
  names = model.modality_names
  seen = []

  def capture(block, excitation):
    return excitation, {m: jnp.mean(excitation[m], 0) for m in names}

  for _ in range(3):
    out, _ = model.apply(state.variables(), {m: batch[m] for m in names}, train=True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(
                             state.rng, state.step)}, mid_fusion_control=capture)
    seen.append(out["mid_fusion"])
    state, _ = step(state, batch)
  assert int(state.health[0]) == -1
  average = optax.tree_utils.tree_get(state.opt_state, "greedy_average")
  assert float(optax.tree_utils.tree_get(state.opt_state, "greedy_average_count")) == 3.0
  assert set(average) == {"mmtm1", "mmtm2"}      # after both MLP stages
  for block in average:
    for m in names:
      want = np.mean([np.asarray(s[block][m]) for s in seen], 0)
      np.testing.assert_allclose(np.asarray(average[block][m]), want, rtol=1e-4, atol=1e-6)


def test_greedy_refuses_encoders_that_do_not_run_in_stages():
  from asgml_jax.config_checks import ConfigError
  from asgml_jax.config_schema import modality_config, validate
  from configs.variants import apply_variant
  with pytest.raises(ConfigError, match="model.mid_fusion.*same number of stages"):
    config = tiny_mlp_config("/tmp/unused")
    config.modalities.audio = modality_config("small_cnn", (12, 12, 1), cnn_width=4)
    validate(apply_variant(config, "greedy"))
  with pytest.raises(ConfigError, match="model.mid_fusion: greedy measures"):
    config = tiny_mlp_config("/tmp/unused")
    config.method.name = "greedy"
    validate(config)
