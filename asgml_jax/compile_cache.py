"""JAX's persistent compilation cache, on by default for the launchers.

A grid compiles one train-step program per variant (32–46 s each for the
CREMA-D ResNet-18 step on an H100, minutes on a CPU), and a resumed run or a
rerun grid compiles the same programs again. With the cache, XLA's compiled
executable is stored on disk under a key of the program, the compile options,
the devices and the jax/jaxlib versions, and the next process that asks for
the same program loads it instead of compiling. Results do not change: it is
the same executable.

Where: `$ASGML_COMPILATION_CACHE` if it names a folder, else
`$JAX_COMPILATION_CACHE_DIR` (JAX's own variable; the test suite sets one per
session), else `$XDG_CACHE_HOME/asgml_jax/xla` (`~/.cache/asgml_jax/xla`).
`ASGML_COMPILATION_CACHE=off` turns it off. Every program is stored, however
short its compilation (JAX's default keeps only those over 1 s): the small
helper programs take kilobytes, and with all of them stored a rerun loads
everything, so "loaded or compiled" has one answer. JAX does not bound the
folder's size; delete it to reclaim the space (nothing else is kept there).

`CompileReport` counts JAX's cache events (`jax.monitoring`) so the launcher
can say, after the first step, whether its programs were loaded or compiled.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import jax

OFF = "off"
_HITS = "/jax/compilation_cache/cache_hits"
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"

_counts = {"requests": 0, "hits": 0, "saved_s": 0.0}
_lock = threading.Lock()
_listening = False
_enabled_dir: str | None = None
_asked = False  # a launcher called enable(), even if the environment said off


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "asgml_jax", "xla")


def chosen_dir() -> str | None:
  """The cache folder the environment asks for (None: off)."""
  own = os.environ.get("ASGML_COMPILATION_CACHE", "").strip()
  if own.lower() == OFF:
    return None
  return own or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  with _lock:
    if event == _REQUESTS:
      _counts["requests"] += 1
    elif event == _HITS:
      _counts["hits"] += 1


def _on_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event == _SAVED:
    with _lock:
      _counts["saved_s"] += max(float(duration), 0.0)


def enable() -> str | None:
  """Turns the cache on for this process (idempotent); returns its folder or None."""
  global _listening, _enabled_dir, _asked
  _asked = True
  folder = chosen_dir()
  if folder is None:
    return None
  if _enabled_dir != folder:
    try:
      os.makedirs(folder, exist_ok=True)
      handle, probe = tempfile.mkstemp(dir=folder, prefix=".write_test_")
      os.close(handle)
      os.remove(probe)
    except OSError as err:
      # An unwritable cache is not worth failing a run for: compile as before,
      # saying so once (JAX would warn at every compilation it cannot store).
      print(f"note: the compilation cache {folder} cannot be written "
            f"({err.strerror or type(err).__name__}); compiling without it (set "
            f"ASGML_COMPILATION_CACHE to another folder, or to {OFF})", flush=True)
      return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled_dir = folder
  if not _listening:
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True
  return folder


class CompileReport:
  """What the cache did from this object's creation to `line()` / `counts()`."""

  def __init__(self):
    with _lock:
      self._before = dict(_counts)
    self._started = time.perf_counter()

  def counts(self) -> dict:
    with _lock:
      return {k: _counts[k] - self._before[k] for k in _counts}

  def line(self, what: str) -> str | None:
    """e.g. 'first step after 3.1 s: loaded 9 programs from the compilation
    cache (saved 41.2 s of compiling)'; None when no launcher asked for the
    cache in this process (a library caller's own JAX settings: nothing to say)."""
    head = f"{what} after {time.perf_counter() - self._started:.1f} s"
    if _enabled_dir is None:
      return f"{head}: compiled (compilation cache off)" if _asked else None
    c = self.counts()
    hits, misses = c["hits"], c["requests"] - c["hits"]
    if c["requests"] == 0:
      return f"{head}: nothing compiled (programs already in memory)"
    if misses == 0:
      return (f"{head}: loaded {hits} program(s) from the compilation cache "
              f"(saved {c['saved_s']:.1f} s of compiling)")
    if hits == 0:
      return (f"{head}: compiled {misses} program(s), kept in {_enabled_dir} for the next "
              f"run (ASGML_COMPILATION_CACHE=off: don't)")
    return (f"{head}: loaded {hits} program(s) from the compilation cache and compiled "
            f"{misses} (saved {c['saved_s']:.1f} s)")
