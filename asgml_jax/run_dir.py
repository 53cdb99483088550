"""RunDir: everything one run writes in its workdir, shared by single runs and sweeps.

A run directory holds `config.json` (the experiment it belongs to), orbax
checkpoints (latest N and best-by-validation, with the eval history in their
meta), TensorBoard event files written through a clu metric writer, and
`summary.json` once training ends. A sweep writes one such directory per
(variant, seed), so every tool that reads a single run reads a sweep's runs too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from asgml_jax import checkpointing, interrupts
from asgml_jax.config_checks import ConfigError, flatten
from asgml_jax.workdir_lock import WorkdirBusy, WorkdirLock

# Keys whose value may change between a run and its resumption.
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps", "sweep_seeds")
# Keys the schema no longer has: {key: (its value when it did nothing, what
# replaced it)}. A run saved with that value resumes; with another it is
# refused, since the replacement would now decide what its value did.
REMOVED_KEYS = {
    "method.aug.skipped": ("untouched", "optimizer.zero_grad=zeros_per_batch"),
}
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
DATA_FILE = "data.json"  # the fingerprint of the data the run trains on


class RunIdentity(NamedTuple):
  """What a run is, as its summary.json records it (the plan knows it):
  method (`method.name` or the stack joined by '+'), stack (its methods),
  label (reports' name for it), defaults ({dotted key: default} of the config
  schema: a key added to the schema at its default changes no workdir's
  experiment), task (its name) and selection_metric (the validation metric the
  best checkpoint and "at_best_val" select on, higher is better)."""
  method: str
  stack: tuple[str, ...]
  label: str
  defaults: dict
  task: str = "classification"
  selection_metric: str = "accuracy"
  # config groups no part of the run reads (the blocks of methods outside its
  # stack): a workdir's experiment does not depend on them
  unread: tuple[str, ...] = ()


class WorkdirError(Exception):
  """The workdir cannot be used (not a directory, no permission, read-only, busy)."""


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks it is a writable directory, before
  anything slow (data loading) happens; WorkdirError in one line otherwise."""
  path = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as err:
    what = f"cannot be created or written ({err.strerror or type(err).__name__})"
    if isinstance(err, FileExistsError) or (os.path.exists(path) and not os.path.isdir(path)):
      what = "exists and is not a directory"
    raise WorkdirError(f"--workdir {path}: {what}") from None
  for name, want_dir in (("checkpoints", True), ("checkpoints_best", True),
                         ("checkpoints_damaged", True), (".lock", False)):
    entry = os.path.join(path, name)
    if not os.path.lexists(entry):
      continue
    try:
      is_dir = os.path.isdir(entry)
      if is_dir:
        os.listdir(entry)
    except OSError as err:   # a symbolic-link loop, no permission
      raise WorkdirError(f"--workdir {path}: {name} cannot be read ({err.strerror or err}); "
                         "use a new --workdir, or repair it") from None
    if is_dir != want_dir or (want_dir and not os.path.exists(entry)):
      kind = "a folder" if want_dir else "a file"
      raise WorkdirError(f"--workdir {path}: {name} should be {kind} and is not (a damaged "
                         "workdir); use a new --workdir, or repair it")
  return path


def _flat(config) -> dict:
  """{dotted key: value} of a ConfigDict, as config.json stores it."""
  return flatten(json.loads(config.to_json_best_effort()))


def config_hash(config, defaults: dict) -> str:
  """Identifies the experiment: the non-default config values, resumable keys
  left out (so a schema key added at its default changes nothing, as in
  `check_config_matches_workdir`)."""
  current = _flat(config)
  own = {k: v for k, v in current.items()
         if k not in RESUMABLE_CHANGES and (k not in defaults or defaults[k] != v)}
  return hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:16]


