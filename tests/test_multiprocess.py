"""One run on two processes joined by jax.distributed equals the one-process run.

`launch.local_cluster` starts two `launch.train` processes with two CPU
devices each (gloo collectives); the batch is sharded over the 4 devices and
each process feeds its own half of every batch. The same command on one
process with 4 devices is the reference. After one epoch of a small MLP
config: params equal within the all-reduce's float summation order
(|a − b| <= 1e-5 + 1e-4·|b|), eval metrics within one example, and the
files are one run's: one config.json, one summary.json, one integrity
record per checkpoint step, one TensorBoard events file (process 0's).

Both commands run at XLA's default optimisation level and without the
suite's shared compilation cache: a process of a gloo cluster once aborted
while compiling under the suite's level-0 flag on another CPU family, and a
cluster's processes should not read executables another process wrote.
"""

import glob
import json
import os
import subprocess
import sys

from asgml_jax import checkpointing, loop
from asgml_jax.plan import Plan
from conftest import (ROOT, config_of_cli, full_optimisation_env, largest_change, param_mismatch,
                      tiny_mlp_cli)


def _own_process_env() -> dict:
  env = full_optimisation_env()
  for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
    env.pop(name, None)
  return env


def _head_and_tail(text: str) -> str:
  """A crash's first lines say why (XLA's check message); the last say where."""
  return text if len(text) <= 6000 else text[:3000] + "\n[...]\n" + text[-3000:]


def test_two_processes_train_what_one_process_trains(tmp_path, tfds_dir):
  args = tiny_mlp_cli(tfds_dir, **{"dataset.synthetic.num_classes": 4,
                                   "dataset.placement": "host", "probes.eval_freq": 3})
  env = _own_process_env()
  two = subprocess.run([sys.executable, "-m", "launch.local_cluster", "--processes", "2",
                        "--devices_per_process", "2", "--", *args,
                        "--workdir", str(tmp_path / "two")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert two.returncode == 0, _head_and_tail(two.stdout + two.stderr)
  log = two.stdout + two.stderr
  assert "process 0 of 2 feeding rows 0-15 of each batch" in log, log[-3000:]
  assert "[process 1] training" in log and "process 1 of 2 feeding rows 16-31" in log
  one_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  one = subprocess.run([sys.executable, "-m", "launch.train", *args,
                        "--workdir", str(tmp_path / "one")],
                       cwd=ROOT, env=one_env, capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, _head_and_tail(one.stderr)
  assert "batch sharded over 4 devices" in one.stdout + one.stderr

  summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("two", "one")]
  for split in ("validation", "test"):
    for key, value in summaries[1]["final"][split].items():
      assert abs(summaries[0]["final"][split][key] - value) <= 1 / 48 + 1e-9, (split, key)

  like = loop.fresh_state(loop.setup_run(Plan.build(config_of_cli(args))), 42)
  a, b = (checkpointing.restore_newest(str(tmp_path / n), like)[0].params for n in ("two", "one"))
  assert param_mismatch(a, b) <= 1.0
  assert largest_change(a, like.params) > 1e-4

  run = tmp_path / "two"
  assert len(glob.glob(str(run / "events.out.tfevents.*"))) == 1      # one metrics writer
  steps = sorted(os.listdir(run / "checkpoints"))
  assert steps == ["6"]
  assert os.path.isfile(run / "checkpoints" / "6" / "integrity.json")
  assert not glob.glob(str(run / "checkpoints" / "*.orbax-checkpoint-tmp*"))
  assert json.loads((run / "config.json").read_text())["batch_size"] == 32
