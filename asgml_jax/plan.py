"""Plan.build(config): the one place where an experiment's config meets the method registry.

Building a plan validates the config (unknown keys, impossible values, a
stack that cannot compose: one line naming the key), applies its protocol
(`method.protocol=seed_code | reference` force their settings), and resolves
the method stack once. Everything the training core needs of the methods is
then asked of the plan: the model (with the methods' own layers), the optax
chain, the step's hooks, the evaluation hook, the epoch hooks, the run's
identity for its summary. The core (steps, optimizer, state, input pipeline,
checkpoints, run directories, epoch hooks) receives these parts and never
imports the registry, so a new method never edits it.

Parts that depend on the data (steps per epoch, number of classes) are built
when those are known (`loop.setup_run`), from the same plan.

The teachers of a two-stage method (UMT, UME, G2D) are read here too
(`Teachers`): a teacher of modality m is the run `unimodal_<m>` of the same
config and seed, kept in `<method.teachers.dir>/unimodal_<m>/seed_<seed>/`;
its best-by-validation checkpoint is restored (verified) into the student's
optimizer state when the student starts. Training missing teachers is the
launchers' job (`asgml_jax/teachers.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from asgml_jax import checkpointing, config_schema, methods, optim, tasks
from asgml_jax import config_checks as cc
from asgml_jax.methods import stack
from asgml_jax.methods.base import BuildContext, Evaluation, Method, Step, StepParts, assemble
from asgml_jax.probes import ProbeConfig, probe_config_from
from asgml_jax.run_dir import RunIdentity
from asgml_jax.state import create_train_state
from asgml_jax.tasks import Task
from asgml_jax.transforms.zero_grad import ZERO_GRAD_SCOPES, zeroed_gradient_steps
from data_prep.registry import DATASETS

TEACHER_PREFIX = methods.unimodal.VARIANT_PREFIX


@functools.cache
def schema_defaults() -> dict:
  """{dotted key: default} of every schema key (what config.json stores)."""
  return cc.flatten(json.loads(config_schema.base_config().to_json_best_effort()))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A validated experiment: its effective config and its stack of methods."""
  config: Any                     # validated, its protocol applied
  methods: tuple[Method, ...]     # the stack, in canonical order
  task: Task                      # what the heads predict and how it is scored

  @classmethod
  def build(cls, config) -> "Plan":
    """Validates `config` (ConfigError naming the key), applies its protocol,
    resolves its stack and the dataset's task."""
    config = config_schema.effective_config(config_schema.validate(config))
    return cls(config=config, methods=stack.resolve(config.method),
               task=tasks.TASKS[DATASETS[config.dataset.name].task])

  # -------------------------------------------------------------- identity

  @property
  def names(self) -> tuple[str, ...]:
    """The modalities, sorted (the concat order of the fusion)."""
    return cc.modality_names(self.config)

  @property
  def identity(self) -> RunIdentity:
    """What a run's summary.json says it ran."""
    return RunIdentity(method=stack.method_name(self.config),
                       stack=tuple(m.name for m in self.methods),
                       label=stack.run_label(self.config), defaults=schema_defaults(),
                       task=self.task.name, selection_metric=self.task.selection_metric,
                       unread=self.unread_groups)

  @property
  def unread_groups(self) -> tuple[str, ...]:
    """The config groups of the methods outside the stack ("method.<block>"),
    which no part of the run reads."""
    used = {m.settings.block for m in self.methods}
    return tuple(sorted(f"method.{m.settings.block}" for m in methods.all_methods()
                        if m.settings.block is not None and m.settings.block not in used))

  @property
  def needs_teachers(self) -> bool:
    return any(m.epoch.teachers for m in self.methods)

  @property
  def resamples(self) -> bool:
    """Whether the stack orders the training epochs itself (coded rows)."""
    return any(m.epoch.resamples for m in self.methods)

  def max_epoch_rows(self, num_train: int) -> int:
    """The most rows one training epoch holds: the training set, or more where
    a re-sampling method's epochs can be longer (`Epoch.max_rows`)."""
    return max([num_train] + [m.epoch.max_rows(self.config, num_train) for m in self.methods
                              if m.epoch.max_rows is not None])

  @property
  def epoch_hooks(self) -> tuple:
    """The stack's epoch hooks, unbuilt (`Epoch.hook`: EpochContext -> hook)."""
    return tuple(m.epoch.hook for m in self.methods if m.epoch.hook is not None)

  def with_seed(self, seed: int) -> "Plan":
    """The same plan for `seed` (the only key a sweep's runs differ in)."""
    return dataclasses.replace(self, config=with_seed(self.config, seed))

  def with_teachers_dir(self, root: str) -> "Plan":
    """The plan with `method.teachers.dir` set to `root` when it is empty."""
    if self.config.method.teachers.dir:
      return self
    config = self.config.copy_and_resolve_references()
    with config.unlocked():
      config.method.teachers.dir = os.path.abspath(os.path.expanduser(root))
    return dataclasses.replace(self, config=config)

  # -------------------------------------------------------------- parts

  def context(self, steps_per_epoch: int | None, num_classes: int | None) -> BuildContext:
    """What the methods' builders read."""
    teachers = (Teachers(self.config, num_classes, steps_per_epoch)
                if self.needs_teachers and num_classes is not None else None)
    return BuildContext(config=self.config, steps_per_epoch=steps_per_epoch,
                        num_classes=num_classes, names=self.names, teachers=teachers,
                        task=self.task)

  def _records(self, field: str) -> list:
    return [(m.name, getattr(m, field)) for m in self.methods]

  def model(self, num_classes: int):
    """The model, with the methods' own layers under params["method_layers"]."""
    layers = assemble(Step, self._records("step"), self.context(None, num_classes)).layers
    return self.task.build_model(self.config, num_classes, method_layers=layers)

  def optimizer(self, steps_per_epoch: int, num_classes: int | None = None):
    """The whole gradient transformation (`optim.make_optimizer`): the stack's
    combiner, edits by rank, schedule around the inner optimizer, post stage."""
    ctx = self.context(steps_per_epoch, num_classes)
    inner = optim.base_optimizer(self.config, steps_per_epoch)
    parts = []
    for m in self.methods:
      if m.optax.stage in ("combine", "edit"):
        parts += m.optax.transform(ctx)
    schedules = [m for m in self.methods if m.optax.stage == "schedule"]
    schedule = (schedules[0].optax.schedule(ctx, inner) if schedules
                else optim.joint_schedule(inner))
    scope = ZERO_GRAD_SCOPES[self.config.optimizer.zero_grad]
    parts.append(schedule if scope is None else zeroed_gradient_steps(schedule, scope))
    for m in self.methods:
      if m.optax.stage == "post":
        parts += m.optax.transform(ctx)
    return optim.make_optimizer(self.config, parts)

  def step_parts(self, steps_per_epoch: int, num_classes: int | None = None) -> StepParts:
    """The train step's parts: the stack's `Step` records assembled."""
    ctx = self.context(steps_per_epoch, num_classes)
    return StepParts(hooks=assemble(Step, self._records("step"), ctx),
                     per_loss_grads=any(m.optax.per_loss_grads for m in self.methods),
                     signals=stack.signals(), task=self.task)

  def evaluation(self, steps_per_epoch: int, num_classes: int | None = None) -> Evaluation:
    """The evaluation step's parts: the stack's `Evaluation` records assembled."""
    return assemble(Evaluation, self._records("evaluation"),
                    self.context(steps_per_epoch, num_classes))

  def probe_config(self, num_classes: int) -> ProbeConfig:
    return probe_config_from(self.config, self.task.probe_classes(num_classes))


