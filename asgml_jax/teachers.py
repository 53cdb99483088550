"""Unimodal teachers: the first stage of two-stage methods (UMT, UME, G2D).

A teacher of modality m is the run `unimodal_<m>` of the same config (the
modality alone, its encoder with the fusion layer as classifier), same seed,
same schedule, kept as an ordinary run directory:

    <teachers root>/unimodal_<m>/seed_<seed>/

`method.teachers.dir` names the root. Left empty, the launchers fill it in:
`launch.train` with `<workdir>/teachers`, `launch.sweep` with the sweep's
own folder, so the teachers are the sweep's `unimodal_<m>` rows (trained
once, whichever variant comes first) and every variant that needs them
shares one set per seed. A stack whose settings change the unimodal model
(e.g. a shared head) needs teachers of that model: give it its own
`method.teachers.dir`. `ensure` trains whatever is missing before the
student starts — all seeds in one compiled program, resuming a teacher run
that was stopped, and doing nothing for one that finished; the student
reads a teacher's best-by-validation checkpoint (verified) into its optimizer
state when it starts (`plan.Teachers`), so a resumed student keeps the
teachers it began with.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from asgml_jax import config_checks as cc
from asgml_jax import loop, run_dir
from asgml_jax.plan import TEACHER_PREFIX, Plan, teacher_config, teacher_dir


def needs_teachers(config) -> bool:
  """Whether the (validated) config's stack needs unimodal teachers."""
  return Plan.build(config).needs_teachers


def with_root(config, root: str):
  """`config` with `method.teachers.dir` set to `root` when it is empty."""
  if config.method.teachers.dir:
    return config
  with config.unlocked():
    config.method.teachers.dir = os.path.abspath(os.path.expanduser(root))
  return config


def ensure(plan: Plan, seeds: Sequence[int]) -> None:
  """Trains every missing (or unfinished) teacher of `plan` for `seeds`."""
  if not plan.needs_teachers:
    return
  config = plan.config
  root = config.method.teachers.dir
  cc.require(bool(root), "method.teachers.dir", "the stack needs unimodal teachers: name the "
             "folder that holds (or will hold) them")
  for m in plan.names:
    teacher = Plan.build(teacher_config(config, m))
    dirs = [teacher_dir(root, m, s) for s in seeds]
    missing = [(s, d) for s, d in zip(seeds, dirs) if not _finished(d, teacher.config.num_epochs)]
    if not missing:
      continue
    run_dir.log(f"teachers: training {TEACHER_PREFIX}{m} for seed(s) "
                f"{', '.join(str(s) for s, _ in missing)} in "
                f"{os.path.join(root, TEACHER_PREFIX + m)} before the student")
    loop.train_seeds(teacher, [s for s, _ in missing], [d for _, d in missing])
    for s, d in missing:
      if not _finished(d, teacher.config.num_epochs):
        raise cc.ConfigError(f"teachers: the unimodal_{m} run in {d} did not finish "
                             "(see its summary.json); the student cannot start")


def _finished(workdir: str, num_epochs: int) -> bool:
  path = os.path.join(workdir, run_dir.SUMMARY_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    summary = json.load(f)
  return "error" not in summary and summary.get("num_epochs", 0) >= num_epochs