def _write_json_atomically(path: str, payload) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def check_config_matches_workdir(config, workdir: str, defaults: dict,
                                 unread: tuple[str, ...] = ()) -> None:
  """A workdir belongs to one experiment: resuming it with another config
  would silently mix two runs, so refuse and name the keys that differ.

  A key the saved config lacks (added to the schema after the run started)
  is no difference while the current value is its default: the run behaved
  as the default says. Keys under `unread` (groups the run never reads,
  e.g. other methods' settings, whose defaults may change between versions)
  are no difference either."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
      if not isinstance(saved, dict):
        raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as err:
      raise WorkdirError(f"--workdir {workdir}: its {CONFIG_FILE} is unreadable ({err}); it "
                         "says which experiment the workdir holds: use a new --workdir, or put "
                         "the file back") from None
    old, new = flatten(saved), flatten(current)
    for key, (inert, replacement) in REMOVED_KEYS.items():
      if key in old and key not in new:
        if old.pop(key) != inert:
          raise ConfigError(
              f"config.{key}: the run in {workdir} was started with a setting this version "
              f"no longer has; it is now {replacement}: use a new --workdir")
    added_at_default = {k for k in new if k not in old and k in defaults
                        and new[k] == defaults[k]}
    differ = sorted(k for k in set(old) | set(new)
                    if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
                    and k not in added_at_default
                    and not any(k.startswith(prefix + ".") for prefix in unread))
    if differ:
      raise ConfigError(
          f"config.{differ[0]}: differs from the run already in {workdir} "
          f"({len(differ)} key(s): {', '.join(differ[:5])}); use a new --workdir")
  os.makedirs(workdir, exist_ok=True)
  _write_json_atomically(path, current)


def summarize(history: list[dict], config, workdir: str, identity: RunIdentity) -> dict:
  """Run summary (docs/methods.md, metrics): best-by-validation, final, convergence, wall-clock."""
  key = identity.selection_metric
  best = max(history, key=lambda h: (h["validation"][key], -h["epoch"]))
  final = history[-1]
  target = 0.9 * final["test"][key]
  convergence = next(h["epoch"] for h in history if h["test"][key] >= target)
  best_on_test = max(history, key=lambda h: h["test"][key])
  return {
      "workdir": os.path.abspath(workdir),
      "num_epochs": len(history),
      "best_val_epoch": best["epoch"],
      "at_best_val": {"validation": best["validation"], "test": best["test"]},
      "final": {"validation": final["validation"], "test": final["test"]},
      "convergence_epoch": convergence,
      # docs/methods.md, metrics: mean probe utilization gap over the last 10 epochs.
      "utilization_gap_last10": {
          split: float(np.mean([h[split]["utilization_gap"] for h in history[-10:]]))
          for split in ("validation", "test")},
      "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
      # Only for comparison with papers that select on test; never for model selection.
      "best_on_test_for_literature_comparison": {"epoch": best_on_test["epoch"],
                                                 key: best_on_test["test"][key]},
      "seed": config.seed,
      "method": identity.method,
      "stack": list(identity.stack),
      "label": identity.label,
      "task": identity.task,
  }


def train_tag(field: str) -> str:
  """Collection field -> TensorBoard tag ("probe__acc_audio" -> "probe/acc_audio");
  plain names go under train/."""
  name = field.replace("__", "/")
  return name if "/" in name else f"train/{name}"


class RunDir:
  """One run's directory: config check, writer, checkpoints, history, summary."""

  def __init__(self, config, workdir: str, identity: RunIdentity):
    self.config = config
    self.identity = identity
    existed = os.path.isdir(os.path.expanduser(workdir))
    self.workdir = prepare_workdir(workdir)
    # What this RunDir creates, removed again if the run ends before training
    # (a mistake in the data or config must not leave a workdir behind that
    # binds the next attempt to the mistaken config.json).
    self._created_config = not os.path.exists(os.path.join(self.workdir, CONFIG_FILE))
    self._created_workdir = not existed
    # With several processes (asgml_jax/distributed.py) process 0 alone holds
    # the lock and writes the run's files; the others follow it.
    self.primary = jax.process_index() == 0
    self.lock = _NoLock()
    if self.primary:
      try:
        self.lock = WorkdirLock(self.workdir).acquire()
      except WorkdirBusy as err:
        raise WorkdirError(str(err)) from None
      try:
        check_config_matches_workdir(config, self.workdir, identity.defaults, identity.unread)
      except BaseException:
        self.lock.release()
        raise
    self._checkpoints = None
    self._writer = None
    self.history: list[dict] = []
    self.best_val = -1.0
    self.training = False  # set once the run trains: a failure then gets a summary
    # A sweep's seeds save one after another: each keeps one step more than
    # checkpoint_keep until every seed has saved the epoch (`prune_to_keep`),
    # so a stop between two seeds' saves leaves every seed the previous epoch.
    self.keep_margin = 0

  @property
  def checkpoints(self) -> checkpointing.Checkpoints:
    """The checkpoint managers, created at first use (they create directories)."""
    if self._checkpoints is None:
      self._checkpoints = checkpointing.Checkpoints(
          self.workdir, self.config.checkpoint_keep + self.keep_margin,
          config_hash(self.config, self.identity.defaults))
    return self._checkpoints

  def prune_to_keep(self) -> None:
    """Down to `checkpoint_keep` latest steps (after every seed of a sweep saved)."""
    if self.keep_margin:
      self.checkpoints.prune(self.config.checkpoint_keep)

  @property
  def writer(self):
    """The clu metric writer, created at its first use: its event file marks a
    run that trained."""
    if self._writer is None:
      from clu import metric_writers  # imports TensorFlow: only where a run writes logs
      self._writer = metric_writers.create_default_writer(
          self.workdir, just_logging=jax.process_index() > 0)
    return self._writer

  def latest_step(self) -> int | None:
    if self._checkpoints is None and not os.path.isdir(
        os.path.join(self.workdir, checkpointing.LATEST_DIR)):
      return None
    return self.checkpoints.latest.latest_step()

  def has_step(self, step: int) -> bool:
    return step in self.checkpoints.latest.all_steps()

  def restore(self, fresh_state, at_most: int | None = None,
              steps_per_epoch: int | None = None):
    """The state to start from: the newest intact checkpoint (at most step
    `at_most`; 0 means none), else `config.init_from`'s params, else
    `fresh_state`. Loads the eval history that goes with it. Damaged newer
    steps are reported and moved aside (`checkpointing.restore_intact`)."""
    found = (None if at_most == 0 else
             self.checkpoints.restore_latest(fresh_state, at_most=at_most,
                                             steps_per_epoch=steps_per_epoch, log=log))
    if found is not None:
      state, meta = found
      saved_on, now = meta.get("devices"), jax.device_count()
      if saved_on is not None and saved_on != now and self.primary:
        log(f"note: {self.workdir} was saved training on {saved_on} device(s) and resumes on "
            f"{now}: the batch is split differently, so the results drift from an "
            "uninterrupted run's in the last bits")
      self.history = list(meta["history"])
      self.best_val = max((h["validation"][self.identity.selection_metric]
                           for h in self.history), default=-1.0)
      logging.info("resumed from step %d in %s", int(state.step), self.workdir)
      return state
    self.history, self.best_val = [], -1.0
    if self.config.init_from:
      logging.info("initialised params from %s", self.config.init_from)
      return checkpointing.restore_init_from(self.config.init_from, fresh_state)
    return fresh_state

  def repair_best(self, state, fresh_state, steps_per_epoch: int) -> None:
    """After the resume: the best checkpoint is that of the history's best
    epoch (the first with the highest selection metric, as `end_epoch` saves
    it); see `Checkpoints.repair_best`."""
    if not self.history:
      return
    metric = self.identity.selection_metric
    scores = [h["validation"][metric] for h in self.history]
    best_epoch = self.history[scores.index(max(scores))]["epoch"]
    self.checkpoints.repair_best(best_epoch * steps_per_epoch,
                                 (state, {"epoch": self.history[-1]["epoch"],
                                          "history": list(self.history)}),
                                 fresh_state, log=log if self.primary else lambda line: None)

  def check_data(self, fingerprint: dict) -> None:
    """Refuses, in one line, to resume on data that changed since the run
    began (`input_pipeline.fingerprint`, kept in data.json): its checkpoints
    and history came from the old data."""
    path = os.path.join(self.workdir, DATA_FILE)
    if not os.path.exists(path):
      return
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError):
      raise WorkdirError(f"--workdir {self.workdir}: {DATA_FILE} is unreadable; it records "
                         "the data this run trained on: use a new --workdir") from None
    if saved == fingerprint:
      return
    what = next((k for k in ("num_train", "eval_sizes", "num_classes", "arrays", "sha256")
                 if saved.get(k) != fingerprint.get(k)), "sha256")
    details = {"num_train": lambda: f"{saved.get('num_train')} training rows then, "
                                    f"{fingerprint['num_train']} now",
               "eval_sizes": lambda: f"evaluation splits {saved.get('eval_sizes')} then, "
                                     f"{fingerprint['eval_sizes']} now",
               "num_classes": lambda: f"{saved.get('num_classes')} classes then, "
                                      f"{fingerprint['num_classes']} now",
               "arrays": lambda: "other arrays or shapes",
               "sha256": lambda: "the same shapes, other values (labels or features)"}[what]()
    raise WorkdirError(f"--workdir {self.workdir}: the data changed since this run began "
                       f"({details}); its checkpoints and history are of the old data: "
                       "use a new --workdir, or restore the data")

  def record_data(self, fingerprint: dict) -> None:
    """Keeps the data's fingerprint with the run (once it trains)."""
    if self.primary and not os.path.exists(os.path.join(self.workdir, DATA_FILE)):
      _write_json_atomically(os.path.join(self.workdir, DATA_FILE), fingerprint)

  def write_hparams(self) -> None:
    self.writer.write_hparams({k: v for k, v in
                               flatten(json.loads(self.config.to_json_best_effort())).items()
                               if isinstance(v, (int, float, str, bool))})

  def write_train_scalars(self, step: int, scalars: dict) -> None:
    self.writer.write_scalars(step, {train_tag(k): v for k, v in scalars.items()})

  def end_epoch(self, step: int, state, record: dict) -> None:
    """Logs the epoch's eval record and checkpoints the state (best too if it is)."""
    for split in ("validation", "test"):
      self.writer.write_scalars(step, {f"{'eval' if split == 'validation' else 'test'}/{k}": v
                                       for k, v in record[split].items()})
    self.history.append(record)
    score = record["validation"][self.identity.selection_metric]
    is_best = score > self.best_val
    self.best_val = max(self.best_val, score)
    if not self.has_step(step):  # a resumed sweep may re-reach a step a seed already saved
      self.checkpoints.save(step, state, {"epoch": record["epoch"], "history": self.history,
                                          "devices": jax.device_count()},
                            is_best=is_best)
    self.writer.flush()

  def finish(self) -> dict:
    summary = summarize(self.history, self.config, self.workdir, self.identity)
    if self.primary:
      _write_json_atomically(os.path.join(self.workdir, SUMMARY_FILE), summary)
    return summary

  def discard_stale_summary(self) -> None:
    """A run about to train more epochs has no valid summary until it ends:
    remove the previous one, so a report never shows a finished run that is
    being extended (or whose extension failed)."""
    if not self.primary:
      return
    try:
      os.remove(os.path.join(self.workdir, SUMMARY_FILE))
    except FileNotFoundError:
      pass

  def fail(self, message: str) -> dict:
    """Records in summary.json that the run stopped (non-finite or an error), for reports."""
    summary = {"workdir": self.workdir, "seed": self.config.seed,
               "method": self.identity.method, "label": self.identity.label, "error": message,
               "num_epochs": len(self.history)}
    if self.primary:
      _write_json_atomically(os.path.join(self.workdir, SUMMARY_FILE), summary)
    return summary

  def close(self) -> None:
    try:
      if self._checkpoints is not None:
        self._checkpoints.wait()
        self._checkpoints.close()
      if self._writer is not None:
        self._writer.flush()
      if not self.training and self.primary:
        self._remove_what_an_untrained_run_created()
    finally:
      self.lock.release()

  def _remove_what_an_untrained_run_created(self) -> None:
    """A run that stops before it trains (a refused init_from, a data error)
    leaves nothing a corrected command would be refused by: its config.json,
    its empty checkpoint folders (made when it looked for a checkpoint to
    resume) and a workdir it created go."""
    if self._checkpoints is not None:   # closed by now
      if self._checkpoints.latest.all_steps() or self._checkpoints.best.all_steps():
        return
      for name in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
        folder = os.path.join(self.workdir, name)
        if os.path.isdir(folder) and not os.listdir(folder):
          os.rmdir(folder)
    if self._created_config and self._writer is None:
      os.remove(os.path.join(self.workdir, CONFIG_FILE))
    if self._created_workdir and set(os.listdir(self.workdir)) <= {".lock"}:
      shutil.rmtree(self.workdir, ignore_errors=True)


