"""What a saved checkpoint step must contain, and whether it still does.

Orbax makes a save atomic (a temporary directory renamed when complete), but
it does not notice what happens to the files afterwards: one flipped bit in a
data file restores silently with different values. So, once a step is
finalized, `record` writes `integrity.json` into the step directory: the size
and SHA-256 of every file orbax wrote, and what the step was meant to hold
(the step, the epochs and history length in its meta, a hash of the run's
config). `verify` recomputes them and names the first thing that differs.

A step without `integrity.json` (written before the project recorded it, or a
process killed in the instant between orbax's rename and the record) is
"unverified", not damaged: it is restored if orbax can read it and its meta
is consistent (`check_meta`).
"""

from __future__ import annotations

import hashlib
import json
import os

RECORD_FILE = "integrity.json"
_CHUNK = 1 << 20


class CheckpointDamaged(Exception):
  """One checkpoint step is unusable; the message says what is wrong."""


def file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Relative paths of every file in the step directory but the record itself."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != RECORD_FILE:
        out.append(rel)
  return sorted(out)


def record(step_dir: str, facts: dict) -> None:
  """Writes the step's checksums and `facts` (atomically: temp file + rename)."""
  files = {rel: {"bytes": os.path.getsize(os.path.join(step_dir, rel)),
                 "sha256": file_digest(os.path.join(step_dir, rel))}
           for rel in _files(step_dir)}
  path = os.path.join(step_dir, RECORD_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"facts": facts, "files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def read_record(step_dir: str) -> dict | None:
  """The step's record; None if it has none; CheckpointDamaged if unreadable."""
  path = os.path.join(step_dir, RECORD_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
    saved["facts"], saved["files"]  # noqa: B018 - both must be there
  except (OSError, ValueError, KeyError, TypeError) as err:
    raise CheckpointDamaged(f"{RECORD_FILE} is unreadable ({type(err).__name__})") from None
  return saved


def verify(step_dir: str) -> dict | None:
  """Checks every recorded file's size and SHA-256 and that no file is missing
  or extra. Returns the recorded facts (None for an unverified step); raises
  CheckpointDamaged naming the first difference."""
  if not os.path.isdir(step_dir):
    raise CheckpointDamaged("the step directory is missing")
  saved = read_record(step_dir)
  if saved is None:
    return None
  present = set(_files(step_dir))
  for rel in sorted(saved["files"]):
    want = saved["files"][rel]
    full = os.path.join(step_dir, rel)
    if rel not in present:
      raise CheckpointDamaged(f"{rel} is missing")
    size = os.path.getsize(full)
    if size != want["bytes"]:
      raise CheckpointDamaged(f"{rel} has {size} bytes, {want['bytes']} were written")
    if file_digest(full) != want["sha256"]:
      raise CheckpointDamaged(f"{rel} differs from what was written (SHA-256 mismatch)")
  extra = sorted(present - set(saved["files"]))
  if extra:
    raise CheckpointDamaged(f"{extra[0]} was not part of the saved step")
  return saved["facts"]


def check_meta(step: int, state_step: int, meta: dict, facts: dict | None,
               steps_per_epoch: int | None, config_hash: str | None) -> None:
  """The restored content agrees with itself and with what was meant to be
  written; raises CheckpointDamaged otherwise."""
  history = meta.get("history")
  epoch = meta.get("epoch")
  if not isinstance(history, list) or not isinstance(epoch, int):
    raise CheckpointDamaged("its meta has no epoch and eval history")
  if state_step != step:
    raise CheckpointDamaged(f"it holds the state of step {state_step}")
  if [h.get("epoch") if isinstance(h, dict) else None for h in history] != list(
      range(1, epoch + 1)):
    raise CheckpointDamaged(f"its eval history does not list epochs 1..{epoch}")
  if steps_per_epoch and step != epoch * steps_per_epoch:
    raise CheckpointDamaged(f"step {step} is not the end of epoch {epoch} "
                            f"({steps_per_epoch} steps per epoch)")
  if facts is None:
    return
  if facts.get("step") != step or facts.get("epoch") != epoch:
    raise CheckpointDamaged(f"it was saved as step {facts.get('step')}, epoch "
                            f"{facts.get('epoch')}")
  if config_hash and facts.get("config_hash") not in (None, config_hash):
    raise CheckpointDamaged("it was saved by a run with another config")
