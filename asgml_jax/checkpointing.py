"""orbax checkpoints: latest per epoch (keep N), best by validation, resume.

Each checkpoint is a Composite of the train state and a JSON `meta` item (the
epoch, the eval history so far, the best-so-far record), so a resumed run
writes the same summary as an uninterrupted one. Orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save leaves no
checkpoint that restores as if whole.

Resume order (DESIGN.md): latest in the workdir, then `config.init_from`
(params and BatchNorm statistics of that workdir's latest checkpoint, at step
0), then scratch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         cleanup_tmp_directories=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """The run's two checkpoint managers: latest (keep N) and best (keep 1)."""

  def __init__(self, workdir: str, keep: int):
    self.latest = _manager(os.path.join(workdir, LATEST_DIR), keep)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

  def save(self, step: int, state: Any, meta: dict, *, is_best: bool) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.latest.save(step, args=args)
    if is_best:
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, like_state: Any) -> tuple[Any, dict] | None:
    return restore(self.latest, like_state)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore(manager: ocp.CheckpointManager, like_state: Any, step: int | None = None):
  """(state, meta) of `step` (default: latest) shaped like `like_state`, or None."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(like_state)), meta=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["meta"])


def restore_init_from(workdir: str, like_state: Any):
  """Params and batch stats of another run's latest checkpoint, for a warm start."""
  directory = os.path.join(os.path.expanduser(workdir), LATEST_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.init_from: no checkpoints in {directory}")
  manager = _manager(directory, keep=1, read_only=True)
  try:
    found = restore(manager, like_state)
  finally:
    manager.close()
  if found is None:
    raise FileNotFoundError(f"config.init_from: no complete checkpoint in {directory}")
  other, _ = found
  return like_state.replace(params=other.params, batch_stats=other.batch_stats)
