"""Damaged checkpoints: every kind of damage to the latest step is named in one
line, the step is moved aside, and the run resumes from the newest intact step
to the results of a run that never had the damaged step; with every step
damaged the run refuses in one line and moves nothing."""

import glob
import json
import os
import random
import shutil

import pytest

from asgml_jax import checkpoint_integrity, checkpointing, loop, train
from asgml_jax.plan import Plan
from asgml_jax.plan import schema_defaults
from asgml_jax.run_dir import config_hash
from conftest import tiny_mlp_config

STEPS_PER_EPOCH = 6  # 192 examples / batch 32
LATEST = 18  # 3 epochs


def _config_hash(config) -> str:
  return config_hash(config, schema_defaults())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tfds_dir):
  """A finished 3-epoch run (steps 6, 12, 18 kept) and its summary."""
  config = tiny_mlp_config(tfds_dir, num_epochs=3)
  workdir = str(tmp_path_factory.mktemp("ckpt") / "straight")
  summary = train.train_and_evaluate(config, workdir)
  return config, workdir, summary


def _copy(finished, tmp_path, name="run"):
  config, workdir, _ = finished
  target = str(tmp_path / name)
  shutil.copytree(workdir, target)
  return config, target


def _largest_data_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def _flip_bit(path, seed=0):
  data = bytearray(open(path, "rb").read())
  i = random.Random(seed).randrange(len(data))
  data[i] ^= 1 << random.Random(seed + 1).randrange(8)
  open(path, "wb").write(data)


def _truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


def _overwrite_64_bytes(path):
  data = bytearray(open(path, "rb").read())
  start = random.Random(3).randrange(max(len(data) - 64, 1))
  data[start:start + 64] = bytes(random.Random(4).randrange(256) for _ in range(64))
  open(path, "wb").write(data)


def _shorten_history(step_dir, keep_record=True):
  path = os.path.join(step_dir, "meta", "metadata")
  meta = json.load(open(path))
  meta["history"] = meta["history"][:-1]
  json.dump(meta, open(path, "w"))
  if not keep_record:
    os.remove(os.path.join(step_dir, checkpoint_integrity.RECORD_FILE))


DAMAGE = {
    "flipped bit": (lambda d: _flip_bit(_largest_data_file(d)), "SHA-256 mismatch"),
    "truncated data file": (lambda d: _truncate(_largest_data_file(d)), "bytes, .* were written"),
    "64 random bytes": (lambda d: _overwrite_64_bytes(_largest_data_file(d)), "SHA-256 mismatch"),
    "missing manifest": (lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
                         "state/manifest.ocdbt is missing"),
    "garbage metadata": (lambda d: open(os.path.join(d, "meta", "metadata"), "w").write("{x"),
                         "meta/metadata has 2 bytes"),
    "deleted state/": (lambda d: shutil.rmtree(os.path.join(d, "state")), "state/.* is missing"),
    "empty step directory": (lambda d: (shutil.rmtree(d), os.makedirs(d)),
                             "orbax cannot read it"),
    "shortened history": (_shorten_history, "meta/metadata has"),
    "shortened history, no checksums": (lambda d: _shorten_history(d, keep_record=False),
                                        "eval history does not list epochs 1..3"),
    "garbage integrity record": (
        lambda d: open(os.path.join(d, checkpoint_integrity.RECORD_FILE), "w").write("[1"),
        "integrity.json is unreadable"),
}


def _restore(config, workdir, lines):
  setup = loop.setup_run(Plan.build(config))
  checkpoints = checkpointing.Checkpoints(workdir, config.checkpoint_keep, _config_hash(config))
  try:
    return checkpoints.restore_latest(loop.fresh_state(setup, config.seed),
                                      steps_per_epoch=STEPS_PER_EPOCH, log=lines.append)
  finally:
    checkpoints.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_each_damage_to_the_latest_step_falls_back_to_the_previous_one(finished, tmp_path,
                                                                      damage):
  config, workdir = _copy(finished, tmp_path)
  do, reason = DAMAGE[damage]
  step_dir = os.path.join(workdir, "checkpoints", str(LATEST))
  do(step_dir)
  lines = []
  state, meta = _restore(config, workdir, lines)
  assert int(state.step) == 12 and meta["epoch"] == 2
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"checkpoint step {LATEST} in {workdir}/checkpoints is damaged: ")
  assert lines[0].endswith("falling back to step 12")
  import re
  assert re.search(reason, lines[0]), lines[0]
  # kept as evidence, out of the way of the next save of step 18
  assert not os.path.exists(step_dir)
  assert len(os.listdir(os.path.join(workdir, checkpointing.DAMAGED_DIR))) == 1


