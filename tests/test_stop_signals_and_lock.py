"""Stopping and sharing a workdir: SIGTERM (preemption) and SIGINT (Ctrl-C) in
the middle of an epoch end `launch.train` with one line and 128 + the signal,
and the rerun ends exactly where an uninterrupted run ends; a second trainer
in a live run's workdir is refused naming the holder, a lock left by a
kill -9 is not."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from asgml_jax import run_dir
from asgml_jax.plan import Plan
from conftest import ROOT, tiny_mlp_cli, tiny_mlp_config

STEPS_PER_EPOCH = 1500  # 12000 examples / batch 8: an epoch lasts seconds, not milliseconds


def _command(workdir, data_dir):
  return [sys.executable, "-m", "launch.train", "--workdir", str(workdir),
          *tiny_mlp_cli(data_dir, num_epochs=2, batch_size=8, log_every_steps=1000,
                        **{"dataset.synthetic.num_train": 12000})]


ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
RESULT_KEYS = ("best_val_epoch", "at_best_val", "final", "convergence_epoch",
               "utilization_gap_last10", "num_epochs")


def _stop_mid_epoch_2(workdir, data_dir, signum):
  proc = subprocess.Popen(_command(workdir, data_dir), cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  first_epoch = os.path.join(workdir, "checkpoints", str(STEPS_PER_EPOCH))
  deadline = time.time() + 600
  while not os.path.exists(first_epoch) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be stopped"
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=120)
  return proc.returncode, err


@pytest.mark.parametrize("signum,code", [
    (signal.SIGTERM, 143),
    # SIGINT goes through the same handler; the default suite keeps one signal
    # to stay within its time budget (two real training subprocesses each).
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_stop_signal_ends_in_one_line_and_resumes_to_the_uninterrupted_result(
    tmp_path, tfds_dir, signum, code):
  straight = tmp_path / "straight"
  subprocess.run(_command(straight, tfds_dir), cwd=ROOT, env=ENV, check=True,
                 capture_output=True, timeout=900)
  expected = json.loads((straight / "summary.json").read_text())
  for signum, code in ((signum, code),):
    workdir = tmp_path / signum.name
    returncode, err = _stop_mid_epoch_2(str(workdir), tfds_dir, signum)
    assert returncode == code, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1].endswith(
        f"stopped by {signum.name}; {workdir}: latest checkpoint step {STEPS_PER_EPOCH}; rerun "
        "the same command to resume"), err[-500:]
    assert not (workdir / "summary.json").exists()
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(STEPS_PER_EPOCH)]
    subprocess.run(_command(workdir, tfds_dir), cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=900)
    resumed = json.loads((workdir / "summary.json").read_text())
    for key in RESULT_KEYS:
      assert resumed[key] == expected[key], (signum.name, key)


_HOLD = ("import sys, time; from asgml_jax.workdir_lock import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")


def test_a_second_trainer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
  config = tiny_mlp_config(str(tmp_path / "tfds"))
  identity = Plan.build(config).identity
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(run_dir.WorkdirError) as err:
      run_dir.RunDir(config, workdir, identity)
    assert str(err.value).startswith(f"--workdir {workdir}: in use by pid {holder.pid} on ")
    assert not os.path.exists(os.path.join(workdir, run_dir.CONFIG_FILE))  # refused before writing
  finally:
    holder.kill()  # kill -9: the lock file stays behind, the kernel's lock does not
    holder.wait()
  assert os.path.exists(os.path.join(workdir, ".lock"))
  first = run_dir.RunDir(config, workdir, identity)
  try:
    with pytest.raises(run_dir.WorkdirError, match=f"in use by pid {os.getpid()}"):
      run_dir.RunDir(config, workdir, identity)  # a second trainer in this very process, too
  finally:
    first.close()
  run_dir.RunDir(config, workdir, identity).close()  # released on close


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_signal_whose_exception_python_drops_still_stops_at_the_next_step():
  """A handler that runs inside a garbage-collector callback raises there, where
  Python prints "Exception ignored" and drops the exception (JAX registers such
  a callback); the signal stays recorded and `check()`, called by the training
  loop at every step, raises it."""
  import gc
  from asgml_jax import interrupts
  saved = {s: signal.getsignal(s) for s in interrupts.STOP_SIGNALS}
  interrupts.install()

  def send_during_collection(phase, info):
    if phase == "start":
      signal.raise_signal(signal.SIGTERM)
  try:
    interrupts.check()                            # nothing recorded: no stop
    gc.callbacks.append(send_during_collection)
    try:
      gc.collect()                                # the handler's raise is dropped here
    finally:
      gc.callbacks.remove(send_during_collection)
    with pytest.raises(interrupts.Interrupted) as stop:
      interrupts.check()
    assert stop.value.exit_code == 143
    interrupts.check()                            # acted on once
    with pytest.raises(interrupts.Interrupted) as hangup:   # the terminal was closed
      signal.raise_signal(signal.SIGHUP)
    assert (hangup.value.exit_code, hangup.value.line()) == (129, "stopped by SIGHUP")
  finally:
    interrupts.handled()
    for s, handler in saved.items():
      signal.signal(s, handler)
