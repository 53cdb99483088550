"""The method interface: what the plan and the training core know of one method.

A method (OGM-GE, boost, PMR, ...) is one `Method` value, declared in its own
module under `asgml_jax/methods/` and listed once in the registry
(`asgml_jax/methods/__init__.py`). A `Method` is a name, a summary and a few
grouped records, each optional:

- `Settings`: its config group under `config.method`, checks, requirements,
  the presets of its variants;
- `Protocols`: what `method.protocol=seed_code` / `reference` force;
- `Optax`: its optax transformations and where they go in the chain;
- `Step`: hooks that run inside the jitted train step (the loss side) and
  the method's own trainable layers;
- `Evaluation`: hooks of the evaluation step;
- `Epoch`: between-epoch work on the host, and the data it needs first;
- `Logging`: what of its state is logged and plotted, and the run's label;
- `Composition`: methods it cannot stack with.

Where a method acts, and in which order the parts of a stack run:

- **step** (in the train step, inside the differentiated function): a
  `feature_gate` between the encoders and the fusion; a `mid_fusion_control`
  of the MMTM blocks between the encoders' stages; a `fused_loss` that
  replaces the task loss of the fused head; `unimodal_logits` that replace the
  logits of the unimodal terms; a `loss_term` added to the total; a
  `unimodal_weight` schedule of γ (the unimodal-loss weight).
- **optax** (one chain), in this order:
  1. `combine`: builds the gradient from the per-loss gradients the step
     hands over (`loss_grads`); the step then runs one backward pass per loss.
  2. `edit`: edits the gradient (OGM-GE throttles the dominant encoder, boost
     pushes the weak one, ...), ordered by `rank` (lower first), all before
     weight decay and momentum, as the PyTorch code edits `.grad` before
     `optimizer.step()`.
  3. `schedule`: decides when (and with which gradient) each encoder updates,
     wrapped around the inner optimizer (weight decay, SGD momentum, lr).
     Joint training (every encoder every step) when none.
  4. `post`: scales the finished updates (a per-encoder learning rate).
- **evaluation**: an `eval_logits` hook replaces the logits that validation
  and test read.
- **epoch**: values computed between epochs on the host (prototypes,
  learning-rate factors, loss weights), written into the optimizer state.

Who may own what is read off the records: a hook field declared with
`_one(why)` may be held by one method of a stack (two are refused, with
`why`), one declared with `_each()` by any number (their results add up or
run in stack order). The plan assembles a stack's records field by field
(`assemble`), so a new kind of hook is one field here plus its use where it
runs; nothing in between names it.

This module imports nothing of the project: the methods, the training core
and the plan all build on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

STAGES = ("combine", "edit", "schedule", "post")

# The epoch-hook contract: a hook returns {opt-state field: value}, or new
# parameters of that seed under this key (Diagnosing & Re-learning).
PARAMS = "params"
# A re-sampling method's (`Epoch.resamples`) row codes reach the step as this
# batch key (the training core's input pipeline decodes the epoch's order).
ROW_CODE = "row_code"
# An order entry that is no row: a batch of them is a skipped step (`Epoch`).
PAD_ENTRY = -1


# ---------------------------------------------------------------------------
# Contexts: what a method's parts may read, and when.


class BuildContext(NamedTuple):
  """What a method may read when its parts are built (once per run, on the host).

  teachers: the unimodal teachers of a two-stage method (`Epoch.teachers`):
    `teachers.model(m)` is modality m's teacher model, `teachers.load(m)` its
    best-by-validation variables {"params", "batch_stats"}; None for a stack
    that needs none.
  task: the run's task (`asgml_jax/tasks/`): its losses and scores.
  """
  config: Any                # the validated, effective ml_collections config
  steps_per_epoch: int | None
  num_classes: int | None    # None where the builder was not told (e.g. a bare optimizer)
  names: tuple[str, ...]     # modalities, sorted
  teachers: Any = None
  task: Any = None

  @property
  def block(self):
    """Shortcut for config.method."""
    return self.config.method


class StepContext(NamedTuple):
  """What a step hook may read inside the jitted train step (traced values)."""
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
  gradient norms, extras as a step hook's)."""
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


