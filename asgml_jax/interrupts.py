"""SIGTERM, SIGINT and SIGHUP as a clean stop: one line, the conventional exit code.

Clusters stop (preempt) jobs with SIGTERM, people with Ctrl-C (SIGINT), a
closed terminal with SIGHUP. Each raises `Interrupted` in the main thread at
the next Python instruction, except inside `protected()` (a checkpoint save):
there the signal is remembered and raised when the save is complete, so a
stopped run never leaves a save half-done and the next run resumes from it.
`Interrupted` derives from BaseException, like KeyboardInterrupt, so no
`except Exception` swallows it. Python itself can: a signal whose handler
runs inside a callback (JAX's garbage-collector hook, a weakref finalizer)
raises there, where the exception is printed as "ignored" and dropped. So
every signal is also recorded, and the training loop calls `check()` at each
step: a recorded signal whose exception was lost is raised there, at a safe
point. The launchers print `Interrupted.line()` and exit with 128 + the
signal number (143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP), as a shell
reports a process a signal stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {"depth": 0, "deferred": None, "pending": None}
# SIGHUP: the terminal the run was started from was closed (exit 129).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
  _state["pending"] = signum
  if _state["depth"]:
    _state["deferred"] = signum
    return
  raise Interrupted(signum)


def install() -> None:
  """Routes the stop signals to `Interrupted` (main thread only), forgetting
  any signal an earlier run in this process recorded."""
  if threading.current_thread() is not threading.main_thread():
    return
  _state["pending"] = _state["deferred"] = None
  for signum in STOP_SIGNALS:
    signal.signal(signum, _handler)


def check() -> None:
  """Raises `Interrupted` for a signal that arrived and was not acted on
  (its exception lost where Python ignores exceptions); outside `protected()`."""
  if _state["pending"] is not None and not _state["depth"]:
    signum, _state["pending"] = _state["pending"], None
    raise Interrupted(signum)


def handled() -> None:
  """The stop was acted on (the launcher reported it): nothing is pending."""
  _state["pending"] = _state["deferred"] = None


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
    _state["pending"] = None
    raise Interrupted(signum)
