"""Seed sweeps: S seeds in one program equal S separate runs; resume; report; CLI.

Tolerance: a sweep's step is a different XLA program from a single run's
(vmap batches the matmuls over seeds; unroll fuses S copies of the step), so
float sums may be reassociated. Over the 12 steps here, params agree to
rtol 1e-4 / atol 1e-5 and every eval metric to within one example of
the 48-example splits (|Δacc| <= 1/48); in practice they come out equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from asgml_jax import checkpointing, loop, programs
from asgml_jax.plan import Plan, with_seed
from conftest import ROOT, tiny_config, tiny_mlp_config

SEEDS = (42, 0, 7)


def _assert_same_run(single: dict, swept: dict, single_dir: str, swept_dir: str, like):
  for split in ("validation", "test"):
    for key, value in single["final"][split].items():
      assert abs(value - swept["final"][split][key]) <= 1 / 48 + 1e-9, (split, key)
  assert single["best_val_epoch"] == swept["best_val_epoch"]
  a, b = (checkpointing.restore_newest(d, like)[0].params for d in (single_dir, swept_dir))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["vmap", "unroll"])
def test_three_seeds_in_one_program_equal_three_separate_runs(tmp_path, tfds_dir, mode):
  """Both seed-axis modes on MLP encoders (what differs between them is how
  the seed axis is compiled, not the encoder; CNNs only change the speed)."""
  from asgml_jax import sweep, train
  config = tiny_mlp_config(tfds_dir)
  config.method.name = "ogm_ge"  # per-seed GE noise must differ and match the single run
  swept = sweep.train_sweep(config, SEEDS, [str(tmp_path / f"sweep_{s}") for s in SEEDS],
                            seed_axis=mode)
  setup = loop.setup_run(Plan.build(config))
  like = loop.fresh_state(setup, 0)
  finals = set()
  for seed, result in zip(SEEDS, swept):
    assert result["seed"] == seed and "error" not in result
    single = train.train_and_evaluate(with_seed(config, seed), str(tmp_path / f"one_{seed}"))
    _assert_same_run(single, result, str(tmp_path / f"one_{seed}"),
                     str(tmp_path / f"sweep_{seed}"), like)
    finals.add(json.dumps(single["final"], sort_keys=True))
  assert len(finals) == len(SEEDS), "seeds must differ (own init, data order, GE noise)"


def test_a_one_seed_sweep_is_a_single_run(tmp_path, tfds_dir, capsys):
  """One loop: `train_sweep` with one seed and `train_and_evaluate` run the same
  program, so their summaries agree in every number (not only to a tolerance)."""
  from asgml_jax import sweep, train
  config = tiny_mlp_config(tfds_dir)
  config.method.name = "ogm_ge"
  single = train.train_and_evaluate(with_seed(config, 7), str(tmp_path / "single"))
  (swept,) = sweep.train_sweep(config, [7], [str(tmp_path / "sweep")])
  assert "sweep:" not in capsys.readouterr().out   # no seed axis: the single run's program
  skip = {"workdir", "seconds_per_epoch"}
  assert {k: v for k, v in single.items() if k not in skip} == \
      {k: v for k, v in swept.items() if k not in skip}


@pytest.mark.parametrize("variant,field", [("miles", "miles_lr_scale"),
                                           ("pmr", "pmr_prototypes"),
                                           ("gblend", "task_weights")])
def test_epoch_hooks_give_each_seed_of_a_sweep_its_own_values(tmp_path, tfds_dir, variant, field):
  """MILES's rates, PMR's prototypes and G-Blending's weights are set between
  epochs from each seed's own validation metrics / features / branch copies: a 2-seed sweep saves what 2 runs save
  (host-fed data for the sweep, so both data paths of the hooks run)."""
  import optax

  from asgml_jax import sweep, train
  from configs.variants import apply_variant
  config = apply_variant(tiny_mlp_config(tfds_dir), variant)
  config.method.miles.tau = 0.0
  config.method.gblend.gb_epoch = 1
  seeds = (42, 5)
  single = [train.train_and_evaluate(with_seed(config, s), str(tmp_path / f"one_{s}"))
            for s in seeds]
  config.dataset.placement = "host"
  swept = sweep.train_sweep(config, seeds, [str(tmp_path / f"sweep_{s}") for s in seeds],
                            seed_axis="vmap")
  like = loop.fresh_state(loop.setup_run(Plan.build(config)), 0)
  def saved_field(name):
    state = checkpointing.restore_newest(str(tmp_path / name), like)[0]
    return optax.tree_utils.tree_get(state.opt_state, field)

  for s, a, b in zip(seeds, single, swept):
    _assert_same_run(a, b, str(tmp_path / f"one_{s}"), str(tmp_path / f"sweep_{s}"), like)
    x, y = saved_field(f"one_{s}"), saved_field(f"sweep_{s}")
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)
  values = [saved_field(f"one_{s}") for s in seeds]
  if variant == "pmr":  # the seeds' prototypes differ
    assert not np.allclose(np.asarray(values[0]["audio"]), np.asarray(values[1]["audio"]))


def test_sweep_resumes_from_the_epoch_all_seeds_saved(tmp_path, tfds_dir):
  """A kill between two seeds' saves leaves one seed an epoch ahead: the rerun
  restarts every seed from the common epoch and ends where an unbroken sweep does."""
  from asgml_jax import sweep
  config = tiny_mlp_config(tfds_dir, num_epochs=3)
  seeds = (1, 2)
  straight = sweep.train_sweep(config, seeds, [str(tmp_path / f"a{s}") for s in seeds])
  config.num_epochs = 2
  dirs = [str(tmp_path / f"b{s}") for s in seeds]
  sweep.train_sweep(config, seeds, dirs)
  # Seed 2 "did not get to save" epoch 2: drop its newest checkpoint and summary.
  newest = max(int(d) for d in os.listdir(os.path.join(dirs[1], "checkpoints")) if d.isdigit())
  shutil.rmtree(os.path.join(dirs[1], "checkpoints", str(newest)))
  os.remove(os.path.join(dirs[1], "summary.json"))
  config.num_epochs = 3
  resumed = sweep.train_sweep(config, seeds, dirs)
  for a, b in zip(straight, resumed):
    assert a["final"] == b["final"]
    assert a["best_val_epoch"] == b["best_val_epoch"]
    assert a["num_epochs"] == b["num_epochs"] == 3


def test_a_stop_between_two_seeds_saves_resumes_with_checkpoint_keep_1(tmp_path, tfds_dir,
                                                                       monkeypatch):
  """Seeds save one after another; a stop after seed 1 saved epoch 2 and before
  seed 2 did leaves them an epoch apart. Each seed keeps one step more than
  checkpoint_keep until all have saved the epoch, so even with keep 1 the
  rerun finds the common epoch and ends where an unbroken sweep does."""
  from asgml_jax import interrupts, run_dir, sweep
  config = tiny_mlp_config(tfds_dir, num_epochs=3)
  config.checkpoint_keep = 1
  seeds = (1, 2)
  straight = sweep.train_sweep(config, seeds, [str(tmp_path / f"a{s}") for s in seeds])
  for s in seeds:   # a finished sweep keeps checkpoint_keep steps
    assert len([d for d in os.listdir(tmp_path / f"a{s}" / "checkpoints") if d.isdigit()]) == 1
  dirs = [str(tmp_path / f"b{s}") for s in seeds]
  end_epoch = run_dir.RunDir.end_epoch

  def stopped_before_seed_2_saves_epoch_2(self, step, state, record):
    if self.workdir == dirs[1] and record["epoch"] == 2:
      raise interrupts.Interrupted(15)
    return end_epoch(self, step, state, record)
  monkeypatch.setattr(run_dir.RunDir, "end_epoch", stopped_before_seed_2_saves_epoch_2)
  with pytest.raises(interrupts.Interrupted):
    sweep.train_sweep(config, seeds, dirs)
  monkeypatch.setattr(run_dir.RunDir, "end_epoch", end_epoch)
  resumed = sweep.train_sweep(config, seeds, dirs)
  for a, b in zip(straight, resumed):
    assert a["final"] == b["final"]
    assert a["best_val_epoch"] == b["best_val_epoch"]
    assert a["num_epochs"] == b["num_epochs"] == 3


def test_host_fed_data_train_like_device_resident_data(tmp_path, tfds_dir):
  """The host fallback for large datasets gathers the same per-seed batches as
  the device path: a single run and a 2-seed sweep end where their
  device-resident twins do, and "auto" picks the host past the budget."""
  from asgml_jax import input_pipeline, sweep, train
  config = tiny_mlp_config(tfds_dir, num_epochs=1)
  config.dataset.placement = "host"
  host_one = train.train_and_evaluate(config, str(tmp_path / "host_one"))
  host_swept = sweep.train_sweep(config, (42, 5), [str(tmp_path / f"host_{s}") for s in (42, 5)])
  config.dataset.placement = "device"
  device_one = train.train_and_evaluate(config, str(tmp_path / "device_one"))
  device_swept = sweep.train_sweep(config, (42, 5),
                                   [str(tmp_path / f"device_{s}") for s in (42, 5)])
  like = loop.fresh_state(loop.setup_run(Plan.build(config)), 0)
  _assert_same_run(device_one, host_one, str(tmp_path / "device_one"),
                   str(tmp_path / "host_one"), like)
  for s, a, b in zip((42, 5), device_swept, host_swept):
    _assert_same_run(a, b, str(tmp_path / f"device_{s}"), str(tmp_path / f"host_{s}"), like)
  config.dataset.placement = "auto"
  config.dataset.device_budget_gib = 1e-6  # ~1 KiB: the tiny splits do not fit
  assert input_pipeline.load(config).placement == "host"
  config.dataset.device_budget_gib = 1.0
  assert input_pipeline.load(config).placement == "device"


def test_sweep_refuses_repeated_seeds(tmp_path, tfds_dir):
  from asgml_jax import sweep
  from asgml_jax.config_schema import ConfigError
  with pytest.raises(ConfigError, match="--seeds: repeated seed"):
    sweep.train_sweep(tiny_config(tfds_dir), [1, 1], [str(tmp_path / "x"), str(tmp_path / "y")])


def test_seed_axis_auto_unrolls_convolutions_and_vmaps_mlps(tfds_dir):
  assert programs.seed_axis_mode(tiny_config(tfds_dir), 3) == "unroll"
  config = tiny_mlp_config(tfds_dir)
  assert programs.seed_axis_mode(config, 3) == "vmap"
  assert programs.seed_axis_mode(config, 3, "unroll") == "unroll"
  assert programs.seed_axis_mode(config, 1, "unroll") == "none"   # one seed: no axis


def test_state_leaves_never_share_a_buffer(tfds_dir):
  """A donated state whose leaves alias one buffer fails on GPUs ("donate the same
  buffer twice"); the probes' zero-initialised accuracy/score once did."""
  from conftest import jitted_step
  from asgml_jax.metrics import train_metrics_collection
  state, _, _ = jitted_step(tiny_config(tfds_dir))
  pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
  assert len(pointers) == len(set(pointers))
  metrics = programs.fresh_metrics(train_metrics_collection(["a", "b", "c"]))
  pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(metrics)]
  assert len(pointers) == len(set(pointers))