class EpochContext(NamedTuple):
  """What an epoch hook receives when it is built (once per run, on the host).

  The training core fills it in; a hook never imports the core.
  config, names, num_classes, steps_per_epoch, eval_batch_size, model,
  frame_sizes ({m: frame size} of modalities augmented on the device);
  data: the run's splits (`.train`, `.eval_splits`, `.eval_sizes`,
    `.num_train`, `.on_device`);
  log(line): prints a line, prefixed with "seed <s>: " while a sweep's hook
    runs for seed s;
  feature_fn(variables, batch) -> {m: (B, D)}: the encoders in inference
    mode (jitted, device augmentation applied);
  split_features(variables, arrays, count) -> ({m: (count, D)}, labels):
    `feature_fn` over the first `count` rows of a split, in fixed-size batches;
  fixed_size_batches(arrays, count, size): yields (rows on the device, real
    rows), the last batch padded by repeating a row (one compiled shape);
  take_rows(arrays, idx): rows `idx` of every array, on the device;
  train_batches(data_key, epoch, count): the first `count` training batches
    of that epoch's order, as the train step would see them;
  lr_at(step): the learning rate of the run's schedule at a global step.
  """
  config: Any
  names: tuple[str, ...]
  num_classes: int
  steps_per_epoch: int
  eval_batch_size: int
  model: Any
  frame_sizes: Mapping[str, int]
  data: Any
  log: Callable[[str], None]
  feature_fn: Callable
  split_features: Callable
  fixed_size_batches: Callable
  take_rows: Callable
  train_batches: Callable
  lr_at: Callable


# ---------------------------------------------------------------------------
# Small declarations used inside the records.


class Signal(NamedTuple):
  """A per-modality value a transformation keeps in its optimizer state.

  field: the state field ({modality: scalar}); prefix: the TensorBoard tag is
  f"{prefix}_{modality}"; title: the report's plot title (None: logged only).
  """
  field: str
  prefix: str
  title: str | None = None


class Plot(NamedTuple):
  """A step metric (logged by a step hook) the report plots: tag prefix, title."""
  prefix: str
  title: str


class Requirement(NamedTuple):
  """A config value the method cannot run without (checked, never forced)."""
  key: str        # dotted, under config (e.g. "model.unimodal_heads")
  value: Any
  why: str


# Step-hook results: (value, extras); extras may hold "metrics" (logged) and
# "tx_args" (extra args for `tx.update`).
LossExtras = Mapping[str, Mapping[str, Any]]


def merge_extras(into: dict, extras: LossExtras | None) -> dict:
  """Adds a step hook's metrics and tx args to the step's."""
  for kind, values in (extras or {}).items():
    into.setdefault(kind, {}).update(values)
  return into


# ---------------------------------------------------------------------------
# The records.


def _one(why: str, *, loss: bool = False, default: Any = None):
  """A part at most one method of a stack may have; `why` is the refusal's
  reason. loss: the part is a piece of the step's loss (a `sub_steps` method,
  which computes its own loss, runs none of them)."""
  return dataclasses.field(default=default, metadata={"owners": "one", "why": why,
                                                      "loss": loss})


def _each(*, loss: bool = False):
  """A part any number of the stack's methods may have (in stack order)."""
  return dataclasses.field(default=None, metadata={"owners": "each", "loss": loss})


def _present(value) -> bool:
  return value is not None and value is not False


