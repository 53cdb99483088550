"""Seed sweeps: S seeds of one config trained by one jit-compiled program.

`train_sweep` is the loop (`asgml_jax/loop.py`) with S seeds: the S train
states are stacked on a leading seed axis and one seed's train and eval
bodies are mapped over it inside one `jax.jit` (`programs.SeedAxis`: vmap
for MLP encoders, the body unrolled per seed for convolutional ones; one
seed is a single run's program). Each seed writes an ordinary run directory
(config.json, checkpoints, TensorBoard events, summary.json), exactly as
`launch.train` would, so a sweep's runs are read, resumed and reported like
single runs.

A sweep runs in one process (its seeds share the devices it sees); several
processes are for one run (`launch.train`).
"""

from __future__ import annotations

import os
from typing import Sequence

import jax

from asgml_jax import loop, teachers
from asgml_jax.config_checks import ConfigError
from asgml_jax.plan import Plan, with_seed


def train_sweep(config, seeds: Sequence[int], workdirs: Sequence[str],
                seed_axis: str = "auto") -> list[dict]:
  """Trains `config` for every seed in one compiled program; seed s writes `workdirs[s]`.

  Returns the per-seed summaries (dicts with an "error" key for a seed whose
  loss or gradients went non-finite: that seed is frozen by the step's guard,
  stops being checkpointed, and the others train on).
  """
  if jax.process_count() > 1:
    raise ConfigError("launch.sweep runs in one process (its seeds share the devices it "
                      "sees); several processes are for one run: launch.train")
  if len(seeds) != len(workdirs) or not seeds:
    raise ConfigError(f"--seeds: {len(seeds)} seed(s) for {len(workdirs)} run directories")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"--seeds: repeated seed in {list(seeds)}")
  plan = Plan.build(with_seed(config, seeds[0]))
  if plan.needs_teachers:
    plan = plan.with_teachers_dir(os.path.join(
        os.path.commonpath([os.path.abspath(w) for w in workdirs]), "teachers"))
    teachers.ensure(plan, seeds)
  return loop.train_seeds(plan, seeds, workdirs, seed_axis)
