"""orbax checkpoints: latest per epoch (keep N), best by validation, verified resume.

Each checkpoint is a Composite of the train state and a JSON `meta` item (the
epoch, the eval history so far), so a resumed run writes the same summary as
an uninterrupted one. Orbax writes into a temporary directory and renames it
when complete, so a run killed mid-save leaves no checkpoint that restores
as if whole.

Orbax does not notice damage after the rename (a flipped bit restores
silently), so each finalized step also gets checksums and the facts it was
meant to hold (`checkpoint_integrity`). Restoring walks the steps from the
newest: a step that fails its checksums, cannot be read by orbax or holds
inconsistent meta is reported in one line and moved to
`checkpoints_damaged/` (kept, not deleted: it is evidence), and the newest
intact step is used. If steps exist but none is intact the run refuses
(`CheckpointError`) rather than silently starting over.

Saves are synchronous (finish before training goes on): the checksums need
the finished files, and a signal that arrives meanwhile waits for the save
(`interrupts.protected`), so a stopped run never abandons a save half-done.

Resume order (DESIGN.md): latest intact step in the workdir, then
`config.init_from` (params and BatchNorm statistics of that workdir's latest
intact checkpoint, at step 0), then scratch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from asgml_jax import checkpoint_integrity as integrity
from asgml_jax import interrupts

LATEST_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
DAMAGED_DIR = "checkpoints_damaged"


class CheckpointError(Exception):
  """No intact checkpoint where one is needed; the message says where and why."""


@contextlib.contextmanager
def _orbax_quiet():
  """Orbax logs an ERROR for each damaged metadata file it lists; the damage is
  reported in our one line instead."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         cleanup_tmp_directories=not read_only,
                                         read_only=read_only)
  with _orbax_quiet():
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "meta"))


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
          facts: dict) -> None:
  if step in manager.all_steps():  # the best of an abandoned (damaged) future
    manager.delete(step)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  if jax.process_index() == 0:
    integrity.record(step_dir(manager, step), facts)


class Checkpoints:
  """The run's two checkpoint managers: latest (keep N) and best (keep 1).

  config_hash: identifies the run's config in each step's integrity record.
  """

  def __init__(self, workdir: str, keep: int, config_hash: str | None = None):
    self.workdir = workdir
    self.config_hash = config_hash
    self.latest = _manager(os.path.join(workdir, LATEST_DIR), keep)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

  def save(self, step: int, state: Any, meta: dict, *, is_best: bool) -> None:
    facts = {"step": step, "epoch": meta["epoch"], "history_length": len(meta["history"]),
             "config_hash": self.config_hash}
    with interrupts.protected():
      try:
        _save(self.latest, step, state, meta, facts)
        if is_best:
          _save(self.best, step, state, meta, facts)
      except OSError as err:   # a full disk, a folder gone read-only
        raise CheckpointError(
            f"{self.workdir}: saving step {step} failed ({err.strerror or err}); the checkpoints "
            "saved before it are intact: make room (or fix the folder) and rerun the same "
            "command to resume") from None

  def prune(self, keep: int) -> None:
    """Deletes the oldest latest steps beyond `keep`."""
    with interrupts.protected():
      for step in sorted(self.latest.all_steps())[:-keep]:
        self.latest.delete(step)

  def repair_best(self, best_step: int | None, restored: tuple[Any, dict], like_state: Any,
                  log: Callable[[str], None] = print) -> None:
    """Makes the best checkpoint the one of `best_step` (the resumed history's
    best epoch; None before any). A stop between an epoch's latest save and
    its best save leaves no best for an epoch that was best, and a best saved
    beyond the restored step belongs to epochs being trained again; so a
    resume removes such a best and re-saves the right one from its latest
    copy (the restored state, or a step the latest checkpoints keep). Where
    no copy is left, says so in one line."""
    state, meta = restored
    restored_step = int(state.step)
    have = set(self.best.all_steps())
    if best_step is None or best_step in have:
      return
    with interrupts.protected():
      for step in sorted(s for s in have if s > restored_step):
        self.best.delete(step)
      if best_step == restored_step:
        source = (state, meta)
      elif best_step in self.latest.all_steps():
        source = restore_step(self.latest, like_state, best_step,
                              config_hash=self.config_hash)[:2]
      else:
        log(f"{self.workdir}: the best checkpoint (step {best_step}) was lost and no copy of "
            "it is kept; a later epoch that beats it will write one")
        return
      best_state, best_meta = source
      facts = {"step": best_step, "epoch": best_meta["epoch"],
               "history_length": len(best_meta["history"]), "config_hash": self.config_hash}
      _save(self.best, best_step, best_state, best_meta, facts)
    log(f"{self.workdir}: the best checkpoint (step {best_step}, epoch {best_meta['epoch']}) "
        "was missing; saved again from its latest copy")

  def restore_latest(self, like_state: Any, *, at_most: int | None = None,
                     steps_per_epoch: int | None = None,
                     log: Callable[[str], None] = print) -> tuple[Any, dict] | None:
    """The newest intact step (at most `at_most`), quarantining damaged newer ones."""
    return restore_intact(self.latest, like_state, at_most=at_most,
                          steps_per_epoch=steps_per_epoch, config_hash=self.config_hash,
                          log=log, quarantine_to=os.path.join(self.workdir, DAMAGED_DIR))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _first_line(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def restore_step(manager: ocp.CheckpointManager, like_state: Any, step: int, *,
                 steps_per_epoch: int | None = None, config_hash: str | None = None):
  """(state, meta, verified) of `step`, checked against its integrity record;
  raises CheckpointDamaged saying what is wrong."""
  directory = step_dir(manager, step)
  facts = integrity.verify(directory)
  try:
    with _orbax_quiet():
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(like_state)), meta=ocp.args.JsonRestore()))
  except Exception as err:  # orbax/tensorstore raise many kinds; all mean unreadable
    raise integrity.CheckpointDamaged(f"orbax cannot read it ({_first_line(err)})") from None
  state, meta = restored["state"], restored["meta"]
  if not isinstance(meta, dict):
    raise integrity.CheckpointDamaged("its meta is not a JSON object")
  integrity.check_meta(step, int(state.step), meta, facts, steps_per_epoch, config_hash)
  return state, dict(meta), facts is not None