class _Record:
  """Shared by the records: the single-owner rule, read off the fields."""

  def conflict_with(self, other) -> str | None:
    """Why this record and `other` (of the same type, another method's) cannot
    be in one stack, or None."""
    for f in dataclasses.fields(self):
      if (f.metadata.get("owners") == "one" and _present(getattr(self, f.name))
          and _present(getattr(other, f.name))):
        return f.metadata["why"]
    return None

  def loss_parts(self) -> tuple[str, ...]:
    """The names of the loss parts this record has."""
    return tuple(f.name for f in dataclasses.fields(self)
                 if f.metadata.get("loss") and _present(getattr(self, f.name)))


@dataclasses.dataclass(frozen=True)
class Settings(_Record):
  """The method's config.

  block: its group under config.method (methods of one module may share one,
    e.g. OGM and OGM-GE); `defaults()` returns its keys.
  check_block(config): value checks that hold whether or not the method runs
    (a typo is an error in any run).
  check(config): checks for a run that uses the method.
  requires: config values the method needs (refused otherwise).
  preset(config): the settings of the variant of the method's name
    (`configs/<dataset>.py:<name>`), e.g. the unimodal weight its reference uses.
  variants: further named presets of this method ({variant: preset(config)}).
  drop_modality(config, name): forget `name` in the block (unimodal variants).
  """
  block: str | None = None
  defaults: Callable[[], Any] | None = None
  check_block: Callable[[Any], None] | None = None
  check: Callable[[Any], None] | None = None
  requires: Sequence[Requirement] = ()
  preset: Callable[[Any], None] | None = None
  variants: Mapping[str, Callable[[Any], None]] = dataclasses.field(default_factory=dict)
  drop_modality: Callable[[Any, str], None] | None = None

  def __post_init__(self):
    if self.block is not None and self.defaults is None:
      raise ValueError(f"block {self.block!r} needs `defaults`")


@dataclasses.dataclass(frozen=True)
class ReferenceOptimizer:
  """The optimizer, learning-rate schedule, epochs and batch size a reference
  script trains one dataset with (`method.reference_optimizer=True` sets
  them; `asgml_jax/optim.py` builds them).

  source: where the values are written (repository, file:line).
  kind: sgd (PyTorch's SGD, momentum, weight decay added to the gradient) |
    adam (PyTorch's Adam: weight decay added to the gradient) | adamw
    (PyTorch's AdamW: decoupled decay); Adam's betas and eps are PyTorch's
    defaults (0.9, 0.999, 1e-8) in every reference here.
  lr_milestones: ((epoch, factor), ...): from that (0-based) epoch on the
    learning rate is multiplied by factor. PyTorch's StepLR and MultiStepLR
    reduce to this (`steplr_milestones`), including where a script calls
    `scheduler.step()` before an epoch's batches, which moves every decay one
    epoch earlier; () is a constant learning rate.
  """
  source: str
  kind: str
  learning_rate: float
  weight_decay: float
  num_epochs: int
  batch_size: int
  lr_milestones: tuple[tuple[int, float], ...] = ()
  momentum: float = 0.9

  @property
  def repository(self) -> str:
    return self.source.split(" ", 1)[0]

  def settings(self) -> tuple[tuple[str, Any], ...]:
    """(dotted key, value) pairs that set it on a config."""
    out = [("optimizer.kind", self.kind), ("optimizer.learning_rate", self.learning_rate),
           ("optimizer.weight_decay", self.weight_decay), ("optimizer.schedule", "piecewise"),
           ("optimizer.lr_piecewise", ",".join(f"{e}:{f:g}" for e, f in self.lr_milestones)),
           ("num_epochs", self.num_epochs), ("batch_size", self.batch_size)]
    if self.kind == "sgd":
      out.append(("optimizer.momentum", self.momentum))
    return tuple(out)


