"""Modality valuation / re-sampling against NumPy transcriptions of its
reference code: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation
(code/sample_level.py `execute_modulation`, code/modality_level.py,
code/datasets/dataloader.py `AV_KS_Dataset_sample_level` / `_modality_level`)
and BalanceBenchmark balancemm/evaluation/modalitys.py
(`Calculate_Shapley_Sample`), written loop for loop."""

from __future__ import annotations

from itertools import combinations
from math import factorial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgml_jax import loop
from asgml_jax.plan import Plan, with_seed
from conftest import jitted_step, variant_config


def reference_shapley_sample(modalitys, res_cache, batch_size):
  """Calculate_Shapley_Sample's per-sample loop over one batch's cache
  {tuple(sorted(combo)): (B,) bool} (the cache as it would be if refilled per batch)."""
  n = len(modalitys)
  shapley = {m: {} for m in modalitys}
  for i in range(batch_size):
    for modality in modalitys:
      value = 0.0
      temp = [m for m in modalitys if m != modality]
      combos = [list(c) for k in range(len(temp) + 1) for c in combinations(temp, k)]
      for combo in combos:
        s = len(combo)
        v_combo = res_cache[tuple(sorted(combo))][i]
        v_add = res_cache[tuple(sorted(combo + [modality]))][i]
        weight = (factorial(s) * factorial(n - s - 1)) / factorial(n)
        value += weight * (float(v_add) - float(v_combo))
      shapley[modality][i] = value
  return shapley


def reference_paper_contribution(v_a, v_v, v_all):
  """sample_level.py execute_modulation: value_all = 2 when the fused prediction is right."""
  value_all = 2.0 if v_all else 0.0
  value_a = 1.0 if v_a else 0.0
  value_v = 1.0 if v_v else 0.0
  return (value_a + value_all - value_v) / 2.0, (value_v + value_all - value_a) / 2.0


def _random_correct(rng, names, length):
  return {frozenset(s): rng.integers(0, 2, length).astype(np.float32)
          for k in range(1, len(names) + 1) for s in combinations(names, k)}


@pytest.mark.parametrize("names", [("audio", "visual"), ("audio", "text", "visual")])
def test_shapley_values_equal_balancebenchmarks_per_sample_loop(names):
  from asgml_jax.methods.valuation import shapley_values
  rng = np.random.default_rng(0)
  correct = _random_correct(rng, names, 40)
  got = shapley_values(correct, names)
  cache = {tuple(sorted(k)): v.astype(bool) for k, v in correct.items()}
  cache[()] = np.zeros(40, bool)
  want = reference_shapley_sample(list(names), cache, 40)
  for m in names:
    np.testing.assert_allclose(got[m], [want[m][i] for i in range(40)], atol=1e-12)
  assert len({round(x, 6) for m in names for x in got[m]}) >= 4


def test_full_weight_2_is_the_papers_contribution():
  from asgml_jax.methods.valuation import shapley_values
  rng = np.random.default_rng(1)
  names = ("audio", "visual")
  correct = _random_correct(rng, names, 64)
  got = shapley_values(correct, names, full_weight=2.0)
  for i in range(64):
    a, v = reference_paper_contribution(correct[frozenset({"audio"})][i],
                                        correct[frozenset({"visual"})][i],
                                        correct[frozenset(names)][i])
    assert (got["audio"][i], got["visual"][i]) == pytest.approx((a, v))


def reference_sample_level_rows(contribution, length):
  """AV_KS_Dataset_sample_level.__init__'s appended (index, drop): drop 2 =
  visual dropped (the copy trains audio), 1 = audio dropped."""
  data, drop = list(range(length)), [0] * length
  for i in range(length):
    contrib_a, contrib_v = contribution[i]
    for value, code in ((contrib_a, 2), (contrib_v, 1)):
      if 0.4 < value < 0.9:
        copies = 1
      elif -0.1 < value < 0.4:
        copies = 2
      elif value < -0.1:
        copies = 3
      else:
        copies = 0
      for _ in range(copies):
        data.append(i)
        drop.append(code)
  return data, drop


def test_sample_level_pool_has_the_references_copies():
  from asgml_jax.methods.valuation import pool, shapley_values
  rng = np.random.default_rng(2)
  names = ("audio", "visual")
  length = 200
  correct = _random_correct(rng, names, length)
  phi = shapley_values(correct, names, full_weight=2.0)
  coded = pool(phi, names, "sample", 1.0, 0.2, np.random.default_rng(0))
  data, drop = reference_sample_level_rows(
      {i: (phi["audio"][i], phi["visual"][i]) for i in range(length)}, length)
  keep_code = {0: 0, 2: 1, 1: 2}      # drop visual -> only audio kept (code 1 + index of audio)
  want = sorted(d + length * keep_code[c] for d, c in zip(data, drop))
  assert sorted(coded.tolist()) == want
  assert len(coded) > length + 100     # many copies: the values were random