def with_seed(config, seed: int):
  """A copy of `config` with `seed`."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.seed = int(seed)
  return out


# ------------------------------------------------------------------ teachers


def teacher_config(config, modality: str):
  """The config of modality `modality`'s teacher: this config with no method,
  that modality alone (the `unimodal_<m>` variant). It keeps the student's
  optimizer settings, so a student's `method.reference_optimizer` (already
  applied to `config`) is its teachers' too, as G2D's teacher.py trains with
  the student's config."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.method.name = "baseline"
    cfg.method.stack = ""
    cfg.method.teachers.dir = ""
    cfg.method.reference_optimizer = False
  return methods.only_modality(cfg, modality)


def teacher_dir(root: str, modality: str, seed: int) -> str:
  return os.path.join(root, f"{TEACHER_PREFIX}{modality}", f"seed_{seed}")


def _zeros_batch(config) -> dict:
  """Zeros of the model's input shapes (`input_shape` is what the model sees,
  after any frame cropping), for initialising a teacher's state."""
  return {m: jnp.zeros((1,) + tuple(config.modalities[m].input_shape), jnp.float32)
          for m in cc.modality_names(config)}


class Teachers:
  """The unimodal teachers of a student run (`BuildContext.teachers`)."""

  def __init__(self, config, num_classes: int, steps_per_epoch: int | None):
    self.config, self.num_classes = config, num_classes
    self.steps_per_epoch = steps_per_epoch or 1

  def plan(self, modality: str) -> Plan:
    return Plan.build(teacher_config(self.config, modality))

  def model(self, modality: str):
    return self.plan(modality).model(self.num_classes)

  def load(self, modality: str) -> dict:
    """{"params", "batch_stats"} of the teacher's best checkpoint (for `config.seed`)."""
    root = self.config.method.teachers.dir
    cc.require(bool(root), "method.teachers.dir", "the stack needs unimodal teachers: name the "
               "folder that holds them (the launchers train them there first)")
    plan = self.plan(modality)
    workdir = teacher_dir(root, modality, self.config.seed)
    like = create_train_state(plan.model(self.num_classes),
                              plan.optimizer(self.steps_per_epoch, self.num_classes),
                              _zeros_batch(plan.config), jax.random.PRNGKey(0),
                              plan.probe_config(self.num_classes))
    try:
      state, _ = checkpointing.restore_best(workdir, like)
    except FileNotFoundError as err:
      raise cc.ConfigError(
          f"method.teachers.dir: no teacher for {modality} (seed {self.config.seed}): {err}; "
          f"train it with the variant {TEACHER_PREFIX}{modality} into {workdir}, or let "
          "launch.train / launch.sweep do it") from None
    return {"params": state.params, "batch_stats": state.batch_stats}