class _NoLock:
  """What a non-primary process holds instead of the workdir lock."""

  def release(self) -> None:
    pass


def saved_note(runs) -> str:
  """What stopped runs leave to resume from, for the one-line stop message."""
  parts = []
  for run in runs:
    step = run.latest_step()
    parts.append(f"{run.workdir}: nothing saved yet" if step is None else
                 f"{run.workdir}: latest checkpoint step {step}")
  return "; ".join(parts) + "; rerun the same command to resume"


@contextlib.contextmanager
def guarded(runs):
  """Around the training of `runs` (one run, or a sweep's seeds): a stop
  signal learns what was saved, an error while training is recorded in each
  training run's summary.json (before training, an older summary still
  holds), and every run is closed (lock released) however it ends."""
  try:
    yield
  except interrupts.Interrupted as err:
    err.saved = saved_note(runs)
    raise
  except Exception as err:
    for run in runs:
      if run.training:
        run.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    raise
  finally:
    for run in runs:
      run.close()


class Throughput:
  """Steps per second since the first logged window ended: the first window
  holds the compilation, so it is left out; evaluation and checkpoint time
  after it are counted, being part of what remains. Averaged over the run,
  the ETA does not swing with each window."""

  def __init__(self):
    self._start: tuple[int, float] | None = None

  def rate(self, step: int, now: float | None = None) -> float | None:
    now = time.time() if now is None else now
    if self._start is None or step <= self._start[0]:
      self._start = self._start or (step, now)
      return None
    first_step, first_time = self._start
    return (step - first_step) / max(now - first_time, 1e-9)


def eta(seconds: float) -> str:
  return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0)))


def log(line: str) -> None:
  print(line, file=sys.stdout, flush=True)
