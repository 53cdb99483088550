"""SIGTERM and SIGINT as a clean stop: one line, the conventional exit code.

Clusters stop (preempt) jobs with SIGTERM, people with Ctrl-C (SIGINT). Both
raise `Interrupted` in the main thread at the next Python instruction, except
inside `protected()` (a checkpoint save): there the signal is remembered and
raised when the save is complete, so a stopped run never leaves a save
half-done and the next run resumes from it. `Interrupted` derives from
BaseException, like KeyboardInterrupt, so no `except Exception` swallows it.
The launchers print `Interrupted.line()` and exit with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT), as a shell reports a process a signal
stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {"depth": 0, "deferred": None}


class Interrupted(BaseException):
  """A stop signal arrived; `saved` is filled in by whoever knows what was saved."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.saved = ""

  @property
  def exit_code(self) -> int:
    return 128 + self.signum

  def line(self) -> str:
    return (f"stopped by {signal.Signals(self.signum).name}"
            + (f"; {self.saved}" if self.saved else ""))


def _handler(signum, frame):
  del frame
  if _state["depth"]:
    _state["deferred"] = signum
    return
  raise Interrupted(signum)


def install() -> None:
  """Routes SIGTERM and SIGINT to `Interrupted` (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    return
  signal.signal(signal.SIGTERM, _handler)
  signal.signal(signal.SIGINT, _handler)


@contextlib.contextmanager
def protected():
  """A block that a stop signal does not cut short; the signal is raised after it."""
  _state["depth"] += 1
  try:
    yield
  finally:
    _state["depth"] -= 1
  if _state["depth"] == 0 and _state["deferred"] is not None:
    signum, _state["deferred"] = _state["deferred"], None
    raise Interrupted(signum)
