"""XLA:CPU flags the library sets, each kept only because a benchmark showed it helps.

XLA reads `XLA_FLAGS` once, when the first backend starts, so `apply()` runs
when `asgml_jax` is imported (before any computation) and adds each flag to
the environment variable unless the user's `XLA_FLAGS` already sets it:
whatever the user writes wins. `ASGML_XLA_FLAGS=off` adds none (run
`launch.bench` with it to measure XLA's defaults).

- `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: jax 0.10's
  XLA:CPU sends every convolution to YNNPACK by default. On the 2-core AVX2
  CPU of this project YNNPACK's backward-filter convolution (the weight
  gradient) ran at 5 GFLOP/s against 89 GFLOP/s for XLA's own Eigen
  convolution (3x3, 64->64 channels, 32x32, batch 64: 1010 ms vs 54 ms), and
  its forward at half Eigen's speed (65 vs 31 ms). Removing convolutions from
  the YNNPACK list (its other fusions stay) made the ResNet-18 pair's train
  step 2.3x faster, 10.1 -> 4.4 s (docs/benchmarks.md). The flag only concerns the
  CPU backend; GPU compilation ignores it.
"""

from __future__ import annotations

import logging
import os

CPU_FLAGS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}
# jaxlib versions whose XLA knows every flag above (an unknown flag aborts XLA).
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
  try:
    from jaxlib import version  # only when applying: the package import stays free of jaxlib
    return tuple(int(p) for p in version.__version__.split(".")[:2])
  except (ImportError, ValueError):
    return (0,)


def flags_to_add(xla_flags: str, jaxlib_version: tuple[int, ...]) -> list[str]:
  """The `--name=value` entries of CPU_FLAGS that `xla_flags` does not set already."""
  if jaxlib_version < MIN_JAXLIB:
    return []
  return [f"--{name}={value}" for name, value in CPU_FLAGS.items()
          if f"--{name}=" not in xla_flags and f"--{name} " not in f"{xla_flags} "]


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # JAX's private module: may be absent in other versions
    return bool(getattr(xla_bridge, "_backends", {}))
  except ImportError:
    return False


def apply() -> list[str]:
  """Adds the library's flags to $XLA_FLAGS (see the module docstring); returns them."""
  if os.environ.get("ASGML_XLA_FLAGS", "on").lower() in ("off", "0", "false", "no"):
    return []
  current = os.environ.get("XLA_FLAGS", "")
  added = flags_to_add(current, _jaxlib_version())
  if not added:
    return []
  if _backends_started():
    logging.getLogger(__name__).warning(
        "asgml_jax: a JAX backend started before asgml_jax was imported, so its XLA:CPU "
        "flags (%s) do not apply; import asgml_jax first or set them in XLA_FLAGS",
        " ".join(added))
    return []
  os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
