r"""Run one training on N local processes joined by `jax.distributed`.

  python -m launch.local_cluster --processes 2 --devices_per_process 2 -- \
      --config configs/default.py --workdir runs/two_procs

Everything after `--` is `launch.train`'s command line. Each process gets
ASGML_COORDINATOR (localhost, a free port), ASGML_NUM_PROCESSES and
ASGML_PROCESS_ID (asgml_jax/distributed.py) and, on the CPU,
`--xla_force_host_platform_device_count=D` so it has D devices of its own;
the run's batch is sharded over all N·D devices, each process feeding its
own slice. Process 0's output is this command's; the others' lines are
prefixed with `[process i]`. The exit status is the first non-zero one of
the processes (all are stopped when one fails), else 0. On machines with
accelerators set `--devices_per_process 0` to leave XLA's device flags alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _prefix(stream, tag: str) -> None:
  for line in stream:
    sys.stderr.write(f"[{tag}] {line}")
  stream.close()


def process_env(base: dict, coordinator: str, processes: int, pid: int,
                devices_per_process: int) -> dict:
  env = dict(base, ASGML_COORDINATOR=coordinator, ASGML_NUM_PROCESSES=str(processes),
             ASGML_PROCESS_ID=str(pid))
  if devices_per_process:
    flag = f"--xla_force_host_platform_device_count={devices_per_process}"
    env["XLA_FLAGS"] = " ".join(f for f in (base.get("XLA_FLAGS", ""), flag) if f)
    env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    print("error: give launch.train's arguments after --, e.g. "
          "python -m launch.local_cluster --processes 2 -- --config configs/default.py "
          "--workdir runs/x", file=sys.stderr)
    return 2
  split = argv.index("--")
  parser = argparse.ArgumentParser(prog="python -m launch.local_cluster",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="CPU devices per process (0: leave XLA_FLAGS alone)")
  args = parser.parse_args(argv[:split])
  if args.processes < 1:
    print("error: --processes must be at least 1", file=sys.stderr)
    return 2
  coordinator = f"localhost:{_free_port()}"
  procs, threads = [], []
  for pid in range(args.processes):
    env = process_env(os.environ, coordinator, args.processes, pid, args.devices_per_process)
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", *argv[split + 1:]], env=env,
                            stdout=None if pid == 0 else subprocess.PIPE,
                            stderr=None if pid == 0 else subprocess.STDOUT, text=True)
    procs.append(proc)
    if pid:
      thread = threading.Thread(target=_prefix, args=(proc.stdout, f"process {pid}"), daemon=True)
      thread.start()
      threads.append(thread)
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed:
        status = failed[0]
        for p in procs:
          if p.poll() is None:
            p.terminate()
      time.sleep(0.2)
  except KeyboardInterrupt:
    for p in procs:
      p.terminate()
  for p in procs:
    p.wait()
  for thread in threads:
    thread.join(timeout=5)
  return status or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == "__main__":
  sys.exit(main())
