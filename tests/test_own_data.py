"""Bring your own data: configs/npz.py reads the modalities off the files and
gives each the encoder and adapter its shape needs; adapters standardize with
train statistics only; a shape no encoder takes is refused before anything is
built, with the setting that would fit."""

import os
import subprocess
import sys

import numpy as np
import pytest

from asgml_jax import input_adapters, input_pipeline
from asgml_jax.config_schema import ConfigError, base_config, modality_config, validate
from conftest import ROOT, npz_config


def _own_data(root, n_train=96, n_test=32):
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for split, n in (("train", n_train), ("test", n_test)):
    label = np.arange(n) % 3
    np.savez(os.path.join(root, f"{split}.npz"), label=label,
             mfcc=(rng.standard_normal((n, 40, 26)) * 5 + 3 + label[:, None, None]).astype(
                 np.float32),
             frame=rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8),
             text=(rng.standard_normal((n, 6)) * 100 - label[:, None]).astype(np.float64))
  return root


def test_adapters_fit_the_shapes_and_standardize_with_train_statistics():
  rng = np.random.default_rng(1)
  config = base_config()
  config.modalities.mfcc = modality_config("mlp", (1040,), input_adapter="flatten",
                                           standardize=True)
  config.modalities.frame = modality_config("small_cnn", (8, 8, 1), input_adapter="add_channel",
                                            scale_uint8=True)
  splits = {s: {"mfcc": rng.standard_normal((n, 40, 26)) * 7 + 2,
                "frame": rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)}
            for s, n in (("train", 50), ("validation", 20), ("test", 20))}
  out = input_adapters.adapt_splits(config, splits)
  train = out["train"]["mfcc"]
  assert train.shape == (50, 1040) and train.dtype == np.float32
  np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
  flat = splits["train"]["mfcc"].reshape(50, -1)
  want = (splits["test"]["mfcc"].reshape(20, -1) - flat.mean(0)) / flat.std(0)
  np.testing.assert_allclose(out["test"]["mfcc"], want, rtol=1e-5, atol=1e-5)  # train's stats
  assert out["test"]["frame"].shape == (20, 8, 8, 1)
  np.testing.assert_allclose(out["test"]["frame"][..., 0], splits["test"]["frame"] / 255.0)


def test_a_shape_no_encoder_takes_is_refused_before_building_with_the_fix(tmp_path):
  config = npz_config(_own_data(str(tmp_path / "mine")), str(tmp_path / "tfds"))
  config.modalities.mfcc = modality_config("mlp", (40,))
  with pytest.raises(ConfigError) as err:
    input_pipeline.load(validate(config))
  assert str(err.value) == (
      "config.modalities.mfcc.input_shape: (40,) but the npz dataset holds (40, 26); set "
      "--config.modalities.mfcc.input_adapter=flatten "
      "--config.modalities.mfcc.input_shape=\"(1040,)\"")
  assert not os.path.exists(tmp_path / "tfds")  # nothing was built


def test_the_npz_config_trains_on_own_data_from_the_command_line(tmp_path):
  raw = _own_data(str(tmp_path / "mine"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", ASGML_NPZ_DIR=raw)
  result = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config", "configs/npz.py:boost",
       "--workdir", str(tmp_path / "run"), "--config.num_epochs=1", "--config.batch_size=16",
       "--config.eval_batch_size=16", "--config.modalities.frame.cnn_width=4",
       "--config.modalities.mfcc.cnn_width=4", f"--config.dataset.data_dir={tmp_path / 'tfds'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "building dataset npz_dataset/mine_" in out and str(tmp_path / "tfds") in out
  assert "training boost on npz (frame, mfcc, text)" in out
  assert os.path.exists(tmp_path / "run" / "summary.json")
  missing = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config", "configs/npz.py",
       "--workdir", str(tmp_path / "run2")], cwd=ROOT,
      env={k: v for k, v in env.items() if k != "ASGML_NPZ_DIR"}, capture_output=True, text=True,
      timeout=300)
  assert missing.returncode == 2
  assert missing.stderr.strip() == ("error: --config=configs/npz.py: set $ASGML_NPZ_DIR to the "
                                    "folder holding your train.npz and test.npz")


def test_data_edited_in_place_is_refused_on_resume(tmp_path, monkeypatch):
  """The same npz folder edited after a run began (labels shuffled; rows added)
  builds another dataset: the resume is refused in one line saying the data
  changed (not a damaged checkpoint), and the run's files stay as they were."""
  from asgml_jax import train
  from asgml_jax.run_dir import DATA_FILE, WorkdirError
  from configs import npz
  raw = _own_data(str(tmp_path / "mine"))
  monkeypatch.setenv("ASGML_NPZ_DIR", raw)

  def config(epochs):
    c = npz.get_config()
    c.dataset.data_dir = str(tmp_path / "tfds")
    c.num_epochs, c.batch_size, c.eval_batch_size = epochs, 16, 16
    c.modalities.frame.cnn_width = c.modalities.mfcc.cnn_width = 4
    return c
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config(1), workdir)
  assert os.path.exists(os.path.join(workdir, DATA_FILE))
  before = sorted(os.listdir(workdir))
  with np.load(os.path.join(raw, "train.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  np.savez(os.path.join(raw, "train.npz"),
           **{**arrays, "label": np.random.default_rng(1).permutation(arrays["label"])})
  with pytest.raises(WorkdirError) as err:
    train.train_and_evaluate(config(2), workdir)
  assert str(err.value) == (
      f"--workdir {workdir}: the data changed since this run began (the same shapes, other "
      "values (labels or features)); its checkpoints and history are of the old data: use a "
      "new --workdir, or restore the data")
  more = {k: np.concatenate([v, v[:24]]) for k, v in arrays.items()}
  np.savez(os.path.join(raw, "train.npz"), **more)
  with pytest.raises(WorkdirError, match=r"the data changed since this run began \(\d+ training "
                                         r"rows then, \d+ now\)"):
    train.train_and_evaluate(config(2), workdir)
  assert sorted(os.listdir(workdir)) == before
  np.savez(os.path.join(raw, "train.npz"), **arrays)           # restored: it resumes
  assert train.train_and_evaluate(config(2), workdir)["num_epochs"] == 2


@pytest.mark.parametrize("name", ["mask", "row_code", "my audio", "a/b", "1st"])
def test_an_npz_array_name_that_cannot_be_a_modality_is_one_line(tmp_path, monkeypatch, name):
  """'mask' is the evaluation padding mask's key, 'row_code' a re-sampling
  method's; a space, a slash or a leading digit cannot be a config key: each
  is refused when the config is made and when the dataset is built."""
  from configs import npz
  from data_prep.npz import scan
  from data_prep.common import BadInputError
  raw = str(tmp_path / "mine")
  os.makedirs(raw)
  for split, n in (("train", 12), ("test", 6)):
    np.savez(os.path.join(raw, f"{split}.npz"),
             **{"label": np.arange(n) % 3, name: np.zeros((n, 4), np.float32)})
  monkeypatch.setenv("ASGML_NPZ_DIR", raw)
  with pytest.raises(ValueError, match=f"array {name!r} cannot be a modality"):
    npz.get_config()
  with pytest.raises(BadInputError, match="rename it"):
    scan(raw)