def steplr_milestones(step_size: int, gamma: float, num_epochs: int, *,
                      stepped_before_epoch: bool = False) -> tuple[tuple[int, float], ...]:
  """PyTorch's StepLR(step_size, gamma) over `num_epochs` epochs as milestones.

  StepLR's lr after k calls of `scheduler.step()` is lr0·gamma^(k // step_size).
  A script that steps after each epoch trains epoch e after e calls (decays
  from epoch step_size on); one that steps before the epoch's batches trains
  it after e + 1 calls (decays from epoch step_size − 1 on)."""
  shift = 1 if stepped_before_epoch else 0
  return tuple((k - shift, gamma) for k in range(step_size, num_epochs + shift, step_size)
               if k - shift < num_epochs)


@dataclasses.dataclass(frozen=True)
class Protocols(_Record):
  """What the protocols force (dotted key, value).

  seed_code: forced by protocol seed_code (the seeds' PyTorch behaviour).
  reference: forced by protocol reference: the mechanics its public
    repository uses (loss terms, heads, modulated leaves), not its
    hyperparameters; reference_fn(config): the same for settings that depend
    on the config (e.g. its modalities). The module docstring names the
    repository, file and function.
  optimizers: {dataset name: ReferenceOptimizer} of the reference's scripts
    (what `method.reference_optimizer=True` sets), or config -> that mapping
    when it depends on the config (LFM's two reference codes).
  """
  seed_code: Sequence[tuple[str, Any]] = ()
  reference: Sequence[tuple[str, Any]] = ()
  reference_fn: Callable[[Any], None] | None = None
  optimizers: Mapping[str, ReferenceOptimizer] | Callable[[Any], Mapping] | None = None

  def optimizers_for(self, config) -> Mapping[str, ReferenceOptimizer] | None:
    if callable(self.optimizers):
      return self.optimizers(config)
    return self.optimizers


@dataclasses.dataclass(frozen=True)
class Optax(_Record):
  """The method's optax part: stage, rank, transform(ctx) -> [transformations]
  (combine/edit/post), or schedule(ctx, inner) -> one transformation wrapping
  the inner optimizer (schedule)."""
  stage: str | None = None
  rank: int = 0
  transform: Callable[[BuildContext], list] | None = None
  schedule: Callable[[BuildContext, Any], Any] | None = None

  # Stages a stack takes one of, and why.
  ONE_PER_STACK = {
      "combine": "both build the gradient from the per-loss gradients; a stack takes one "
                 "combiner",
      "schedule": "both decide when each encoder updates; a stack takes one update schedule",
  }

  def __post_init__(self):
    if self.stage is not None and self.stage not in STAGES:
      raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
    if self.stage == "schedule" and self.schedule is None:
      raise ValueError("a schedule-stage method needs `schedule`")
    if self.stage in ("combine", "edit", "post") and self.transform is None:
      raise ValueError(f"a {self.stage}-stage method needs `transform`")

  @property
  def per_loss_grads(self) -> bool:
    """A combiner needs each loss's own gradient."""
    return self.stage == "combine"

  def conflict_with(self, other: "Optax") -> str | None:
    if self.stage is not None and self.stage == other.stage:
      return self.ONE_PER_STACK.get(self.stage)
    return None