def test_sweep_command_grid_and_report(tmp_path, tfds_dir):
  """launch.sweep --variants writes <variant>/seed_<s> run dirs; launch.report tabulates
  them with the means and sample stds of the summaries and draws the plots."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  config = os.path.join(ROOT, "configs", "default.py")
  common = ["--config.num_epochs=1", "--config.dataset.synthetic.num_train=192",
            "--config.dataset.synthetic.num_validation=48",
            "--config.dataset.synthetic.num_test=48", "--config.batch_size=32",
            "--config.eval_batch_size=48", "--config.modalities.audio.encoder=mlp",
            "--config.modalities.visual.encoder=mlp", "--config.modalities.audio.input_shape=(16,)",
            "--config.modalities.visual.input_shape=(12,)", f"--config.dataset.data_dir={tfds_dir}"]
  workdir = tmp_path / "grid"
  run = subprocess.run([sys.executable, "-m", "launch.sweep", f"--config={config}",
                        "--variants=baseline,boost", "--seeds=3,4", f"--workdir={workdir}",
                        *common], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  summaries = {}
  for variant in ("baseline", "boost"):
    for seed in (3, 4):
      with open(workdir / variant / f"seed_{seed}" / "summary.json") as f:
        summaries[variant, seed] = json.load(f)
      assert summaries[variant, seed]["seed"] == seed
      assert summaries[variant, seed]["method"] == variant
  out = tmp_path / "report"
  run = subprocess.run([sys.executable, "-m", "launch.report", str(workdir), f"--out={out}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = {r["variant"]: r for r in json.loads((out / "report.json").read_text())}
  for variant in ("baseline", "boost"):
    accs = [summaries[variant, s]["at_best_val"]["test"]["accuracy"] for s in (3, 4)]
    assert rows[variant]["seeds"] == [3, 4]
    assert rows[variant]["test_acc_at_best_val"] == pytest.approx(np.mean(accs))
    assert rows[variant]["test_acc_at_best_val_std"] == pytest.approx(np.std(accs, ddof=1))
  markdown = (out / "report.md").read_text()
  assert "| boost | 2 |" in markdown and "| baseline | 2 |" in markdown
  for png in ("eval_accuracy.png", "probe_accuracy.png", "utilization_gap.png",
              "train_boost_scale.png"):
    assert (out / png).stat().st_size > 1000, png
    assert f"({png})" in markdown


def test_report_names_every_variant_apart(tfds_dir):
  """Variants that share a method name (unimodal_<m>, arl/arl_fixed) get their own rows."""
  import json as _json

  from asgml_jax.report import _variant
  from configs.variants import apply_variant
  names = {}
  for variant in ("unimodal_audio", "unimodal_visual", "arl", "arl_fixed", "boost_ogm_seedcode",
                  "baseline"):
    config = apply_variant(tiny_config(tfds_dir), variant)
    names[variant] = _variant(_json.loads(config.to_json_best_effort()), False)
  assert names == {v: v for v in names}
