"""The method interface: everything the trainer needs to know of one method.

A method (OGM-GE, boost, PMR, ...) is one `Method` value, declared in its own
module under `asgml_jax/methods/` and listed once in the registry
(`asgml_jax/methods/__init__.py`). The trainer never names a method: the
step, the optimizer builder, the schema, the epoch hooks and the report ask
the methods of the run's stack (`asgml_jax/methods/stack.py`) for their parts.

Where a method acts, and in which order the parts of a stack run:

- **loss** (in the train step, inside the differentiated function): a
  `feature_gate` between the encoders and the fusion; a `mid_fusion_control`
  of the MMTM blocks between the encoders' stages; a `fused_loss` that
  replaces CE(fused); `unimodal_logits` that replace the logits of the
  unimodal CE terms; a `loss_term` added to the total; a `unimodal_weight`
  schedule for γ of SPEC §2. A stack may hold one of each but loss terms,
  which add up.
- **gradient stages** (one optax chain, SPEC §4.5), in this order:
  1. `combine`: builds the gradient from the per-loss gradients the step
     hands over (`loss_grads`); the step then runs one backward pass per loss.
     At most one per stack, and it comes first: it replaces the gradient.
  2. `edit`: edits the gradient (OGM-GE throttles the dominant encoder, boost
     pushes the weak one, ...), ordered by `rank` (lower first), all before
     weight decay and momentum, as the PyTorch code edits `.grad` before
     `optimizer.step()`.
  3. `schedule`: decides when (and with which gradient) each encoder updates,
     wrapped around the inner optimizer (weight decay, SGD momentum, lr). At
     most one; joint training (every encoder every step) when none.
  4. `post`: scales the finished updates (a per-encoder learning rate).
- **evaluation**: an `eval_logits` hook replaces the logits that validation
  and test read, for a method that trains (and predicts with) other logits
  than the model's heads.
- **epoch hooks**: values computed between epochs on the host (prototypes,
  learning-rate factors, loss weights) and written into the optimizer state.
- **signals**: per-modality values a transformation keeps in its state,
  logged every window under a prefix and plotted by the report; loss hooks
  log their own metrics.

A task type other than classification (e.g. segmentation) plugs in through
the same loss hooks: they see the model's whole output dict, so a method may
read whatever heads that model returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

STAGES = ("combine", "edit", "schedule", "post")


class BuildContext(NamedTuple):
  """What a method may read when its parts are built (once per run, on the host)."""
  config: Any                # the validated, effective ml_collections config
  steps_per_epoch: int
  num_classes: int | None    # None where the builder was not told (e.g. a bare optimizer)
  names: tuple[str, ...]     # modalities, sorted

  @property
  def block(self):
    """Shortcut for config.method."""
    return self.config.method


class StepContext(NamedTuple):
  """What a loss hook may read inside the jitted train step (traced values)."""
  model: Any
  batch: Mapping[str, Any]
  labels: Any
  names: tuple[str, ...]
  state: Any                 # the TrainState before the step (opt_state, step, ...)
  dropout_key: Any


class SubStepContext(NamedTuple):
  """What a `sub_steps` method receives inside the jitted train step.

  forward(params) -> (outputs, new batch_stats): the model in training mode
    with this step's dropout key (call it once: BatchNorm statistics move);
  refresh_probes(outputs) -> the probe state after this step's refresh;
  update(grads, opt_state, params, outputs, unimodal_losses, probe_state,
    **more) -> (updates, opt_state): `tx.update` with the step's usual extra
    args (computed from `outputs`, `grads`, the losses) and `more`.
  """
  step: StepContext
  params: Any
  opt_state: Any
  forward: Callable
  refresh_probes: Callable
  update: Callable


class SubStepResult(NamedTuple):
  """A `sub_steps` method's step: the new parameters and states, and what the
  step logs and checks (loss, fused loss, unimodal losses {m}, the forward's
  outputs, the sum of the sub-steps' gradients for the health check and the
  gradient norms, extras as a loss hook's)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  probe_state: Any
  loss: Any
  fused_loss: Any
  unimodal: Mapping[str, Any]
  outputs: Mapping[str, Any]
  grads: Any
  extras: Mapping[str, Any]


class Signal(NamedTuple):
  """A per-modality value a transformation keeps in its optimizer state.

  field: the state field ({modality: scalar}); prefix: the TensorBoard tag is
  f"{prefix}_{modality}"; title: the report's plot title (None: logged only).
  """
  field: str
  prefix: str
  title: str | None = None


class Plot(NamedTuple):
  """A step metric (logged by a loss hook) the report plots: tag prefix, title."""
  prefix: str
  title: str


class Requirement(NamedTuple):
  """A config value the method cannot run without (checked, never forced)."""
  key: str        # dotted, under config (e.g. "model.unimodal_heads")
  value: Any
  why: str


# Loss-hook results: (value, extras); extras may hold "metrics" (logged) and
# "tx_args" (extra args for `tx.update`).
LossExtras = Mapping[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Method:
  """One method. Every field but `name` and `summary` is optional.

  Config:
    block: the method's group under config.method (methods of one module may
      share one, e.g. OGM and OGM-GE); `defaults()` returns its keys.
    check_block(config): value checks that hold whether or not the method runs
      (a typo is an error in any run).
    check(config): checks for a run that uses the method.
    requires: config values the method needs (refused otherwise).
    preset(config): the settings of the variant of the method's name
      (`configs/<dataset>.py:<name>`), e.g. the unimodal weight its reference uses.
    variants: further named presets of this method ({variant: preset(config)}).
    seed_code: (dotted key, value) pairs forced by protocol seed_code (SPEC §10).
    reference: (dotted key, value) pairs forced by protocol reference: the
      mechanics its public repository uses (loss terms, heads, modulated
      leaves), not its hyperparameters; reference_fn(config): the same for
      settings that depend on the config (e.g. its modalities). The module
      docstring names the repository, file and function.
    drop_modality(config, name): forget `name` in the block (unimodal variants).
  Parts (see the module docstring for when each runs):
    stage, rank, transform(ctx) -> [optax transformations] (combine/edit/post),
    schedule(ctx, inner) -> transformation (schedule);
    feature_gate(ctx) -> (StepContext -> gate for `model.apply`),
    mid_fusion_control(ctx) -> (StepContext -> control of the MMTM blocks'
      excitations in training, `models/mid_fusion.py`; Greedy's curation),
    fused_loss(ctx) -> ((StepContext, variables, outputs) -> (loss, extras)),
    unimodal_logits(ctx) -> ((StepContext, params, outputs) -> {m: logits}),
    loss_term(ctx) -> ((StepContext, params, outputs) -> (term, extras)),
    unimodal_weight(ctx) -> ((step, base weight) -> weight);
    sub_steps(ctx) -> (SubStepContext -> SubStepResult): a method that makes
      several optimizer updates per batch (MLA: one per modality, through a
      shared head) runs them itself, each through the run's whole optax chain
      (`SubStepContext.update`); it replaces the step's loss and gradient, so
      it stacks only with methods made of transformations;
    layers(config, num_classes) -> a Flax module: the method's own trainable
      layers (IPRM's mixup heads), created with the model under
      params["method_layers"][<name>] (so the optimizer, checkpoints, sweeps and
      sharding treat them as any parameter) by one call on the features dict
      {m: (B, D)} at init; the method's hooks apply them
      (`module.apply({"params": params["method_layers"][<name>]}, ...)`);
    eval_logits(ctx) -> ((state, batch, outputs) -> outputs with the "logits" and
      "unimodal_logits" evaluation reads), for a method whose predictions are not
      the model's plain heads (MMCosine's cosine logits);
    epoch_hook(setup) -> object with prepare(state, data_key) and
      epoch_end(state, validation, data_key, next_epoch), each returning
      {opt-state field: value} (or {}).
  Logging and composition:
    signals, plots, label(config dict) -> run label (default: the name),
    teachers: True if the method needs unimodal teachers trained first
      (`asgml_jax/teachers.py`: the launchers train them before the run);
    resamples: True if its epoch hook orders the epochs itself (`epoch_rows`):
      the order's entries carry row codes, which reach the train step as
      batch["row_code"] (`input_pipeline.split_row_codes`; valuation);
    excludes: {other method: why the two cannot stack},
    alone: True if the method stacks with nothing (why in `summary`).
  """
  name: str
  summary: str
  block: str | None = None
  defaults: Callable[[], Any] | None = None
  check_block: Callable[[Any], None] | None = None
  check: Callable[[Any], None] | None = None
  requires: Sequence[Requirement] = ()
  preset: Callable[[Any], None] | None = None
  variants: Mapping[str, Callable[[Any], None]] = dataclasses.field(default_factory=dict)
  seed_code: Sequence[tuple[str, Any]] = ()
  reference: Sequence[tuple[str, Any]] = ()
  reference_fn: Callable[[Any], None] | None = None
  drop_modality: Callable[[Any, str], None] | None = None
  stage: str | None = None
  rank: int = 0
  transform: Callable[[BuildContext], list] | None = None
  schedule: Callable[[BuildContext, Any], Any] | None = None
  feature_gate: Callable[[BuildContext], Callable] | None = None
  layers: Callable[[Any, int], Any] | None = None
  mid_fusion_control: Callable[[BuildContext], Callable] | None = None
  fused_loss: Callable[[BuildContext], Callable] | None = None
  unimodal_logits: Callable[[BuildContext], Callable] | None = None
  loss_term: Callable[[BuildContext], Callable] | None = None
  unimodal_weight: Callable[[BuildContext], Callable] | None = None
  eval_logits: Callable[[BuildContext], Callable] | None = None
  sub_steps: Callable[[BuildContext], Callable] | None = None
  epoch_hook: Callable[[Any], Any] | None = None
  signals: Sequence[Signal] = ()
  plots: Sequence[Plot] = ()
  label: Callable[[Mapping], str] | None = None
  teachers: bool = False
  resamples: bool = False
  excludes: Mapping[str, str] = dataclasses.field(default_factory=dict)
  alone: bool = False

  def __post_init__(self):
    if self.stage is not None and self.stage not in STAGES:
      raise ValueError(f"method {self.name}: stage {self.stage!r} is not one of {STAGES}")
    if self.stage == "schedule" and self.schedule is None:
      raise ValueError(f"method {self.name}: a schedule-stage method needs `schedule`")
    if self.stage in ("combine", "edit", "post") and self.transform is None:
      raise ValueError(f"method {self.name}: a {self.stage}-stage method needs `transform`")
    if self.block is not None and self.defaults is None:
      raise ValueError(f"method {self.name}: block {self.block!r} needs `defaults`")

  @property
  def per_loss_grads(self) -> bool:
    """A combiner needs each loss's own gradient."""
    return self.stage == "combine"

  def run_label(self, config: Mapping) -> str:
    return self.label(config) if self.label is not None else self.name


def merge_extras(into: dict, extras: LossExtras | None) -> dict:
  """Adds a loss hook's metrics and tx args to the step's."""
  for kind, values in (extras or {}).items():
    into.setdefault(kind, {}).update(values)
  return into
