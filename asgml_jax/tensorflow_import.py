"""TensorFlow (read by tf.data / TFDS only) imported without its C++ notices.

Importing TensorFlow prints, through absl's C++ logging and before any
Python setting can reach it, "oneDNN custom operations are on ..." twice and
a CPU-instructions notice: lines about TensorFlow's own kernels, which this
project uses only to read TFDS files. `TF_CPP_MIN_LOG_LEVEL` no longer
silences them, so the launchers import TensorFlow once with file descriptor
2 pointed at /dev/null; an import error is still raised (and printed by
Python after stderr is restored).
"""

from __future__ import annotations

import os
import sys


def import_quietly() -> None:
  if "tensorflow" in sys.modules or os.environ.get("ASGML_TF_NOTICES"):
    return
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    import tensorflow  # noqa: F401
    import tensorflow_datasets  # noqa: F401
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)
