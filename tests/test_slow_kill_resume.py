"""Slow: a real `kill -9` of `launch.train` in the middle of an epoch, then the same
command again, ends with exactly the metrics of an uninterrupted run (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT


def _command(workdir, data_dir):
  return [sys.executable, "-m", "launch.train", "--config", "configs/default.py",
          "--workdir", str(workdir), "--config.num_epochs=3",
          f"--config.dataset.data_dir={data_dir}"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(tmp_path, tfds_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  straight = tmp_path / "straight"
  subprocess.run(_command(straight, tfds_dir), cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=600)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(killed, tfds_dir), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first_epoch = killed / "checkpoints" / "46"  # 3000 // 64 steps per epoch
  deadline = time.time() + 600
  while not first_epoch.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)  # now somewhere early in epoch 2
  proc.wait()
  assert not (killed / "summary.json").exists()
  saved = sorted(int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit())
  assert saved == [46], saved

  subprocess.run(_command(killed, tfds_dir), cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=600)
  a = json.loads((straight / "summary.json").read_text())
  b = json.loads((killed / "summary.json").read_text())
  for key in ("best_val_epoch", "at_best_val", "final", "convergence_epoch",
              "utilization_gap_last10"):
    assert a[key] == b[key], key
