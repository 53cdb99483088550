"""Unimodal teachers: the first stage of two-stage methods (UMT).

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
student starts — all seeds of a sweep in one compiled program, resuming a
teacher run that was stopped, and doing nothing for one that finished — and
`load` reads a teacher's best-by-validation checkpoint (verified) for the
student's optimizer state, so a resumed student keeps the teachers it began
with.
"""

from __future__ import annotations

import copy
import os
from typing import Sequence

import jax
import jax.numpy as jnp

from asgml_jax import config_checks as cc

VARIANT_PREFIX = "unimodal_"


def needs_teachers(config) -> bool:
  from asgml_jax.methods import stack
  return any(m.epoch.teachers for m in stack.resolve(config.method))


def teacher_config(config, modality: str):
  """The config of modality `modality`'s teacher: this config with no method,
  that modality alone (the `unimodal_<m>` variant)."""
  from asgml_jax import methods
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.method.name = "baseline"
    cfg.method.stack = ""
    cfg.method.teachers.dir = ""
  return methods.only_modality(cfg, modality)


def teacher_dir(root: str, modality: str, seed: int) -> str:
  return os.path.join(root, f"{VARIANT_PREFIX}{modality}", f"seed_{seed}")


def with_root(config, root: str):
  """`config` with `method.teachers.dir` set to `root` when it is empty."""
  if config.method.teachers.dir:
    return config
  with config.unlocked():
    config.method.teachers.dir = os.path.abspath(os.path.expanduser(root))
  return config


def ensure(config, seeds: Sequence[int]) -> None:
  """Trains every missing (or unfinished) teacher of `config` for `seeds`."""
  from asgml_jax import run_dir, sweep, train
  if not needs_teachers(config):
    return
  root = config.method.teachers.dir
  cc.require(bool(root), "method.teachers.dir", "the stack needs unimodal teachers: name the "
             "folder that holds (or will hold) them")
  for m in cc.modality_names(config):
    cfg = teacher_config(config, m)
    dirs = [teacher_dir(root, m, s) for s in seeds]
    missing = [(s, d) for s, d in zip(seeds, dirs) if not _finished(d, cfg.num_epochs)]
    if not missing:
      continue
    run_dir.log(f"teachers: training {VARIANT_PREFIX}{m} for seed(s) "
                f"{', '.join(str(s) for s, _ in missing)} in {os.path.join(root, VARIANT_PREFIX + m)}"
                " before the student")
    if len(missing) == 1:
      train.train_and_evaluate(train.with_seed(cfg, missing[0][0]), missing[0][1])
    else:
      sweep.train_sweep(cfg, [s for s, _ in missing], [d for _, d in missing])
    for s, d in missing:
      if not _finished(d, cfg.num_epochs):
        raise cc.ConfigError(f"teachers: the unimodal_{m} run in {d} did not finish "
                             "(see its summary.json); the student cannot start")


def _finished(workdir: str, num_epochs: int) -> bool:
  import json
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    summary = json.load(f)
  return "error" not in summary and summary.get("num_epochs", 0) >= num_epochs


def _example_batch(config) -> dict:
  """Zeros of the model's input shapes (`input_shape` is what the model sees,
  after any frame cropping), for initialising the teacher's state."""
  return {m: jnp.zeros((1,) + tuple(config.modalities[m].input_shape), jnp.float32)
          for m in cc.modality_names(config)}


def teacher_model(config, modality: str, num_classes: int):
  from asgml_jax.models import model_from_config
  return model_from_config(teacher_config(config, modality), num_classes)


def load(config, modality: str, num_classes: int, steps_per_epoch: int) -> dict:
  """{"params", "batch_stats"} of the teacher's best checkpoint (for `config.seed`)."""
  from asgml_jax import checkpointing, optim
  from asgml_jax.probes import probe_config_from
  from asgml_jax.state import create_train_state
  cfg = teacher_config(config, modality)
  root = config.method.teachers.dir
  cc.require(bool(root), "method.teachers.dir", "the stack needs unimodal teachers: name the "
             "folder that holds them (the launchers train them there first)")
  workdir = teacher_dir(root, modality, config.seed)
  like = create_train_state(teacher_model(config, modality, num_classes),
                            optim.make_optimizer(cfg, steps_per_epoch, num_classes),
                            _example_batch(cfg), jax.random.PRNGKey(0),
                            probe_config_from(cfg, num_classes))
  try:
    state, _ = checkpointing.restore_best(workdir, like)
  except FileNotFoundError as err:
    raise cc.ConfigError(f"method.teachers.dir: no teacher for {modality} (seed {config.seed}): "
                         f"{err}; train it with the variant {VARIANT_PREFIX}{modality} into "
                         f"{workdir}, or let launch.train / launch.sweep do it") from None
  return {"params": state.params, "batch_stats": state.batch_stats}


class TeacherSource:
  """The teachers of a student run, as `BuildContext.teachers` offers them."""

  def __init__(self, config, num_classes: int, steps_per_epoch: int | None):
    self.config, self.num_classes, self.steps_per_epoch = config, num_classes, steps_per_epoch

  def model(self, modality: str):
    return teacher_model(self.config, modality, self.num_classes)

  def load(self, modality: str) -> dict:
    return load(self.config, modality, self.num_classes, self.steps_per_epoch or 1)