@dataclasses.dataclass(frozen=True)
class Step(_Record):
  """Hooks of the jitted train step; each field is a builder `ctx -> hook`
  (ctx a `BuildContext`), called once per run.

  feature_gate: -> (StepContext -> gate for `model.apply`).
  mid_fusion_control: -> (StepContext -> control of the MMTM blocks'
    excitations in training, `models/mid_fusion.py`; Greedy's curation).
  fused_loss: -> ((StepContext, variables, outputs) -> (loss, extras)).
  unimodal_logits: -> ((StepContext, params, outputs) -> {m: logits}).
  loss_term: -> ((StepContext, params, outputs) -> (term, extras)).
  unimodal_weight: -> ((step, base weight) -> weight).
  sub_steps: -> (SubStepContext -> SubStepResult): a method that makes
    several optimizer updates per batch (MLA: one per modality, through a
    shared head) runs them itself, each through the run's whole optax chain
    (`SubStepContext.update`); it replaces the step's loss and gradient, so
    it stacks only with methods made of transformations.
  layers: -> a Flax module: the method's own trainable layers (IPRM's mixup
    heads), created with the model under params["method_layers"][<name>] (so
    the optimizer, checkpoints, sweeps and sharding treat them as any
    parameter) by one call on the features dict {m: (B, D)} at init; the
    method's hooks apply them
    (`module.apply({"params": params["method_layers"][<name>]}, ...)`).

  As assembled for a stack (`assemble`), each field holds the built hook
  (single-owner fields; None when no method has it) or the tuple of the
  built hooks (`loss_term`, `layers`: (name, module) pairs).
  """
  feature_gate: Callable | None = _one(
      "both gate the features between the encoders and the fusion", loss=True)
  mid_fusion_control: Callable | None = _one(
      "both control the MMTM blocks between the encoders")
  fused_loss: Callable | None = _one("both replace the fused loss", loss=True)
  unimodal_logits: Callable | None = _one(
      "both replace the logits of the unimodal losses", loss=True)
  loss_term: Callable | None = _each(loss=True)
  unimodal_weight: Callable | None = _one("both schedule the unimodal-loss weight", loss=True)
  sub_steps: Callable | None = _one("both run their own updates within a step")
  layers: Callable | None = _each()


@dataclasses.dataclass(frozen=True)
class Evaluation(_Record):
  """Hooks of the evaluation step (builders `ctx -> hook`, as `Step`'s).

  eval_logits: -> ((state, batch, outputs) -> outputs with the "logits" and
    "unimodal_logits" evaluation reads), for a method whose predictions are
    not the model's plain heads (MMCosine's cosine logits).
  """
  eval_logits: Callable | None = _one("both replace the logits evaluation predicts with")


@dataclasses.dataclass(frozen=True)
class Epoch(_Record):
  """Between-epoch work.

  hook(EpochContext) -> an object with prepare(state, data_key) and
    epoch_end(state, validation, data_key, next_epoch), each returning
    {opt-state field: value} (or {}; new parameters under `PARAMS`).
  resamples: the hook orders the epochs itself (`epoch_rows(state, perm)`):
    the order's entries carry row codes (row + num_train · code), which reach
    the train step as batch[ROW_CODE] (valuation).
    An order may end in padding entries (`PAD_ENTRY`): each batch of them is a
    skipped step (the state is unchanged but for its step count, no metrics),
    so that epochs of different lengths keep one compiled step and the
    schedule's epochs (valuation's pool-length epochs).
  max_rows(config, num_train) -> the most rows one epoch trains (the loop's
    steps per epoch are that // batch_size; default num_train), for a
    re-sampling method whose epochs can be longer than the training set.
  teachers: the method needs unimodal teachers trained first (UMT): the
    launchers train them before the run, and `BuildContext.teachers` reads them.
  """
  hook: Callable[[EpochContext], Any] | None = _each()
  resamples: bool = _one("both re-sample the training epochs", default=False)
  max_rows: Callable[[Any, int], int] | None = None
  teachers: bool = False


@dataclasses.dataclass(frozen=True)
class Logging(_Record):
  """signals: state fields logged every window (and plotted when titled);
  plots: step metrics its hooks log, to plot; label(config dict) -> the run's
  label (default: the method's name)."""
  signals: Sequence[Signal] = ()
  plots: Sequence[Plot] = ()
  label: Callable[[Mapping], str] | None = None

  def conflict_with(self, other: "Logging") -> str | None:
    shared = {s.field for s in self.signals} & {s.field for s in other.signals}
    if shared:
      return f"both keep {sorted(shared)[0]!r} in the optimizer state"
    return None


