"""Where a compiled step's time goes: per-HLO-op times from a profiler trace.

`launch.bench --profile_steps N` runs N more steps of a row under
`jax.profiler.trace` (Perfetto output), sums each executed HLO instruction's
duration (XLA:CPU records one event per thunk, named after its instruction;
on a GPU the kernel events carry the same names), and classifies every name
by what the compiled module says it is: a convolution run by XLA's own
(Eigen) emitter, split by direction (forward, backward-data with
`lhs_dilate`, backward-filter with `rhs_dilate`); a library fusion
(`__ynn_fusion`, `__xnn_fusion`, `__onednn_fusion`) and the op it wraps;
max-pool forward (`reduce-window`) and backward (`select-and-scatter`);
matmuls; layout copies; and the remaining loop/reduction fusions (BatchNorm,
ReLU, the optimizer). That is the profile the CPU convolution work of
issue 7 reads.

On XLA:CPU, synchronous thunks (library fusions such as YNNPACK's, loop
fusions) are timed whole, but an Eigen convolution thunk runs asynchronously
on the intra-op pool and its event covers only the launch; the profile
therefore also reports the step's wall time, and the difference is mostly
those convolutions. Events of concurrent thunks can overlap, so the op sum
can also exceed the wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%([\w.\-]+) \(.*\{\s*$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_FUSION_KIND = re.compile(r'"kind":"(__\w+)"')
_SINGLE_OP = {
    "select-and-scatter": "max-pool backward (select-and-scatter)",
    "scatter": "scatter (max-pool backward by argmax)",
    "reduce-window": "reduce-window (max-pool forward, with argmax for its gradient)",
    "iota": "iota (index arrays for max-pool argmax)",
}
_LIBRARY = {"__ynn_fusion": "YNNPACK", "__xnn_fusion": "XNNPACK", "__onednn_fusion": "oneDNN"}


def _parse_module(hlo_text: str) -> tuple[dict, dict]:
  """(instruction -> (opcode, rest of line), computation -> its (opcode, rest) pairs)."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and " = " not in line.split("(")[0]:
      current = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m:
      instructions[m.group(1)] = (m.group(2), m.group(3))
      if current is not None:
        computations[current].append((m.group(2), m.group(3)))
  return instructions, computations


def _convolution_direction(attributes: str) -> str:
  """Which pass a convolution is, read from its window (ResNet kernels are <= 7)."""
  if "lhs_dilate" in attributes:
    return "backward-data of a strided conv (lhs_dilate)"
  size = re.search(r"size=([\dx]+)", attributes)
  if "rhs_dilate" in attributes or (size and max(map(int, size.group(1).split("x"))) > 7):
    return "backward-filter"
  return "forward / stride-1 backward-data"


def classify(name: str, instructions: dict, computations: dict) -> str:
  """A readable category for the HLO instruction `name` of the compiled module."""
  if name not in instructions:
    return "other (runtime)"
  opcode, rest = instructions[name]
  if opcode == "convolution":
    return f"convolution, XLA emitter: {_convolution_direction(rest)}"
  if opcode == "fusion":
    kind = _FUSION_KIND.search(rest)
    called = _CALLS.search(rest)
    inner = computations.get(called.group(1), []) if called else []
    opcodes = {op for op, _ in inner}
    library = _LIBRARY.get(kind.group(1)) if kind else None
    convolutions = [attrs for op, attrs in inner if op == "convolution"]
    if convolutions:
      return (f"convolution, {library or 'XLA emitter (fused)'}: "
              f"{_convolution_direction(convolutions[0])}")
    if "dot" in opcodes:
      return f"matmul, {library or 'XLA'}"
    if library:
      return f"elementwise/reduction, {library}"
    core = opcodes - {"parameter", "bitcast", "constant", "tuple", "get-tuple-element"}
    if core <= {"transpose", "copy"}:
      return "layout copies (transpose/copy)"
    for op in ("select-and-scatter", "reduce-window", "scatter", "iota"):
      if op in core:
        return _SINGLE_OP.get(op, f"other: {op}")
    return "elementwise/reduction fusions (BN, ReLU, optimizer)"
  if opcode in _SINGLE_OP:
    return _SINGLE_OP[opcode]
  if opcode == "dot":
    return "matmul, XLA"
  if opcode in ("copy", "transpose"):
    return "layout copies (transpose/copy)"
  return f"other: {opcode}"


def _event_durations(trace_dir: str) -> collections.Counter:
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True))
  if not paths:
    raise RuntimeError(f"{trace_dir}: the profiler wrote no Perfetto trace")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and "dur" in event:
      totals[event["name"]] += float(event["dur"])
  return totals


def profile_ops(run_steps, steps: int, hlo_text: str, top: int = 12) -> dict:
  """Runs `run_steps(steps)` under the profiler; per-step ms by category and top ops."""
  import jax
  instructions, computations = _parse_module(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      run_steps(steps)
      wall_us = (time.perf_counter() - start) * 1e6
    durations = _event_durations(trace_dir)
  ops = {name: us for name, us in durations.items() if name in instructions}
  by_category = collections.Counter()
  for name, us in ops.items():
    by_category[classify(name, instructions, computations)] += us
  total = sum(ops.values())
  ms = lambda us: us / steps / 1e3
  return {
      "steps": steps,
      "wall_ms_per_step": ms(wall_us),
      "op_ms_per_step": ms(total),
      "categories": [{"category": c, "ms_per_step": ms(us), "share": us / total}
                     for c, us in by_category.most_common()],
      "top_ops": [{"op": name, "category": classify(name, instructions, computations),
                   "ms_per_step": ms(us)} for name, us in
                  sorted(ops.items(), key=lambda kv: -kv[1])[:top]],
  }


def format_profile(profile: dict) -> str:
  lines = [f"  profile ({profile['steps']} steps, {profile['wall_ms_per_step']:.1f} ms/step "
           f"wall): {profile['op_ms_per_step']:.1f} ms/step in HLO ops; ops that run "
           "asynchronously (XLA's Eigen convolutions) are recorded at launch only, so "
           "wall - ops is mostly their time"]
  for row in profile["categories"]:
    lines.append(f"    {row['ms_per_step']:9.1f} ms  {100 * row['share']:5.1f} %  "
                 f"{row['category']}")
  lines.append("  slowest ops:")
  for row in profile["top_ops"]:
    lines.append(f"    {row['ms_per_step']:9.1f} ms  {row['op']}  [{row['category']}]")
  return "\n".join(lines)
