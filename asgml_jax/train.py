"""train_and_evaluate(config, workdir): one run, the loop with a single seed.

The config becomes a plan (validated, its protocol applied, its stack
resolved: a mistake is one line before anything slow), a stack with
unimodal teachers gets them trained first, and `loop.train_seeds` trains
the one seed: epochs of on-device batches, evaluation and checkpoints each
epoch, a run summary at the end. Rerunning in the same workdir resumes.
"""

from __future__ import annotations

import os

from asgml_jax import loop, teachers
from asgml_jax.loop import NonFiniteError
from asgml_jax.plan import Plan


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a run); returns the summary.

  The workdir is checked and locked before the data load, so a mistake there
  costs no waiting. A stop signal (`interrupts.Interrupted`) leaves the latest
  completed epoch saved and says so; a non-finite step (`NonFiniteError`) or
  any other error leaves a summary.json that records it. A stack with
  unimodal teachers (UMT) trains them first (`asgml_jax/teachers.py`), in
  `<workdir>/teachers` unless `method.teachers.dir` names another folder."""
  plan = Plan.build(config)
  if plan.needs_teachers:
    plan = plan.with_teachers_dir(os.path.join(os.path.expanduser(workdir), "teachers"))
    teachers.ensure(plan, [plan.config.seed])
  summary, = loop.train_seeds(plan, [plan.config.seed], [workdir])
  if "error" in summary:
    raise NonFiniteError(summary["error"])
  return summary