@dataclasses.dataclass(frozen=True)
class Composition(_Record):
  """excludes: {other method: why the two cannot stack}; alone: the method
  stacks with nothing (why in the method's summary)."""
  excludes: Mapping[str, str] = dataclasses.field(default_factory=dict)
  alone: bool = False


# The records of a method, by field name (the order the plan reads them in).
RECORDS = {"settings": Settings, "protocols": Protocols, "optax": Optax, "step": Step,
           "evaluation": Evaluation, "epoch": Epoch, "logging": Logging,
           "composition": Composition}


@dataclasses.dataclass(frozen=True)
class Method:
  """One method: a name, a one-line summary and its records (each optional)."""
  name: str
  summary: str
  settings: Settings = Settings()
  protocols: Protocols = Protocols()
  optax: Optax = Optax()
  step: Step = Step()
  evaluation: Evaluation = Evaluation()
  epoch: Epoch = Epoch()
  logging: Logging = Logging()
  composition: Composition = Composition()

  def __post_init__(self):
    for field, kind in RECORDS.items():
      if not isinstance(getattr(self, field), kind):
        raise TypeError(f"method {self.name}: {field} must be a {kind.__name__}")

  def run_label(self, config: Mapping) -> str:
    label = self.logging.label
    return label(config) if label is not None else self.name

  def conflict_with(self, other: "Method") -> str | None:
    """Why this method and `other` cannot stack, or None if they can."""
    for x, y in ((self, other), (other, self)):
      if x.composition.alone:
        return f"{x.name} stacks with no other method ({x.summary})"
      if y.name in x.composition.excludes:
        return x.composition.excludes[y.name]
    for x, y in ((self, other), (other, self)):
      if x.step.sub_steps is None:
        continue
      replaced = y.optax.stage in Optax.ONE_PER_STACK
      if replaced or y.step.loss_parts():
        return (f"{x.name} computes each update's loss and gradient itself, and decides which "
                f"encoder each update trains; {y.name}'s "
                + ("schedule or per-loss gradients" if replaced else "loss parts")
                + " would not run")
    for field in ("optax", "step", "evaluation", "epoch"):
      why = getattr(self, field).conflict_with(getattr(other, field))
      if why:
        return why
    required = {r.key: r.value for r in self.settings.requires}
    for r in other.settings.requires:
      if r.key in required and required[r.key] != r.value:
        return f"{self.name} needs {r.key}={required[r.key]!r}, {other.name} needs {r.value!r}"
    return self.logging.conflict_with(other.logging)


def assemble(record_type, records: Sequence, ctx) -> Any:
  """One record of `record_type` for a stack: every hook field built from its
  methods' builders (`builder(ctx)`, in stack order); a single-owner field
  holds the one built hook (or None), an `_each()` field the tuple of them.
  `layers` pairs each module with its method's name (`records` are
  (method name, record) pairs)."""
  out = {}
  for f in dataclasses.fields(record_type):
    built = [(name, getattr(r, f.name)(ctx)) for name, r in records
             if getattr(r, f.name) is not None]
    if f.metadata.get("owners") == "one":
      out[f.name] = built[0][1] if built else None
    elif f.name == "layers":
      out[f.name] = tuple(built)
    else:
      out[f.name] = tuple(b for _, b in built)
  return record_type(**out)


# The `Step` record of a stack without methods: no hook, no loss term.
NO_STEP_HOOKS = assemble(Step, (), None)


class StepParts(NamedTuple):
  """What the train step runs for a stack (built once per run, static under jit).

  hooks: the stack's `Step` records assembled (`assemble`): each
    single-owner field the one built hook (or None), `loss_term` the tuple of them.
  per_loss_grads: one backward pass per loss (a combiner is in the stack).
  signals: the state signals to log.
  task: the run's task (`asgml_jax/tasks/`); None: classification.
  """
  hooks: Step = NO_STEP_HOOKS
  per_loss_grads: bool = False
  signals: tuple[Signal, ...] = ()
  task: Any = None

