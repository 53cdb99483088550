"""A tiny run end to end: it learns, resumes bit-for-bit after an interruption
mid-epoch, refuses a different config in the same workdir, and stops on NaN."""

import json
import os

import jax
import numpy as np
import pytest

from asgml_jax import checkpointing, loop, programs, train
from asgml_jax.config_schema import ConfigError
from asgml_jax.plan import Plan
from conftest import tiny_config


class Interrupt(Exception):
  """Stands in for a kill in the middle of an epoch."""


def _interrupt_after(monkeypatch, calls: int):
  original = programs.make_programs

  def patched(*args, **kwargs):
    fn, eval_fn, collection = original(*args, **kwargs)
    count = {"n": 0}

    def wrapped(*a):
      count["n"] += 1
      if count["n"] > calls:
        raise Interrupt()
      return fn(*a)
    return wrapped, eval_fn, collection

  monkeypatch.setattr(programs, "make_programs", patched)


def _final_params(workdir, like):
  state, meta = checkpointing.restore_newest(workdir, like)
  return state.params, meta


def _state_like(config):
  from asgml_jax import input_pipeline
  from asgml_jax.models import model_from_config
  from asgml_jax.probes import probe_config_from
  from asgml_jax.state import create_train_state
  data = input_pipeline.load(config)
  tx = Plan.build(config).optimizer(6)
  example = {k: v[:config.batch_size] for k, v in data.train.items()}
  return create_train_state(model_from_config(config, data.num_classes), tx, example,
                            jax.random.PRNGKey(0), probe_config_from(config, data.num_classes))


def test_interrupted_run_resumes_to_the_same_result(tmp_path, tfds_dir, monkeypatch):
  config = tiny_config(tfds_dir, num_epochs=3)  # 6 steps per epoch
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

  resumed_dir = str(tmp_path / "resumed")
  with monkeypatch.context() as patch:
    _interrupt_after(patch, 9)  # dies in the middle of epoch 2
    with pytest.raises(Interrupt):
      train.train_and_evaluate(config, resumed_dir)
  steps_saved = sorted(int(d) for d in os.listdir(os.path.join(resumed_dir, "checkpoints"))
                       if d.isdigit())
  assert steps_saved == [6]  # only the completed epoch
  resumed = train.train_and_evaluate(config, resumed_dir)

  for key in ("best_val_epoch", "at_best_val", "final", "convergence_epoch"):
    assert resumed[key] == straight[key], key
  with open(os.path.join(resumed_dir, "summary.json")) as f:
    assert json.load(f)["final"] == straight["final"]


def test_run_learns_and_writes_summary_logs_and_best_checkpoint(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, num_epochs=4)
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, str(workdir))
  assert summary["final"]["validation"]["accuracy"] > 0.5  # 4 classes: chance is 0.25
  assert set(summary["final"]["test"]) >= {"accuracy", "macro_f1", "unimodal_accuracy_audio",
                                           "unimodal_accuracy_visual"}
  assert 1 <= summary["best_val_epoch"] <= 4 and summary["seconds_per_epoch"] > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  best = os.listdir(workdir / "checkpoints_best")
  assert [int(d) for d in best if d.isdigit()] == [6 * summary["best_val_epoch"]]


def test_three_modalities_train(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, num_epochs=1, three_modalities=True)
  summary = train.train_and_evaluate(config, str(tmp_path / "run3"))
  assert "unimodal_accuracy_text" in summary["final"]["validation"]


def test_resuming_with_another_config_is_refused(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, num_epochs=1)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ConfigError, match="config.optimizer.learning_rate: differs"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  # More epochs is a legitimate continuation.
  config.optimizer.learning_rate = 0.05
  config.num_epochs = 2
  assert train.train_and_evaluate(config, str(tmp_path / "run"))["num_epochs"] == 2


def test_divergence_stops_with_the_step_and_saves_nothing_corrupt(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, num_epochs=3)
  config.optimizer.learning_rate = 1e6
  workdir = tmp_path / "nan"
  with pytest.raises(loop.NonFiniteError, match=r"non-finite .* at step \d+"):
    train.train_and_evaluate(config, str(workdir))
  ckpt_dir = workdir / "checkpoints"
  if ckpt_dir.exists() and any(d.isdigit() for d in os.listdir(ckpt_dir)):
    like = _state_like(config)
    params, _ = _final_params(str(workdir), like)  # whatever was saved is finite
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  with open(workdir / "summary.json") as f:  # the failure is recorded for reports
    failed = json.load(f)
  assert failed["error"].startswith("non-finite") and "final" not in failed


def test_init_from_warm_starts_params(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, num_epochs=1)
  first = tmp_path / "first"
  train.train_and_evaluate(config, str(first))
  config.init_from = str(first)
  config.num_epochs = 1
  warm = train.train_and_evaluate(config, str(tmp_path / "warm"))
  config.init_from = None
  cold = train.train_and_evaluate(config, str(tmp_path / "cold0"))
  assert warm["final"] != cold["final"]  # started from the trained params, not from scratch
  with pytest.raises(FileNotFoundError, match="config.init_from"):
    config.init_from = str(tmp_path / "nowhere")
    train.train_and_evaluate(config, str(tmp_path / "cold"))
