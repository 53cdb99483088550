"""Every mistake a user can make on the command line ends in one line, no
traceback, a non-zero exit code, and nothing half-written; and a run that
cannot do what was asked says so instead of reporting something else."""

import errno
import re
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from asgml_jax import input_pipeline, programs, run_dir, train
from asgml_jax.config_schema import ConfigError
from conftest import ROOT, tiny_mlp_config, train_cli_in_process

ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _train_cli(tmp_path, *args, workdir=None):
  workdir = str(workdir or tmp_path / "run")
  result = subprocess.run([sys.executable, "-m", "launch.train", "--workdir", workdir, *args],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  return result, workdir


@pytest.mark.parametrize("args, line", [
    (["--config", "configs/default.py", "--config.batchsize=32"],
     "error: --config.batchsize: no such config key; did you mean --config.batch_size?"),
    (["--config", "configs/default.py", "--config.num_epoch=2"],
     "error: --config.num_epoch: no such config key; did you mean --config.num_epochs?"),
    (["--config", "configs/default.py", "--config.model.fuson=sum"],
     "error: --config.model.fuson: no such config key; did you mean --config.model.fusion?"),
    (["--config", "configs/default.py:boost_ogme"],
     "error: --config=configs/default.py:boost_ogme: unknown variant 'boost_ogme'; choose one of"),
    (["--config", "configs/nowhere.py"], "error: --config configs/nowhere.py: no such config file"),
    (["--config", "configs/default.py", "--config.num_epochs=two"],
     "error: --config.num_epochs=two: invalid literal for int()"),
])
def test_flag_mistakes_are_one_line(tmp_path, capsys, args, line):
  workdir = str(tmp_path / "run")
  code, _, err = train_cli_in_process(["--workdir", workdir, *args], capsys)
  assert code == 2, err[-2000:]
  assert "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines() == [err.strip()]
  assert err.strip().startswith(line), err
  assert not os.path.exists(workdir)


def test_a_workdir_that_is_a_file_is_refused_before_the_data_is_loaded(tmp_path):
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("precious")
  data_dir = tmp_path / "tfds"
  result, _ = _train_cli(tmp_path, "--config", "configs/default.py",
                         f"--config.dataset.data_dir={data_dir}", workdir=not_a_dir)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --workdir {not_a_dir}: exists and is not a directory")
  assert not data_dir.exists()  # refused before the dataset was built
  assert not_a_dir.read_text() == "precious"


@pytest.mark.parametrize("damage, problem", [
    (lambda w: (w / "checkpoints").write_text(""), "checkpoints should be a folder and is not"),
    (lambda w: (w / ".lock").mkdir(), ".lock should be a file and is not"),
    (lambda w: os.symlink(w / "checkpoints_best", w / "checkpoints_best"),
     "checkpoints_best should be a folder and is not"),
    (lambda w: (w / "config.json").write_text(""), "its config.json is unreadable (Expecting"),
    (lambda w: (w / "config.json").write_text("[1]"),
     "its config.json is unreadable (a JSON list, not an object)"),
])
def test_a_damaged_workdir_is_one_line(tmp_path, damage, problem):
  """Workdir structure damage (a file where a folder belongs, a link loop, a
  garbage config.json) is refused before anything is read, and left as it was."""
  from asgml_jax.plan import Plan
  workdir = tmp_path / "run"
  workdir.mkdir()
  damage(workdir)
  before = sorted(os.listdir(workdir))
  plan = Plan.build(tiny_mlp_config(str(tmp_path / "tfds")))
  with pytest.raises(run_dir.WorkdirError) as err:
    run_dir.RunDir(plan.config, str(workdir), plan.identity)
  assert str(err.value).startswith(f"--workdir {workdir}: {problem}")
  assert "\n" not in str(err.value)
  assert sorted(set(os.listdir(workdir)) - {".lock"}) == sorted(set(before) - {".lock"})


def test_bad_input_under_launch_train_is_one_line(tmp_path):
  raw = tmp_path / "mine"
  raw.mkdir()
  for split in ("train", "test"):
    np.savez(raw / f"{split}.npz", label=np.arange(8) % 2, x=np.array(list("abcdefgh")))
  result, workdir = _train_cli(
      tmp_path, "--config", "configs/default.py", "--config.dataset.name=npz",
      f"--config.dataset.raw_dir={raw}", f"--config.dataset.data_dir={tmp_path / 'tfds'}")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {raw}/train.npz: 'x' is a <U1 array; modalities must be real numbers (int, uint, "
      "float or bool)")
  assert not os.path.exists(workdir)  # nothing left that would bind the next attempt


@pytest.mark.parametrize("failure, message", [
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
])
def test_an_unwritable_workdir_is_named(tmp_path, monkeypatch, failure, message):
  def refuse(*args, **kwargs):
    raise failure
  monkeypatch.setattr(os, "makedirs", refuse)
  with pytest.raises(run_dir.WorkdirError) as err:
    run_dir.prepare_workdir(str(tmp_path / "w"))
  assert str(err.value) == f"--workdir {tmp_path / 'w'}: cannot be created or written ({message})"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tfds_dir):
  config = tiny_mlp_config(tfds_dir, num_epochs=2)
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_fewer_epochs_than_a_finished_run_trained_is_refused(finished):
  config, workdir, summary = finished
  shorter = config.copy_and_resolve_references()
  shorter.num_epochs = 1
  with pytest.raises(ConfigError) as err:
    train.train_and_evaluate(shorter, workdir)
  assert str(err.value) == (f"config.num_epochs: 1, but the run in {workdir} already trained 2 "
                            "epochs (its summary.json has them); use a new --workdir to train "
                            "fewer")
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f) == summary  # untouched