def test_an_intact_step_without_checksums_restores_with_a_note(finished, tmp_path):
  config, workdir = _copy(finished, tmp_path)
  os.remove(os.path.join(workdir, "checkpoints", str(LATEST), checkpoint_integrity.RECORD_FILE))
  lines = []
  state, _ = _restore(config, workdir, lines)
  assert int(state.step) == LATEST
  assert lines == [f"checkpoint step {LATEST} in {workdir}/checkpoints has no checksums (saved "
                   "before they were recorded, or killed just after the save); restored "
                   "unverified"]


@pytest.mark.parametrize("damage", ["flipped bit", "truncated data file"])
def test_resume_after_damage_ends_where_an_undamaged_run_ends(finished, tmp_path, damage,
                                                              capsys):
  config, workdir = _copy(finished, tmp_path)
  DAMAGE[damage][0](os.path.join(workdir, "checkpoints", str(LATEST)))
  os.remove(os.path.join(workdir, "summary.json"))
  resumed = train.train_and_evaluate(config, workdir)
  straight = finished[2]
  for key in ("best_val_epoch", "at_best_val", "final", "convergence_epoch",
              "utilization_gap_last10", "num_epochs"):
    assert resumed[key] == straight[key], key
  out = capsys.readouterr().out
  assert f"checkpoint step {LATEST} in {workdir}/checkpoints is damaged" in out
  # the re-trained step 18 is saved afresh and verifies
  assert checkpoint_integrity.verify(os.path.join(workdir, "checkpoints", str(LATEST)))["epoch"] == 3


def test_every_step_damaged_is_refused_in_one_line_and_nothing_moves(finished, tmp_path):
  config, workdir = _copy(finished, tmp_path)
  for step in (6, 12, 18):
    _flip_bit(_largest_data_file(os.path.join(workdir, "checkpoints", str(step))))
  for _ in range(2):  # the refusal repeats: nothing was moved, nothing restarted
    with pytest.raises(checkpointing.CheckpointError) as err:
      train.train_and_evaluate(config, workdir)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{workdir}/checkpoints: no intact checkpoint to resume from (step "
                              "18: ")
    assert "step 12: " in message and "step 6: " in message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "18", "6"]
  assert not os.path.exists(os.path.join(workdir, checkpointing.DAMAGED_DIR))
  with open(os.path.join(workdir, "summary.json")) as f:  # the finished run's summary stays
    assert "final" in json.load(f)


def test_best_checkpoint_restore_is_verified(finished, tmp_path):
  config, workdir = _copy(finished, tmp_path)
  setup = loop.setup_run(Plan.build(config))
  like = loop.fresh_state(setup, config.seed)
  state, meta = checkpointing.restore_best(workdir, like)
  assert meta["epoch"] == finished[2]["best_val_epoch"]
  best_dir = glob.glob(os.path.join(workdir, checkpointing.BEST_DIR, "[0-9]*"))[0]
  _flip_bit(_largest_data_file(best_dir))
  with pytest.raises(checkpointing.CheckpointError, match="no intact checkpoint.*SHA-256"):
    checkpointing.restore_best(workdir, like)


def test_a_checkpoint_from_another_config_is_damaged_not_restored(finished, tmp_path):
  """The record carries the config's hash: a step copied in from another run
  (same shapes) is not silently resumed."""
  config, workdir = _copy(finished, tmp_path)
  other = tiny_mlp_config(config.dataset.data_dir, num_epochs=3)
  other.optimizer.learning_rate = 0.01
  assert _config_hash(other) != _config_hash(config)
  assert _config_hash(tiny_mlp_config(config.dataset.data_dir, num_epochs=7)) == _config_hash(config)
  step_dir = os.path.join(workdir, "checkpoints", str(LATEST))
  record = json.load(open(os.path.join(step_dir, checkpoint_integrity.RECORD_FILE)))
  record["facts"]["config_hash"] = _config_hash(other)
  json.dump(record, open(os.path.join(step_dir, checkpoint_integrity.RECORD_FILE), "w"))
  lines = []
  state, _ = _restore(config, workdir, lines)
  assert int(state.step) == 12
  assert "saved by a run with another config" in lines[0]


def _best_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, checkpointing.BEST_DIR))
                if d.isdigit())


