"""On-device frame augmentation, and training end to end on built real-layout data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import raw_fixtures as rf
from asgml_jax import augment
from conftest import ROOT, full_optimisation_env


def test_crop_box_stays_inside_and_follows_the_area_and_ratio_limits():
  for i in range(200):
    top, left, h, w = map(float, augment.crop_box(jax.random.PRNGKey(i), 60, 80))
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
    assert 0.08 * 4800 * 0.9 <= h * w <= 4800
  # An extreme aspect ratio never fits in 10 tries: the clamped centre crop.
  top, left, h, w = map(float, augment.crop_box(jax.random.PRNGKey(0), 10, 400,
                                                scale=(0.99, 1.0), ratio=(1.0, 1.0)))
  assert (h, w, top) == (10.0, 10.0, 0.0) and left == 195.0


def test_resized_crop_picks_the_box_and_eval_normalises():
  img = jnp.zeros((40, 40, 3)).at[10:20, 20:30].set(255.0)
  out = augment.resized_crop(img, 10.0, 20.0, 10.0, 10.0, 20)
  np.testing.assert_allclose(np.asarray(out)[2:-2, 2:-2], 255.0, atol=1e-3)
  flat = jnp.full((1, 1, 30, 50, 3), 128, jnp.uint8)
  ev = augment.eval_inputs({"visual": flat, "label": jnp.zeros(1)}, {"visual": 16})["visual"]
  assert ev.shape == (1, 1, 16, 16, 3)
  want = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(np.asarray(ev)[0, 0, 5, 5], want, rtol=1e-5)


def test_train_inputs_are_a_function_of_the_key_and_differ_per_frame():
  frames = jax.random.randint(jax.random.PRNGKey(1), (2, 3, 24, 24, 3), 0, 255).astype(jnp.uint8)
  batch = {"visual": frames, "audio": jnp.ones((2, 4))}
  a = augment.train_inputs(batch, jax.random.PRNGKey(5), {"visual": 16})
  b = augment.train_inputs(batch, jax.random.PRNGKey(5), {"visual": 16})
  c = augment.train_inputs(batch, jax.random.PRNGKey(6), {"visual": 16})
  assert a["visual"].shape == (2, 3, 16, 16, 3) and a["audio"] is batch["audio"]
  np.testing.assert_array_equal(a["visual"], b["visual"])
  assert not np.allclose(a["visual"], c["visual"])


def test_cremad_layout_trains_end_to_end_with_device_augmentation(tmp_path):
  from asgml_jax.config_schema import base_config, modality_config
  from asgml_jax.train import train_and_evaluate
  from data_prep import cremad
  clips = {f"10{a:02d}_DFA_{e}_XX": 2.2 for a in (1, 2, 3, 4) for e in cremad.CLASSES}
  raw = rf.cremad_raw(str(tmp_path / "raw"), clips)
  test_list = tmp_path / "test.txt"
  test_list.write_text("\n".join(c for c in clips if c.startswith("1004")) + "\n")
  c = base_config()
  c.dataset.name = "cremad"
  c.dataset.raw_dir = raw
  c.dataset.data_dir = str(tmp_path / "tfds")
  c.dataset.validation_fraction = 0.2
  c.dataset.cremad.frame_size = 24
  c.modalities.audio = modality_config("small_cnn", (257, 188, 1), cnn_width=4)
  c.modalities.visual = modality_config("small_cnn", (1, 16, 16, 3), cnn_width=4,
                                        image_augment="imagenet")
  c.model.feature_dim = 8
  c.batch_size = 4
  c.eval_batch_size = 8
  c.num_epochs = 1
  c.log_every_steps = 2
  c.dataset.cremad.test_list = str(test_list)  # the shipped 744 ids are not in the fixture
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  from asgml_jax import input_pipeline
  data = input_pipeline.load(c)  # the prepared dataset, as the run saw it
  assert data.train["visual"].shape == (14, 1, 24, 24, 3) and data.train["visual"].dtype == jnp.uint8
  assert data.eval_sizes == {"validation": 4, "test": 6}
  model_input = augment.eval_inputs(data.eval_splits["test"], augment.frame_modalities(c))
  assert model_input["visual"].shape[1:] == (1, 16, 16, 3)
  assert 0.0 <= summary["final"]["test"]["accuracy"] <= 1.0
  assert np.isfinite(summary["final"]["validation"]["macro_f1"])
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["modalities"]["visual"]["image_augment"] == "imagenet"


def test_av_digits_baseline_trains_clearly_above_chance(tfds_dir, tmp_path):
  """CI builds AV-Digits from ../shared/data and trains the baseline a few epochs,
  through `launch.train` as a user would (the launcher's smoke test; XLA's
  default optimisation: this test's time is in running steps)."""
  shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
  if not os.path.isdir(shared):
    pytest.skip(f"{shared} not present")
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config", "configs/av_digits.py:baseline",
       "--workdir", str(workdir), f"--config.dataset.data_dir={tfds_dir}",
       f"--config.dataset.raw_dir={shared}", "--config.num_epochs=4"],
      cwd=ROOT, env=full_optimisation_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "done: best val acc" in proc.stdout
  best = json.loads((workdir / "summary.json").read_text())["at_best_val"]
  print("AV-Digits baseline, 4 epochs:", json.dumps(best))
  assert best["validation"]["accuracy"] > 0.25  # chance is 0.10
  assert best["test"]["accuracy"] > 0.2