def reference_modality_level(contribution, length, part_ratio, alpha, rng):
  """modality_level.py (the part_ratio estimate) + AV_KS_Dataset_modality_level."""
  num = int(length * part_ratio)
  choice = rng.choice(length, num)
  part_a = sum(contribution[i][0] for i in choice) / num
  part_v = sum(contribution[i][1] for i in choice) / num
  gap_a, gap_v = 1.0 - part_a, 1.0 - part_v
  difference = (abs(gap_a - gap_v) / 3 * 2) * alpha
  sample_choice = rng.choice(length, int(difference * length))
  data, drop = list(range(length)), [0] * length
  for i in sample_choice:
    data.append(i)
    drop.append(2 if gap_a > gap_v else 1)
  return data, drop


@pytest.mark.parametrize("skew", [0.8, 0.2])
def test_modality_level_pool_has_the_references_rows(skew):
  from asgml_jax.methods.valuation import pool
  length = 300
  rng = np.random.default_rng(3)
  phi = {"audio": rng.choice([-0.5, 0.0, 0.5, 1.0, 1.5], length, p=[0.1, 0.1, 0.2, 0.3, 0.3]),
         "visual": rng.choice([-0.5, 0.0, 0.5, 1.0], length, p=[skew, 0.1, 0.1, 0.8 - skew])}
  coded = pool(phi, ("audio", "visual"), "modality", 1.5, 0.2, np.random.default_rng(9))
  data, drop = reference_modality_level({i: (phi["audio"][i], phi["visual"][i])
                                         for i in range(length)}, length, 0.2, 1.5,
                                        np.random.default_rng(9))
  keep_code = {0: 0, 2: 1, 1: 2}
  assert coded.tolist() == [d + length * keep_code[c] for d, c in zip(data, drop)]
  assert len(coded) > length


# ------------------------------------------------------------------ in the step and the epochs


def test_a_coded_row_trains_the_fused_loss_on_the_kept_modality_alone():
  """Rows coded "only audio" / "only visual" / all: the step's loss is the CE of
  concat(f_m · keep_m) W + b, recomputed in NumPy from the model's features."""
  from asgml_jax.input_pipeline import ROW_CODE
  from asgml_jax.models import model_from_config
  config = variant_config("valuation")
  state, step, batch = jitted_step(config, lr_fn=lambda s: 0.0)
  codes = np.arange(32) % 3
  coded = {**batch, ROW_CODE: jnp.asarray(codes, jnp.int32)}
  model = model_from_config(config, 4)
  names = model.modality_names
  out = model.apply({"params": state.params}, {m: batch[m] for m in names}, train=True,
                    rngs={"dropout": jax.random.PRNGKey(0)})
  kernel = np.asarray(state.params["fusion"]["kernel"], np.float64)
  bias = np.asarray(state.params["fusion"]["bias"], np.float64)
  feats = [np.asarray(out["features"][m], np.float64) for m in names]
  keep = [(codes == 0) | (codes == 1 + i) for i in range(len(names))]
  fused = np.concatenate([f * k[:, None] for f, k in zip(feats, keep)], 1) @ kernel + bias
  z = fused - fused.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  want = -np.mean(logp[np.arange(32), np.asarray(batch["label"])])
  _, metrics = step(state, coded)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  _, plain = step(state, batch)
  assert abs(float(plain["loss"]) - want) > 1e-3


