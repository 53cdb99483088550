"""Golden values of every method variant: a few train steps of one config.

`record(variant, size)` runs 4 jitted train steps of `configs/default.py:<variant>`
from seed 42 on four batches of the synthetic data, and returns the step
metrics and, for every leaf of the params, batch statistics, optimizer state
and probe state, its path, shape, dtype, sum and sum of absolute values
(float64 sums of the float32 leaf).

Two sizes:
- "tiny" (the default suite; `golden/variant_steps_tiny.json`): the default
  config with 2-layer MLP encoders on vectors (16,) and (12,), 8-d features
  (compiles in seconds);
- "default" (`-m slow`; `golden/variant_steps.json`): the default config
  itself, small CNNs with BatchNorm on 32x32x1 and 24x24x3 inputs.

The windows that would otherwise stay closed in 4 steps are opened: one step
per epoch, OPM's warm-up and ARL's start at epoch 1, probes refreshed every
2 steps. Everything else is the config's.

Both files were recorded by the code before the one-plan redesign (the
default file before the method-modules refactor, re-recorded on purpose for
cggm, agm, arl, arl_fixed and the three _seedcode variants when their
reference fidelity was mended); `tests/test_golden_variants.py` states the
tolerance they are reproduced to.

`python tests/golden_steps.py [--size tiny|default] [variant ...]` rewrites a
file (every variant, or only those named); run it only when a change of
numbers is intended, and say why in the commit. With `--out FILE` it writes
the records to FILE instead and leaves the goldens alone (how the slow test
computes the default config's records in a process of its own).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_FILES = {"default": os.path.join(HERE, "golden", "variant_steps.json"),
                "tiny": os.path.join(HERE, "golden", "variant_steps_tiny.json")}
GOLDEN_FILE = GOLDEN_FILES["default"]
NUM_STEPS = 4
BATCH = 32

# The variants that existed when the default file was recorded (before the
# method-modules refactor); methods added since pin their numbers in their own tests.
RECORDED_VARIANTS = (
    "baseline", "ogm", "ogm_ge", "frequency", "frequency_control", "staleness", "adaptive",
    "boost", "boost_ogm", "boost_ogm_seedcode", "frequency_seedcode", "staleness_seedcode",
    "mmpareto", "pcgrad", "dwa", "gradnorm", "opm", "cggm", "inforeg", "agm", "miles", "pmr",
    "arl", "arl_fixed", "gblend", "unimodal_audio")


def golden_variants() -> tuple[str, ...]:
  return RECORDED_VARIANTS


def _tiny(config) -> None:
  """MLP encoders on vectors, 8-d features (in place, config unlocked)."""
  shapes = {"audio": (16,), "visual": (12,)}
  for m in list(config.modalities):
    mod = config.modalities[m]
    mod.encoder, mod.input_shape, mod.mlp_hidden_dim = "mlp", shapes[m], 16
  config.model.feature_dim = 8
  config.dataset.synthetic.num_train = NUM_STEPS * BATCH


def golden_config(variant: str, size: str = "default"):
  """The validated config of `variant` at `size`, its windows opened."""
  from asgml_jax.config_schema import effective_config, validate
  from configs import default
  config = default.get_config(variant)
  with config.unlocked():
    config.method.opm.warmup_epochs = 1
    config.method.arl.start_epoch = 1
    config.probes.eval_freq = 2
    config.probes.train_steps = 2
    if size == "tiny":
      _tiny(config)
  return effective_config(validate(config))


def _leaves(tree) -> list:
  import jax
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = np.asarray(leaf)
    as64 = x.astype(np.float64)
    out.append([jax.tree_util.keystr(path), list(x.shape), str(x.dtype),
                float(as64.sum()), float(np.abs(as64).sum())])
  return out


def record(variant: str, size: str = "default") -> dict:
  """4 steps' metrics and the final state's leaves (module docstring); "health"
  is the state's non-finite record ([-1, -1] when every step was finite)."""
  import jax.numpy as jnp
  from conftest import jitted_step
  from data_prep.synthetic import SyntheticSpec, generate_split

  config = golden_config(variant, size)
  state, step, _ = jitted_step(config, steps_per_epoch=1)
  data = generate_split(SyntheticSpec.from_config(config), "train")
  metrics = []
  for i in range(NUM_STEPS):
    batch = {k: jnp.asarray(v[i * BATCH:(i + 1) * BATCH]) for k, v in data.items()}
    batch["label"] = batch["label"].astype(jnp.int32)
    state, m = step(state, batch)
    metrics.append({k: float(v) for k, v in sorted(m.items())})
  return {"metrics": metrics,
          "params": _leaves(state.params), "batch_stats": _leaves(state.batch_stats),
          "opt_state": _leaves(state.opt_state), "probe_state": _leaves(state.probe_state),
          "health": [int(x) for x in np.asarray(state.health)]}


def main() -> None:
  sys.path.insert(0, HERE)
  args = sys.argv[1:]
  size, out_file = "default", None
  while args[:1] in (["--size"], ["--out"]):
    if args[0] == "--size":
      size = args[1]
    else:
      out_file = args[1]
    args = args[2:]
  path = out_file or GOLDEN_FILES[size]
  unknown = sorted(set(args) - set(golden_variants()))
  if unknown:
    sys.exit(f"error: not recorded variants: {', '.join(unknown)}")
  out = {}
  if args and not out_file:
    with open(path) as f:
      out = json.load(f)
  for variant in args or golden_variants():
    print(f"recording {variant} ({size})", flush=True)
    out[variant] = record(variant, size)
    out[variant].pop("health")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=0, sort_keys=True)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