def _quarantine(directory: str, quarantine_to: str) -> str:
  os.makedirs(quarantine_to, exist_ok=True)
  target = os.path.join(quarantine_to, f"{os.path.basename(directory)}_{time.strftime('%Y%m%d-%H%M%S')}")
  suffix = 0
  while os.path.exists(target + (f"_{suffix}" if suffix else "")):
    suffix += 1
  target += f"_{suffix}" if suffix else ""
  os.replace(directory, target)
  return target


def restore_intact(manager: ocp.CheckpointManager, like_state: Any, *,
                   at_most: int | None = None, steps_per_epoch: int | None = None,
                   config_hash: str | None = None, log: Callable[[str], None] = print,
                   quarantine_to: str | None = None) -> tuple[Any, dict] | None:
  """(state, meta) of the newest intact step (at most `at_most`), or None if
  the manager holds no step at all.

  Each damaged step newer than the one restored is reported in one line and,
  with `quarantine_to`, moved there. If steps exist but none is intact,
  CheckpointError (one line naming each step's damage) and nothing is moved:
  a rerun refuses again rather than silently starting over."""
  steps = sorted((s for s in manager.all_steps() if at_most is None or s <= at_most),
                 reverse=True)
  if not steps:
    return None
  where = str(manager.directory)
  damaged: list[tuple[int, str]] = []
  for step in steps:
    try:
      state, meta, verified = restore_step(manager, like_state, step,
                                           steps_per_epoch=steps_per_epoch,
                                           config_hash=config_hash)
    except integrity.CheckpointDamaged as err:
      damaged.append((step, str(err)))
      continue
    for bad, why in damaged:
      moved = ""
      if quarantine_to is not None and jax.process_index() == 0:
        moved = f"; moved to {_quarantine(step_dir(manager, bad), quarantine_to)}"
      log(f"checkpoint step {bad} in {where} is damaged: {why}{moved}; "
          f"falling back to step {step}")
    if damaged and quarantine_to is not None:
      with _orbax_quiet():
        manager.reload()
    if not verified:
      log(f"checkpoint step {step} in {where} has no checksums (saved before they were "
          "recorded, or killed just after the save); restored unverified")
    return state, meta
  raise CheckpointError(f"{where}: no intact checkpoint to resume from ("
                        + "; ".join(f"step {s}: {why}" for s, why in damaged)
                        + "); use a new --workdir, or delete this one to start over")