def test_the_epoch_order_is_a_draw_from_the_references_pool(tfds_dir):
  """The hook values the training set on the current model (the correctness
  of every modality subset recomputed here from features and the fusion
  weight), builds the reference's copies, and keeps steps × batch of them,
  without replacement, as the next epoch's order; before start_epoch the
  pipeline's permutation stands."""
  from asgml_jax.epoch_hooks import EpochHooks
  from asgml_jax.input_pipeline import epoch_order
  from asgml_jax.methods.valuation import pool, shapley_values
  config = variant_config("valuation", data_dir=tfds_dir, **{"method.valuation.start_epoch": 2})
  setup = loop.setup_run(Plan.build(config))
  state = loop.fresh_state(setup, 42)
  key = loop.run_keys(42)[1]
  hooks = EpochHooks(setup, [key], stacked=False)
  assert hooks.epoch_end(state, [{}], next_epoch=1) is state          # before start_epoch
  perm = epoch_order(setup.data, key, 1)
  size = setup.steps_per_epoch * config.batch_size
  np.testing.assert_array_equal(np.asarray(hooks.epoch_rows(state, perm)),
                                np.asarray(perm)[:size])
  after = hooks.epoch_end(state, [{}], next_epoch=2)
  order = np.asarray(optax.tree_utils.tree_get(after.opt_state, "valuation_order"))
  assert order.shape == (size,)
  np.testing.assert_array_equal(np.asarray(hooks.epoch_rows(after, perm)), order)
  # Independently: correctness of each subset from the eval-mode features.
  data, names = setup.data, setup.names
  out = setup.model.apply(state.variables(), {m: data.train[m] for m in names}, train=False)
  kernel = np.asarray(state.params["fusion"]["kernel"], np.float64)
  bias = np.asarray(state.params["fusion"]["bias"], np.float64)
  feats = {m: np.asarray(out["features"][m], np.float64) for m in names}
  labels = np.asarray(data.train["label"])
  correct = {}
  for k in range(1, len(names) + 1):
    for s in combinations(names, k):
      fused = np.concatenate([feats[m] * (m in s) for m in names], 1) @ kernel + bias
      correct[frozenset(s)] = (fused.argmax(1) == labels).astype(np.float32)
  phi = shapley_values(correct, names)
  length = data.num_train
  full = pool(phi, names, "sample", 1.0, 0.2, np.random.default_rng(0))
  assert len(full) > size
  # A draw without replacement: every entry at most as often as in the pool.
  drawn, times = np.unique(order, return_counts=True)
  available = dict(zip(*np.unique(full, return_counts=True)))
  assert all(available.get(int(v), 0) >= c for v, c in zip(drawn, times))
  contribution = optax.tree_utils.tree_get(after.opt_state, "valuation_contribution")
  for m in names:
    assert float(contribution[m]) == pytest.approx(float(np.mean(phi[m])), abs=1e-6)
  assert np.any(order >= length) and np.any(order < length)
  # Deterministic per (seed, epoch): a second call draws the same order.
  again = hooks.epoch_end(state, [{}], next_epoch=2)
  np.testing.assert_array_equal(
      np.asarray(optax.tree_utils.tree_get(again.opt_state, "valuation_order")), order)