def test_a_failed_resume_replaces_the_stale_summary_with_the_failure(finished, tmp_path,
                                                                   monkeypatch):
  import shutil
  config, workdir, _ = finished
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, ".lock"))
  longer = config.copy_and_resolve_references()
  longer.num_epochs = 3

  def broken(*args, **kwargs):
    raise OSError("disk vanished")
  monkeypatch.setattr(programs, "evaluate_seeds", broken)
  with pytest.raises(OSError):
    train.train_and_evaluate(longer, copy)
  with open(os.path.join(copy, "summary.json")) as f:
    failed = json.load(f)
  assert failed["error"] == "disk vanished" and failed["num_epochs"] == 2
  assert "final" not in failed


def test_an_eval_batch_larger_than_every_split_is_capped(tfds_dir, capsys):
  config = tiny_mlp_config(tfds_dir)
  config.eval_batch_size = 100000
  data = input_pipeline.load(config)
  assert data.eval_batch_size == 48  # the largest eval split
  assert data.eval_splits["test"]["label"].shape == (48,)
  assert "note: config.eval_batch_size 100000 is larger than the largest evaluation split (48 " \
         "examples); using 48" in capsys.readouterr().out


def test_splits_that_do_not_fit_the_free_memory_go_to_the_host_or_are_refused():
  config = tiny_mlp_config("/tmp/unused")
  gib = 2**30
  assert input_pipeline.check_memory(config, "device", 1 * gib, 1, 4 * gib) == "device"
  assert input_pipeline.check_memory(config, "device", 5 * gib, 1, 4 * gib) == "host"
  config.dataset.placement = "device"
  with pytest.raises(ConfigError, match="config.dataset.placement: 'device' needs 5.00 GiB"):
    input_pipeline.check_memory(config, "device", 5 * gib, 1, 4 * gib)
  with pytest.raises(ConfigError, match="the largest batch needs 13.30 GiB"):
    input_pipeline.check_memory(config, "host", 0, int(13.3 * gib), 4 * gib)


def test_a_damaged_prepared_dataset_says_how_to_rebuild_it(tfds_dir, tmp_path):
  """A truncated TFDS shard is one line naming the prepared folder and saying
  to delete it and rerun (it was a TensorFlow traceback)."""
  import glob
  import shutil
  from asgml_jax import loop
  from asgml_jax.plan import Plan
  from data_prep.common import BadInputError
  builder = input_pipeline.prepared_builder(tiny_mlp_config(tfds_dir))   # built once per session
  copy = str(tmp_path / "tfds")
  shutil.copytree(tfds_dir, copy)
  prepared = os.path.join(copy, os.path.relpath(builder.data_dir, tfds_dir))
  shard = sorted(glob.glob(os.path.join(prepared, "*-train.tfrecord-*")))[0]
  data = open(shard, "rb").read()
  open(shard, "wb").write(data[:len(data) // 2])
  with pytest.raises(BadInputError) as err:
    loop.setup_run(Plan.build(tiny_mlp_config(copy)))
  folder = os.path.dirname(shard)
  message = str(err.value)
  assert message.startswith(f"{folder}: the prepared train split cannot be read (")
  assert message.endswith(f"the prepared files are damaged: delete {folder} and rerun to "
                          "build it again")
  assert "\n" not in message and "function_node" not in message


def test_a_tfds_folder_that_is_a_file_or_read_only_is_one_line(tmp_path, monkeypatch):
  from asgml_jax import input_pipeline as pipeline
  from asgml_jax.plan import Plan
  a_file = tmp_path / "tfds"
  a_file.write_text("")
  for where, named in ((a_file, f"{a_file}"), (a_file / "sub", f"{a_file} (in {a_file}/sub)")):
    with pytest.raises(ConfigError, match=re.escape(
        f"config.dataset.data_dir: {named} is a file, not a folder")):
      pipeline.prepared_builder(Plan.build(tiny_mlp_config(str(where))).config)
  folder = tmp_path / "read_only"
  folder.mkdir()
  monkeypatch.setattr(pipeline.os, "access", lambda path, mode: False)   # root ignores chmod
  with pytest.raises(ConfigError, match=re.escape(
      f"config.dataset.data_dir: {folder} is not writable, and synthetic has to be built")):
    pipeline.prepared_builder(Plan.build(tiny_mlp_config(str(folder))).config)


def test_a_model_too_large_for_the_free_memory_is_one_line(tfds_dir, tmp_path, monkeypatch):
  """The parameters x (itself, gradient, update, momentum) x seeds against the
  free memory, before anything is allocated: refused in one line, no workdir."""
  from asgml_jax import loop
  from asgml_jax.plan import Plan
  config = tiny_mlp_config(tfds_dir)
  setup = loop.setup_run(Plan.build(config))
  import jax
  shapes = jax.eval_shape(lambda k: setup.model.init({"params": k, "dropout": k}, setup.example,
                                                     train=False), jax.random.PRNGKey(0))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  need = count * 4 * 4 * 2                                   # float32, SGD, 2 seeds
  monkeypatch.setattr(input_pipeline, "free_device_bytes", lambda: int(need / 0.8) - 1)
  workdirs = [str(tmp_path / f"seed_{s}") for s in (1, 2)]
  with pytest.raises(ConfigError) as err:
    loop.train_seeds(Plan.build(config), (1, 2), workdirs)
  assert str(err.value).startswith(f"config.model: the model has {count:,} parameters, ")
  assert "for 2 seeds" in str(err.value) and "train fewer seeds at once" in str(err.value)
  assert not any(os.path.exists(w) for w in workdirs)
  monkeypatch.setattr(input_pipeline, "free_device_bytes", lambda: int(need / 0.8) + 1024)
  loop.check_model_memory(setup, 2)                          # just fits: no refusal
