"""Golden values of every method variant: a few train steps of the default config.

`record(variant)` runs 4 jitted train steps of `configs/default.py:<variant>`
from seed 42 on four batches of the synthetic data, and returns the step
metrics and, for every leaf of the params, batch statistics, optimizer state
and probe state, its path, shape, sum and sum of absolute values (float64
sums of the float32 leaf, exact for bit-identical arrays).

The windows that would otherwise stay closed in 4 steps are opened: one step
per epoch, OPM's warm-up and ARL's start at epoch 1, probes refreshed every
2 steps. Everything else is the default config.

`python tests/golden_steps.py [variant ...]` rewrites
`tests/golden/variant_steps.json` (every variant, or only those named); run it
only when a change of numbers is intended, and say why in the commit.

Re-recorded on purpose since the refactor (issue 16, reference fidelity):
cggm (the reference's 0.8 gradient-norm clip; its balance formula for S < 0);
agm (zero-input passes in inference mode, the conditional clip); arl and
arl_fixed (the unimodal CE on fc(cat(x_m, 0)), the full fusion bias);
boost_ogm_seedcode, frequency_seedcode, staleness_seedcode (the seeds' model
with its 512-d hidden layer and no ReLU, the boost noise of the scaled
gradient, the seeds' staleness list rule).
(inforeg's variant now gates both modalities by the audio window; in these 4
steps both windows are open either way, so its values did not change.)
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_FILE = os.path.join(HERE, "golden", "variant_steps.json")
NUM_STEPS = 4
BATCH = 32


# The variants that existed when the file was recorded (before the method-modules
# refactor); methods added since pin their numbers in their own tests.
RECORDED_VARIANTS = (
    "baseline", "ogm", "ogm_ge", "frequency", "frequency_control", "staleness", "adaptive",
    "boost", "boost_ogm", "boost_ogm_seedcode", "frequency_seedcode", "staleness_seedcode",
    "mmpareto", "pcgrad", "dwa", "gradnorm", "opm", "cggm", "inforeg", "agm", "miles", "pmr",
    "arl", "arl_fixed", "gblend", "unimodal_audio")


def golden_variants() -> tuple[str, ...]:
  return RECORDED_VARIANTS


def golden_config(variant: str):
  from asgml_jax.config_schema import effective_config, validate
  from configs import default
  config = default.get_config(variant)
  with config.unlocked():
    config.method.opm.warmup_epochs = 1
    config.method.arl.start_epoch = 1
    config.probes.eval_freq = 2
    config.probes.train_steps = 2
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


def record(variant: str) -> dict:
  import jax.numpy as jnp
  from conftest import jitted_step
  from data_prep.synthetic import SyntheticSpec, generate_split

  config = golden_config(variant)
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
          "opt_state": _leaves(state.opt_state), "probe_state": _leaves(state.probe_state)}


def main() -> None:
  sys.path.insert(0, HERE)
  os.makedirs(os.path.dirname(GOLDEN_FILE), exist_ok=True)
  only = sys.argv[1:]
  unknown = sorted(set(only) - set(golden_variants()))
  if unknown:
    sys.exit(f"error: not recorded variants: {', '.join(unknown)}")
  out = {}
  if only:
    with open(GOLDEN_FILE) as f:
      out = json.load(f)
  for variant in only or golden_variants():
    print(f"recording {variant}", flush=True)
    out[variant] = record(variant)
  with open(GOLDEN_FILE, "w") as f:
    json.dump(out, f, indent=0, sort_keys=True)
  print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":
  main()