def test_valuation_trains_in_a_seed_sweep_and_resumes_exactly(tmp_path, tfds_dir):
  """Seed 42 of a 2-seed sweep (host-fed data) stopped after 2 epochs and
  resumed to 3 ends with the parameters of one uninterrupted device-fed run:
  the re-sampled orders (from epoch 1 on) live in the state, per seed."""
  from asgml_jax import checkpointing, sweep, train
  config = variant_config("valuation", data_dir=tfds_dir,
                          **{"num_epochs": 3, "method.valuation.start_epoch": 1})
  train.train_and_evaluate(with_seed(config, 42), str(tmp_path / "one"))
  dirs = [str(tmp_path / f"sweep_{s}") for s in (42, 7)]
  short = variant_config("valuation", data_dir=tfds_dir,
                         **{"num_epochs": 2, "method.valuation.start_epoch": 1,
                            "dataset.placement": "host"})
  sweep.train_sweep(short, (42, 7), dirs, seed_axis="vmap")
  config.dataset.placement = "host"
  sweep.train_sweep(config, (42, 7), dirs, seed_axis="vmap")
  like = loop.fresh_state(loop.setup_run(Plan.build(config)), 0)
  one = checkpointing.restore_newest(str(tmp_path / "one"), like)[0]
  swept = [checkpointing.restore_newest(d, like)[0] for d in dirs]
  assert int(one.step) == int(swept[0].step) == 3 * loop.setup_run(Plan.build(config)).steps_per_epoch
  for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(swept[0].params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  orders = [np.asarray(optax.tree_utils.tree_get(s.opt_state, "valuation_order")) for s in swept]
  assert not np.array_equal(orders[0], orders[1])          # each seed its own draw
  np.testing.assert_array_equal(
      np.asarray(optax.tree_utils.tree_get(one.opt_state, "valuation_order")), orders[0])


def test_start_epoch_0_resamples_the_first_epoch_from_the_initial_model(tfds_dir):
  from asgml_jax.epoch_hooks import EpochHooks
  config = variant_config("valuation", data_dir=tfds_dir, **{"method.valuation.start_epoch": 0})
  setup = loop.setup_run(Plan.build(config))
  state = loop.fresh_state(setup, 42)
  ready = EpochHooks(setup, [loop.run_keys(42)[1]], stacked=False).prepare(state)
  assert float(optax.tree_utils.tree_get(ready.opt_state, "valuation_active")) == 1.0
  order = np.asarray(optax.tree_utils.tree_get(ready.opt_state, "valuation_order"))
  assert np.any(order >= setup.data.num_train)


# ------------------------------------------------------------------ pool-length epochs


def test_a_pool_epoch_is_the_whole_pool_once():
  """The reference trains every entry of the re-sampled set once per epoch:
  sample_level.py:141-151 builds a DataLoader over `AV_KS_Dataset_sample_level`
  (the originals, then the copies, dataloader.py:116-185) and `train_epoch`
  (:164) iterates all of it. Here the last partial batch is dropped and the
  order padded to the epoch's slots, which the largest pool fills exactly."""
  from asgml_jax.methods.base import PAD_ENTRY
  from asgml_jax.methods.valuation import max_rows, pool, whole_pool_order
  names, length, batch = ("audio", "visual"), 50, 8
  rng = np.random.default_rng(0)
  phi = {m: rng.choice([-0.5, 0.0, 0.5, 1.0, 1.5], length) for m in names}
  coded = pool(phi, names, "sample", 1.0, 0.2, rng)
  config = variant_config("valuation", **{"method.valuation.epoch_length": "pool"})
  size = max_rows(config, length)
  assert size == length * (1 + 3 * 2)
  order = whole_pool_order(coded, size, batch, np.random.default_rng(1))
  real = order[order >= 0]
  assert len(order) == size and len(real) == len(coded) // batch * batch
  assert np.all(order[len(real):] == PAD_ENTRY)
  left_out = dict(zip(*np.unique(coded, return_counts=True)))
  for value in real:
    left_out[int(value)] -= 1
  assert min(left_out.values()) >= 0 and sum(left_out.values()) == len(coded) - len(real) < batch
  worst = {m: np.full(length, -0.5) for m in names}          # 3 copies of every row per modality
  assert len(pool(worst, names, "sample", 1.0, 0.2, rng)) == size
  for weight in (1.0, 2.0):                                   # the modality level's largest d
    config.method.valuation.update(dict(level="modality", full_weight=weight, alpha=1.5))
    extreme = {"audio": np.full(length, 0.5 + 0.5 * weight), "visual": np.full(length, -0.5)}
    assert len(pool(extreme, names, "modality", 1.5, 1.0, rng)) <= max_rows(config, length)
  reference = variant_config("valuation", **{"method.protocol": "reference"})
  assert reference.method.valuation.epoch_length == "pool"
  assert variant_config("valuation").method.valuation.epoch_length == "fixed"


def test_pool_epochs_train_each_seeds_whole_pool_in_a_sweep(tmp_path, tfds_dir, monkeypatch):
  """With `epoch_length=pool` an epoch has max_rows // batch slots: epoch 0
  trains the 192 originals (6 batches), epoch 1 its re-sampled pool; the loop
  dispatches the batches that hold rows and skips the rest, and in a 2-seed
  sweep the seed with the shorter pool skips its padding inside the step, so
  each seed of the sweep ends with the parameters of its own run."""
  from asgml_jax import checkpointing, sweep, train
  config = variant_config("valuation", data_dir=tfds_dir, **{
      "num_epochs": 2, "method.valuation.start_epoch": 1,
      "method.valuation.epoch_length": "pool", "dataset.placement": "host"})
  setup = loop.setup_run(Plan.build(config))
  assert setup.steps_per_epoch == 192 * 7 // 32
  dispatched, real = [], []
  counted = loop.trained_batches

  def counting(perms, batch_size, steps):
    dispatched.append(counted(perms, batch_size, steps))
    real.append(np.sum(np.asarray(perms) >= 0, axis=-1).tolist())
    return dispatched[-1]
  monkeypatch.setattr(loop, "trained_batches", counting)
  seeds = (42, 7)
  for seed in seeds:
    train.train_and_evaluate(with_seed(config, seed), str(tmp_path / f"one_{seed}"))
  assert dispatched[0] == dispatched[2] == 6 and real[0] == real[2] == 192
  pools = (real[1], real[3])
  assert dispatched[1] == pools[0] // 32 > 6 and dispatched[3] == pools[1] // 32
  assert pools[0] != pools[1]                           # one seed's pool is the shorter
  dirs = [str(tmp_path / f"sweep_{s}") for s in seeds]
  sweep.train_sweep(config, seeds, dirs, seed_axis="vmap")
  assert tuple(real[5]) == pools and dispatched[5] == max(pools) // 32
  like = loop.fresh_state(setup, 0)
  for seed, swept_dir in zip(seeds, dirs):
    one = checkpointing.restore_newest(str(tmp_path / f"one_{seed}"), like)[0]
    swept = checkpointing.restore_newest(swept_dir, like)[0]
    assert int(one.step) == int(swept.step) == 2 * setup.steps_per_epoch
    for x, y in zip(jax.tree.leaves((one.params, one.opt_state, one.batch_stats)),
                    jax.tree.leaves((swept.params, swept.opt_state, swept.batch_stats))):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