def restore(manager: ocp.CheckpointManager, like_state: Any, step: int | None = None):
  """(state, meta) of `step` (default: latest), verified, or None if there is
  no step; raises CheckpointError for a damaged one. For readers that must
  not move anything (tests, tools)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  try:
    state, meta, _ = restore_step(manager, like_state, step)
  except integrity.CheckpointDamaged as err:
    raise CheckpointError(f"checkpoint step {step} in {manager.directory} is damaged: "
                          f"{err}") from None
  return state, meta


def _read_only_restore(directory: str, like_state: Any, what: str):
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{what}: no checkpoints in {directory}")
  manager = _manager(directory, keep=1, read_only=True)
  try:
    found = restore_intact(manager, like_state, log=lambda line: print(f"{what}: {line}"))
  finally:
    manager.close()
  if found is None:
    raise FileNotFoundError(f"{what}: no complete checkpoint in {directory}")
  return found


def restore_best(workdir: str, like_state: Any) -> tuple[Any, dict]:
  """(state, meta) of a run's best-by-validation checkpoint, verified."""
  return _read_only_restore(os.path.join(os.path.expanduser(workdir), BEST_DIR), like_state,
                            "best checkpoint")


def restore_newest(workdir: str, like_state: Any, what: str = "checkpoint") -> tuple[Any, dict]:
  """(state, meta) of a run's newest intact checkpoint, verified, read-only."""
  return _read_only_restore(os.path.join(os.path.expanduser(workdir), LATEST_DIR), like_state,
                            what)


def _stored_shapes(state_dir: str, keys) -> dict[str, tuple] | None:
  """{leaf path: shape} of the `keys` subtrees a saved state holds (from its
  metadata, nothing read); None where the metadata cannot be read."""
  try:
    with _orbax_quiet():
      metadata = ocp.StandardCheckpointer().metadata(state_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    return {jax.tree_util.keystr((jax.tree_util.DictKey(k),) + path): tuple(leaf.shape)
            for k in keys for path, leaf in jax.tree_util.tree_leaves_with_path(tree[k])}
  except Exception:  # orbax raises many kinds: the restore below names the damage
    return None


def restore_init_from(workdir: str, like_state: Any):
  """Params and batch stats of another run's newest intact checkpoint, for a
  warm start. Only those two are read (the other run may have trained another
  method, whose optimizer state differs); every parameter of this model must
  be there with its shape, else one line says where the models differ."""
  key = "config.init_from"
  directory = os.path.join(os.path.expanduser(workdir), LATEST_DIR)
  steps = (sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True)
           if os.path.isdir(directory) else [])
  if not steps:
    raise FileNotFoundError(f"{key}: no checkpoints in {directory}")
  target = {"params": like_state.params, "batch_stats": like_state.batch_stats}
  want = {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(target)}
  damaged = []
  for step in steps:
    path = os.path.join(directory, str(step))
    try:
      integrity.verify(path)
    except integrity.CheckpointDamaged as err:
      damaged.append(f"step {step}: {err}")
      continue
    stored = _stored_shapes(os.path.join(path, "state"), target)
    if stored is not None:
      for leaf, shape in want.items():
        if stored.get(leaf) != shape:
          have = "absent" if leaf not in stored else f"shape {stored[leaf]}"
          raise CheckpointError(
              f"{key}: {workdir} is a run of another model ({leaf}: {have} there, shape "
              f"{shape} here); a warm start needs the same encoders, feature_dim, fusion and "
              "classes")
    abstract = _abstract(target)
    try:
      with _orbax_quiet():
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
                item=abstract, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
    except Exception as err:  # orbax/tensorstore raise many kinds; all mean unreadable
      damaged.append(f"step {step}: orbax cannot read it ({_first_line(err)})")
      continue
    return like_state.replace(params=restored["params"], batch_stats=restored["batch_stats"])
  raise CheckpointError(f"{key}: {directory} has no intact checkpoint ({'; '.join(damaged)})")
