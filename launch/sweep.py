r"""Seed sweeps and method grids, each variant's seeds in one compiled program.

  python -m launch.sweep --config configs/av_digits.py:ogm_ge --seeds 42,0,1,2,3 --workdir runs/sw
  python -m launch.sweep --config configs/av_digits.py --variants baseline,ogm_ge,boost,boost_ogm \
      --workdir runs/grid

Writes one ordinary run directory per (variant, seed): WORKDIR/<variant>/seed_<s>
(config.json, checkpoints, TensorBoard events, summary.json), so
`python -m launch.report WORKDIR` tabulates it and rerunning the same command
resumes it. `--seeds` defaults to the config's `sweep_seeds` (the paper protocol).
Config overrides (`--config.num_epochs=5`) apply to every variant.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from asgml_jax.config_checks import ConfigError
from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: <workdir>/<variant>/seed_<s>.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds, e.g. 42,0,1,2,3 (default: config.sweep_seeds).")
_VARIANTS = flags.DEFINE_list("variants", None, "Method variants of configs/variants.py to run "
                              "one after another (default: the config's own).")
_SEED_AXIS = flags.DEFINE_enum("seed_axis", "auto", ["auto", "vmap", "unroll"],
                               "How the seed axis is compiled (asgml_jax/sweep.py).")
flags.mark_flags_as_required(["config", "workdir"])


def run_dir_for(workdir: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, variant, f"seed_{seed}")


def _config_for_variant(variant: str):
  """The config file loaded with `variant` as its argument, plus the command-line overrides."""
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  spec = importlib.util.spec_from_file_location("sweep_config_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  for key, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  config.lock()
  return config


def _parse_seeds(config) -> list[int]:
  if _SEEDS.value is None:
    return [int(s) for s in config.sweep_seeds]
  try:
    return [int(s) for s in _SEEDS.value]
  except ValueError:
    raise ConfigError(f"--seeds: expected comma-separated integers, got {','.join(_SEEDS.value)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  cli.compilation_cache()
  from asgml_jax import sweep
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  if _VARIANTS.value:
    configs = [(v, _config_for_variant(v)) for v in _VARIANTS.value]
  else:
    from asgml_jax.plan import Plan
    configs = [(Plan.build(_CONFIG.value).identity.label, _CONFIG.value)]
  failed = 0
  from asgml_jax import teachers
  for variant, config in configs:
    seeds = _parse_seeds(config)
    # The variants that need unimodal teachers use the sweep's unimodal_<m> runs.
    if teachers.needs_teachers(config):
      config = teachers.with_root(config, workdir)
    summaries = sweep.train_sweep(config, seeds,
                                  [run_dir_for(workdir, variant, s) for s in seeds],
                                  seed_axis=_SEED_AXIS.value)
    failed += sum("error" in s for s in summaries)
  print(f"sweep done: {workdir}; tables and plots: python -m launch.report {workdir}",
        flush=True)
  if failed:
    print(f"error: {failed} run(s) stopped on non-finite values (see their summary.json)",
          file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
