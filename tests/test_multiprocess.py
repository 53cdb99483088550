"""One run on two processes joined by jax.distributed equals the one-process run.

`launch.local_cluster` starts two `launch.train` processes with two CPU
devices each (gloo collectives); the batch is sharded over the 4 devices and
each process feeds its own half of every batch. The same command on one
process with 4 devices is the reference. After one epoch of a small MLP
config: params equal within the all-reduce's float summation order
(|a − b| <= 1e-5 + 1e-4·|b|), eval metrics within one example, and the
files are one run's: one config.json, one summary.json, one integrity
record per checkpoint step, one TensorBoard events file (process 0's).
"""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np

from asgml_jax import checkpointing, train
from asgml_jax.config_checks import set_dotted
from conftest import ROOT

ARGS = ["--config", "configs/default.py", "--config.num_epochs=1",
        "--config.dataset.synthetic.num_train=192", "--config.dataset.synthetic.num_validation=48",
        "--config.dataset.synthetic.num_test=48", "--config.dataset.synthetic.num_classes=4",
        "--config.batch_size=32", "--config.eval_batch_size=48",
        "--config.dataset.placement=host", "--config.probes.eval_freq=3",
        "--config.modalities.audio.encoder=mlp", "--config.modalities.visual.encoder=mlp",
        "--config.modalities.audio.input_shape=(16,)",
        "--config.modalities.visual.input_shape=(12,)"]


def _cli_config(tfds_dir):
  """The config the command line above builds, for a state of the same shapes."""
  import ast
  from configs.default import get_config
  config = get_config()
  for arg in ARGS[2:]:
    key, value = arg[len("--config."):].split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    set_dotted(config, key, value)
  config.dataset.data_dir = tfds_dir
  return config


def _latest_params(workdir, like):
  manager = checkpointing._manager(os.path.join(workdir, checkpointing.LATEST_DIR), 5,
                                   read_only=True)
  try:
    return checkpointing.restore(manager, like)[0].params
  finally:
    manager.close()


def test_two_processes_train_what_one_process_trains(tmp_path, tfds_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  data = f"--config.dataset.data_dir={tfds_dir}"
  two = subprocess.run([sys.executable, "-m", "launch.local_cluster", "--processes", "2",
                        "--devices_per_process", "2", "--", *ARGS, data,
                        "--workdir", str(tmp_path / "two")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
  log = two.stdout + two.stderr
  assert "process 0 of 2 feeding rows 0-15 of each batch" in log, log[-3000:]
  assert "[process 1] training" in log and "process 1 of 2 feeding rows 16-31" in log
  one_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  one = subprocess.run([sys.executable, "-m", "launch.train", *ARGS, data,
                        "--workdir", str(tmp_path / "one")],
                       cwd=ROOT, env=one_env, capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  assert "batch sharded over 4 devices" in one.stdout + one.stderr

  summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("two", "one")]
  for split in ("validation", "test"):
    for key, value in summaries[1]["final"][split].items():
      assert abs(summaries[0]["final"][split][key] - value) <= 1 / 48 + 1e-9, (split, key)

  config = _cli_config(tfds_dir)
  like = train.fresh_state(train.setup_run(config), 42)
  a, b = (_latest_params(str(tmp_path / n), like) for n in ("two", "one"))
  worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))
                           / (1e-5 + 1e-4 * np.abs(np.asarray(y)))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert worst <= 1.0, worst
  moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(like.params)))
  assert moved > 1e-4

  run = tmp_path / "two"
  assert len(glob.glob(str(run / "events.out.tfevents.*"))) == 1      # one metrics writer
  steps = sorted(os.listdir(run / "checkpoints"))
  assert steps == ["6"]
  assert os.path.isfile(run / "checkpoints" / "6" / "integrity.json")
  assert not glob.glob(str(run / "checkpoints" / "*.orbax-checkpoint-tmp*"))
  assert json.loads((run / "config.json").read_text())["batch_size"] == 32
