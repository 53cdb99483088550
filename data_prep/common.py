"""What every raw-data builder shares: bad-input handling, splits, registration.

A research dataset that silently drops or mangles a file trains on something
other than what the paper says. So every builder first *scans* the raw
directory (every file named by a split exists, every label is a known class)
before anything is written, and then *decodes* each file while it writes. A
problem stops the build with `BadInputError("<file>: <problem>")`; with
`skip_bad=True` the file is left out instead, and the count is reported at the
end (`BadFiles.summary`).

Nothing half-written survives a failure: TFDS writes a split into
`<version>.incomplete.<random>` and renames it only when every split is done,
and `prepare` removes any leftover temporary directory, so a dataset directory
either holds a complete dataset or does not exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import shutil

import numpy as np
from absl import logging

# What an array of the user's own data may be called: it becomes a config key
# (modalities.<name>) and a batch key beside the input pipeline's own ones
# (the evaluation padding mask, the row codes of a re-sampling method).
RESERVED_NAMES = ("mask", "row_code")
MODALITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")



def available_host_bytes() -> int | None:
  """The host's MemAvailable (None where /proc/meminfo is not there)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None

class BadInputError(ValueError):
  """A raw file (or directory) that cannot be built; the message is "<file>: <problem>"."""

  @property
  def path_and_problem(self) -> tuple[str, str]:
    path, _, problem = str(self).partition(": ")
    return path, problem


@dataclasses.dataclass
class BadFiles:
  """Collects (file, problem) pairs; raises at the first unless `skip_bad`."""
  skip_bad: bool = False
  skipped: list = dataclasses.field(default_factory=list)

  def report(self, path: str, problem: str) -> None:
    if not self.skip_bad:
      raise BadInputError(f"{path}: {problem}")
    logging.warning("skipping %s: %s", path, problem)
    self.skipped.append((str(path), problem))

  def report_error(self, error: BadInputError) -> None:
    """Re-raise `error`, or (skip_bad) record the file it names and go on."""
    self.report(*error.path_and_problem)

  def summary(self) -> str:
    if not self.skipped:
      return "no bad files"
    lines = [f"skipped {len(self.skipped)} bad file(s):"]
    lines += [f"  {p}: {why}" for p, why in self.skipped[:20]]
    if len(self.skipped) > 20:
      lines.append(f"  ... and {len(self.skipped) - 20} more")
    return "\n".join(lines)


SKIP_BAD_SUFFIX = "_skipbad"


def build_identity(builder_config, skip_bad: bool):
  """The builder config a build uses: a build with `skip_bad` may leave files
  out, so it is a different dataset (its name gains SKIP_BAD_SUFFIX) and a
  later strict build never silently reuses it."""
  if not skip_bad or builder_config.name.endswith(SKIP_BAD_SUFFIX):
    return builder_config
  return dataclasses.replace(builder_config, name=builder_config.name + SKIP_BAD_SUFFIX)


def require_dir(path: str, what: str) -> str:
  """`path` expanded, or BadInputError naming what was expected there."""
  if not path:
    raise BadInputError(f"{what}: no raw directory given (set --raw_dir / config.dataset.raw_dir)")
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(full):
    raise BadInputError(f"{full}: {what} directory does not exist")
  return full


def require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise BadInputError(f"{path}: {what} is missing")
  return path


def carve_validation(ids, fraction: float, seed: int) -> tuple[list, list]:
  """(train, validation): a fixed, seeded `fraction` of `ids` held out.

  For datasets without a validation split (the README's data section): model selection must not
  look at test, so a validation set is carved from train. The carve-out is a
  function of the sorted ids and the seed only, never of directory order.
  """
  ids = sorted(ids)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(ids))
  n_val = int(round(fraction * len(ids)))
  val = sorted(ids[i] for i in order[:n_val])
  held = set(val)
  return [i for i in ids if i not in held], val


def read_id_list(path: str) -> list[list[str]]:
  """Rows of a comma/whitespace/'&'-separated list file, blank lines and '#' skipped."""
  rows = []
  with open(require_file(path, "split list")) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      for sep in ("&", ",", "\t", " "):
        if sep in line:
          rows.append([field.strip() for field in line.split(sep)])
          break
      else:
        rows.append([line])
  return rows


def prepare(builder, *, raw_dir: str | None = None, announce: bool = True) -> None:
  """`builder.download_and_prepare()` with `raw_dir` as TFDS's manual_dir.

  Says in one line what is built where (TFDS's own "Downloading and preparing
  dataset Unknown size" is not printed: nothing is downloaded), and shows
  TFDS's progress bars only on a terminal (in a log file they are escape
  codes). On failure the builder's temporary `*.incomplete*` directories are
  removed, so nothing half-written is left to be mistaken for a dataset;
  datasets prepared earlier (other configs or versions) are not touched.
  """
  import tensorflow_datasets as tfds
  if builder.is_prepared():
    _read_info(builder)
    return
  if raw_dir:
    require_dir(raw_dir, f"{builder.name} raw")
  with _build_lock(builder):
    if builder.is_prepared():   # built by another process while this one waited
      _read_info(builder)
      return
    _build(builder, raw_dir, announce, tfds)


def _read_info(builder) -> None:
  """A builder made before another process finished building its dataset
  holds no split information yet: read it from what was built."""
  if not builder.info.splits:
    builder.info.read_from_directory(builder.data_dir)


@contextlib.contextmanager
def _build_lock(builder):
  """One build of a dataset (config and version) at a time: two first runs at
  once would write the same folders (one failed with FileExistsError, and its
  clean-up removed the other's temporary files). The second waits, saying so."""
  import fcntl
  folder = os.path.dirname(builder.data_dir)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f".{os.path.basename(builder.data_dir)}.build.lock"), "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process that is building {builder.name} into "
            f"{builder.data_dir}", flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    yield


def _build(builder, raw_dir, announce: bool, tfds) -> None:
  """`download_and_prepare`, quiet, cleaning up after a failure (see `prepare`)."""
  import io
  import sys
  if announce:
    print(f"building dataset {builder.name}/{builder.builder_config.name} into "
          f"{builder.data_dir} (once: later runs reuse it; choose the folder with "
          "config.dataset.data_dir or $TFDS_DATA_DIR)", flush=True)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  config = tfds.download.DownloadConfig(manual_dir=raw_dir) if raw_dir else None
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS's download wording
      builder.download_and_prepare(download_config=config)
  except BaseException as err:
    parent = os.path.dirname(builder.data_dir)
    for tmp in glob.glob(os.path.join(parent, "*incomplete*")):
      shutil.rmtree(tmp, ignore_errors=True)
    empty = re.search(r'Failed to finalize writing of split "([^"]+)"', str(err))
    if isinstance(err, AssertionError) and empty:
      bad = getattr(builder, "bad_files", None)
      left_out = (f" (--skip_bad left out {len(bad.skipped)} bad file(s))"
                  if bad is not None and bad.skipped else "")
      raise BadInputError(f"{raw_dir or builder.name}: the {empty.group(1)} split has no "
                          f"examples{left_out}") from None
    if isinstance(err, OSError) and err.errno is not None:   # a full disk, no permission
      raise BadInputError(f"{builder.data_dir}: building {builder.name} failed "
                          f"({err.strerror or err}); nothing half-written is kept: make room "
                          "(or fix the folder) and rerun") from None
    raise