@pytest.mark.parametrize("lost", ["best save", "latest save"])
def test_a_stop_between_an_epochs_two_saves_keeps_the_right_best(finished, tmp_path, lost, capsys):
  """`end_epoch` saves the latest step, then (for a best epoch) the best one.
  A stop between them leaves the best epoch without a best checkpoint ("best
  save" lost); in the other order, a best from an epoch the resume trains again
  ("latest save" lost). The resume repairs either from the latest copy, so
  `restore_best` gives the history's best epoch, equal to the latest copy."""
  import numpy as np
  import jax
  config, workdir = _copy(finished, tmp_path)
  best_epoch = finished[2]["best_val_epoch"]
  best_step = best_epoch * STEPS_PER_EPOCH
  like = loop.fresh_state(loop.setup_run(Plan.build(config)), config.seed)
  if lost == "best save":
    shutil.rmtree(os.path.join(workdir, checkpointing.BEST_DIR))
    os.makedirs(os.path.join(workdir, checkpointing.BEST_DIR))
  else:   # stopped after a later epoch's best save, before its latest saves
    for step in (12, 18):
      shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    if best_step != LATEST:
      shutil.rmtree(os.path.join(workdir, checkpointing.BEST_DIR, str(best_step)))
      shutil.copytree(os.path.join(finished[1], "checkpoints", str(LATEST)),
                      os.path.join(workdir, checkpointing.BEST_DIR, str(LATEST)))
  os.remove(os.path.join(workdir, "summary.json"))
  resumed = train.train_and_evaluate(config, workdir)
  assert resumed["best_val_epoch"] == best_epoch
  assert _best_steps(workdir) == [best_step]
  state, meta = checkpointing.restore_best(workdir, like)
  assert meta["epoch"] == best_epoch
  with_best = checkpointing.restore_best(finished[1], like)[0]
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(with_best.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  repaired = 6 if lost == "latest save" else best_step     # the resumed history's best
  assert (f"the best checkpoint (step {repaired}, epoch {repaired // STEPS_PER_EPOCH}) was "
          "missing; saved again from its latest copy") in capsys.readouterr().out


def test_init_from_warm_starts_another_methods_run_and_refuses_another_model(finished,
                                                                              tmp_path):
  """`init_from` reads only the other run's params and batch stats: a boost run
  starts from a baseline run's parameters (its optimizer state differs); a run
  of another model is refused in one line naming the first parameter that
  differs, and the refused run leaves no config.json (nor workdir) behind."""
  import numpy as np
  import jax
  from configs.variants import apply_variant
  config, source, _ = finished
  boosted = apply_variant(config.copy_and_resolve_references(), "boost")
  boosted.init_from = source
  setup = loop.setup_run(Plan.build(boosted))
  like = loop.fresh_state(setup, boosted.seed)
  warm = checkpointing.restore_init_from(source, like)
  newest = checkpointing.restore_newest(source, loop.fresh_state(
      loop.setup_run(Plan.build(config)), config.seed))[0]
  for x, y in zip(jax.tree.leaves(warm.params), jax.tree.leaves(newest.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert jax.tree.structure(warm.opt_state) == jax.tree.structure(like.opt_state)
  other = config.copy_and_resolve_references()
  other.model.feature_dim = 4
  other.init_from = source
  workdir = str(tmp_path / "refused")
  with pytest.raises(checkpointing.CheckpointError) as err:
    train.train_and_evaluate(other, workdir)
  message = str(err.value)
  assert message.startswith(f"config.init_from: {source} is a run of another model (")
  assert "shape (8,) there, shape (4,) here" in message and "\n" not in message
  assert not os.path.exists(workdir)


def test_a_full_disk_at_a_save_is_one_line_and_the_rerun_resumes(finished, tmp_path,
                                                                 monkeypatch):
  """ENOSPC while an epoch is saved: one line saying the earlier checkpoints are
  intact, and the rerun (space freed) ends where an uninterrupted run ends."""
  import errno
  config, workdir = _copy(finished, tmp_path)
  for step in (12, 18):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  os.remove(os.path.join(workdir, "summary.json"))
  real_save = checkpointing._save

  def disk_full(manager, step, *args):
    if step == LATEST:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(manager, step, *args)
  monkeypatch.setattr(checkpointing, "_save", disk_full)
  with pytest.raises(checkpointing.CheckpointError) as err:
    train.train_and_evaluate(config, workdir)
  assert str(err.value) == (f"{workdir}: saving step {LATEST} failed (No space left on device); "
                            "the checkpoints saved before it are intact: make room (or fix the "
                            "folder) and rerun the same command to resume")
  monkeypatch.setattr(checkpointing, "_save", real_save)
  resumed = train.train_and_evaluate(config, workdir)
  for key in ("best_val_epoch", "at_best_val", "final", "num_epochs"):
    assert resumed[key] == finished[2][key], key


def test_a_resume_on_another_device_count_says_so(finished, tmp_path, monkeypatch, capsys):
  """Each checkpoint records how many devices trained it; a resume on another
  count notes that results drift in the last bits (it was silent)."""
  import jax
  from asgml_jax import run_dir

  class FourDevices:
    def __getattr__(self, name):
      return (lambda: 4) if name == "device_count" else getattr(jax, name)
  config, workdir = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(LATEST)))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
  os.remove(os.path.join(workdir, "summary.json"))
  config.num_epochs = 2
  monkeypatch.setattr(run_dir, "jax", FourDevices())
  train.train_and_evaluate(config, workdir)                 # epoch 2 saved "on 4 devices"
  monkeypatch.setattr(run_dir, "jax", jax)
  config.num_epochs = 3
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  assert (f"note: {workdir} was saved training on 4 device(s) and resumes on "
          f"{jax.device_count()}: the batch is split differently") in capsys.readouterr().out
