"""One trainer per workdir: an exclusive lock on `<workdir>/.lock`.

Two trainers in one workdir would write into the same checkpoints and event
files. The lock is an `fcntl.flock` on an open file: the kernel releases it
when the holder exits however it exits (kill -9 included), so a stale lock
file never blocks a resume; only a live holder does. The file names the
holder (pid, host, start time) for the refusal message. Advisory, and local:
on a network filesystem without flock support the lock is skipped with a
note rather than failing the run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

LOCK_FILE = ".lock"


class WorkdirBusy(Exception):
  """Another live process holds the workdir."""


class WorkdirLock:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        os.close(fd)  # flock unsupported here (some network filesystems)
        print(f"note: cannot lock {self.path} ({err.strerror}); not guarding against a "
              "second trainer", flush=True)
        return self
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise WorkdirBusy(f"--workdir {os.path.dirname(self.path)}: in use by {holder}; wait for "
                        "it to finish or stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
