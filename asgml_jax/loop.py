"""The epoch loop, for S >= 1 seeds of one plan: a single run is S = 1.

`train_seeds(plan, seeds, workdirs)` checks and locks every seed's run
directory (before anything slow), loads the data once, restores each seed's
newest intact checkpoint, and trains all seeds in one compiled program
(`programs.SeedAxis`: no seed axis for one seed; vmap or unroll for several),
then evaluates, runs the stack's epoch hooks and checkpoints each seed every
epoch. Everything numeric happens in the jitted step; the loop only sequences
it: metrics are fetched every `log_every_steps` (the one host sync of the
loop, dispatched before the next step so the device never waits).

What differs per seed is exactly what differs between separate runs: the init
key (`run_keys(seed)`), hence params, probes and the state rng that dropout
and frame augmentation fold the step into; the noise keys of the methods'
transformations, which `tx.init` seeds from `config.seed` (each seed's
optimizer state is initialised by its own `tx`; the update is the same
function for every seed); the data order (each seed's epoch permutation from
its own data key indexes the one device-resident copy of the split; host-held
data is gathered per seed by the host).

Resuming: every seed restarts from the newest epoch all of them have saved
(seeds are saved one after another, so a kill can land between two of them);
a seed already past it re-trains that epoch, deterministically, and its saved
checkpoint is kept rather than rewritten.

A seed whose loss or gradients go non-finite is frozen by the step's guard
(`state.health`), stops being checkpointed and gets a summary.json naming the
step and the culprit; the others train on, and the loop stops once every
seed has failed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asgml_jax import (augment, compile_cache, distributed, input_pipeline, interrupts,
                       pretrained, programs, run_dir)
from asgml_jax.checkpointing import CheckpointError
from asgml_jax.config_checks import ConfigError
from asgml_jax.epoch_hooks import EpochHooks
from asgml_jax.plan import Plan
from asgml_jax.state import create_train_state


class NonFiniteError(FloatingPointError):
  """The loss or a gradient became NaN/inf; names the step and the culprit."""


def nonfinite_message(health, names, steps_per_epoch: int) -> str | None:
  """What `state.health` ([first bad step, code]) says went non-finite, or None."""
  bad_step, code = (int(x) for x in health)
  if bad_step < 0:
    return None
  what = ("the loss" if code == 0 else
          f"the gradient of encoder '{names[code - 1]}'" if code <= len(names) else
          "the gradient of the fusion/heads")
  return (f"non-finite {what} at step {bad_step} (epoch {bad_step // steps_per_epoch + 1}); "
          f"stopped; checkpoints hold only the epochs before it")


@dataclasses.dataclass
class RunSetup:
  """What a run (or every seed of a sweep) shares: the plan, its data, model,
  optimizer, step and evaluation parts, probes."""
  plan: Plan
  data: input_pipeline.LoadedData
  steps_per_epoch: int
  model: Any
  tx: Any
  parts: Any                # the train step's `StepParts`
  probe_cfg: Any
  example: dict
  frame_sizes: dict
  eval_logits: Any = None   # the stack's evaluation hook

  @property
  def config(self):
    return self.plan.config

  @property
  def names(self) -> tuple[str, ...]:
    return self.plan.names

  @property
  def epoch_hooks(self) -> tuple:
    return self.plan.epoch_hooks

  @property
  def eval_batch_size(self) -> int:
    """The eval batch the data was padded for (config.eval_batch_size, capped
    at the largest eval split: `input_pipeline.effective_eval_batch_size`)."""
    if self.data is not None and self.data.eval_batch_size:
      return self.data.eval_batch_size
    return self.config.eval_batch_size


def probe_schedule_note(config, steps_per_epoch: int) -> str | None:
  """A note when the probes are trained and scored less than once per epoch:
  their scores then sit near chance for the first epochs while methods that
  read them (ASGML's probe-guided ones) already act on them. Not changed
  automatically: the probe schedule is part of a method's published setting."""
  freq = config.probes.eval_freq
  if freq <= steps_per_epoch:
    return None
  return (f"note: the probes train {config.probes.train_steps} steps every "
          f"probes.eval_freq={freq} steps, less than once per epoch of {steps_per_epoch} "
          "steps: their scores stay near chance for the first epochs, and the probe-guided "
          f"methods act on that; consider "
          f"--config.probes.eval_freq={max(1, steps_per_epoch // 2)}")


def setup_run(plan: Plan) -> RunSetup:
  """Loads the plan's data (onto the device where it fits) and builds its parts."""
  config = plan.config
  data = input_pipeline.load(config)
  steps_per_epoch = plan.max_epoch_rows(data.num_train) // config.batch_size
  note = probe_schedule_note(config, steps_per_epoch)
  if note:
    run_dir.log(note)
  frame_sizes = augment.frame_modalities(config)
  example = augment.eval_inputs(
      jax.tree.map(lambda x: jnp.asarray(x[:config.batch_size]), data.train), frame_sizes)
  return RunSetup(plan=plan, data=data, steps_per_epoch=steps_per_epoch,
                  model=plan.model(data.num_classes),
                  tx=plan.optimizer(steps_per_epoch, data.num_classes),
                  parts=plan.step_parts(steps_per_epoch, data.num_classes),
                  probe_cfg=plan.probe_config(data.num_classes), example=example,
                  frame_sizes=frame_sizes,
                  eval_logits=plan.evaluation(steps_per_epoch, data.num_classes).eval_logits)


# What one parameter costs in training: itself, its gradient, its update, and
# the optimizer's slots (SGD momentum: 1; Adam: 2).
_COPIES_PER_PARAMETER = {"sgd": 4, "adam": 5, "adamw": 5}


def check_model_memory(setup: RunSetup, num_seeds: int) -> None:
  """Refuses, in one line, a model whose parameters with their gradients and
  optimizer state (per seed) exceed the free memory, before anything is
  allocated (a feature_dim of 1e6 was killed by the kernel without a word).
  Activations are not counted: they are known only after compiling."""
  free = input_pipeline.free_device_bytes()
  if free is None:
    return
  shapes = jax.eval_shape(
      lambda key: setup.model.init({"params": key, "dropout": key}, setup.example, train=False),
      jax.random.PRNGKey(0))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  need = count * 4 * _COPIES_PER_PARAMETER[setup.config.optimizer.kind] * num_seeds
  if need > input_pipeline.MEMORY_HEADROOM * free:
    gib = lambda n: f"{n / 2**30:.2f} GiB"
    seeds = f" for {num_seeds} seeds" if num_seeds > 1 else ""
    raise ConfigError(
        f"config.model: the model has {count:,} parameters, {gib(need)} with their gradients "
        f"and optimizer state{seeds}, more than the {gib(free)} free on "
        f"{jax.default_backend()}; make it smaller (model.feature_dim, the encoders' widths)"
        + (" or train fewer seeds at once" if num_seeds > 1 else ""))


def trained_batches(perms, batch_size: int, steps_per_epoch: int) -> int:
  """How many of an epoch's batches hold rows for some seed: a re-sampling
  method's order ends in whole batches of padding (`PAD_ENTRY`, negative),
  which the loop skips without dispatching (a seed whose order is shorter than
  another's skips its own padding inside the step)."""
  real = int(np.max(np.sum(np.asarray(perms) >= 0, axis=-1)))
  return min(steps_per_epoch, -(-real // batch_size))


def run_keys(seed: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(init key, data-order key) of a seed."""
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  return init_key, data_key


def fresh_state(setup: RunSetup, seed: int):
  """The untrained state of `seed`: its own init, probe init and GE-noise key."""
  tx = setup.tx if seed == setup.config.seed else setup.plan.with_seed(seed).optimizer(
      setup.steps_per_epoch, setup.model.num_classes)
  return create_train_state(setup.model, tx, setup.example, run_keys(seed)[0], setup.probe_cfg,
                            replace_variables=pretrained.variables_replacement(setup.config))


def eval_record(epoch: int, validation: dict, test: dict, seconds: float) -> dict:
  return {"epoch": epoch, "validation": validation, "test": test, "seconds": seconds}


def check_epochs_left(run, start_epoch: int, num_epochs: int) -> None:
  """A workdir that already trained more epochs than asked cannot report fewer."""
  if start_epoch > num_epochs:
    raise ConfigError(f"config.num_epochs: {num_epochs}, but the run in {run.workdir} already "
                      f"trained {start_epoch} epochs (its summary.json has them); use a new "
                      "--workdir to train fewer")


def progress_line(epoch, num_epochs, step, total, scalars, names, rate, prefix="") -> str:
  """The labelled progress line; `rate` (steps/s, None until measurable) from
  `run_dir.Throughput`."""
  uni = " ".join(f"{m} {scalars[f'unimodal_accuracy_{m}']:.3f}" for m in names)
  fused = scalars.get("fused_loss", scalars["loss"])
  pace = ("ETA after the first window (compiling)" if rate is None else
          f"{rate:.1f} steps/s  ETA {run_dir.eta((total - step) / max(rate, 1e-9))}")
  return (f"{prefix}epoch {epoch + 1}/{num_epochs}  step {step}/{total}  train: loss "
          f"{scalars['loss']:.4f} (fused {fused:.4f} + unimodal/method terms)  fused acc "
          f"{scalars['accuracy']:.3f}  unimodal acc {uni}  probe gap (max-min probe acc) "
          f"{scalars[programs.metric_field('probe/utilization_gap')]:.3f}  |  {pace}")


def _process_note(batch_size: int) -> str:
  """With several processes: which one this is and which rows it feeds."""
  if jax.process_count() == 1:
    return ""
  rows = distributed.process_rows(batch_size)
  return (f", process {jax.process_index()} of {jax.process_count()} feeding rows "
          f"{rows.start}-{rows.stop - 1} of each batch")


def log_first_step(report: compile_cache.CompileReport, step_output) -> None:
  """Once per run: time to the first finished step, and whether its programs
  were loaded from the compilation cache or compiled (one host sync)."""
  jax.block_until_ready(step_output)
  line = report.line("first step")
  if line:
    run_dir.log(line)


def open_run_dirs(plan: Plan, seeds, workdirs) -> list[run_dir.RunDir]:
  """Every seed's RunDir (checked and locked) before the data load; on a
  refusal the ones already opened are released."""
  runs = []
  try:
    for s, w in zip(seeds, workdirs):
      seeded = plan.with_seed(s)
      runs.append(run_dir.RunDir(seeded.config, w, seeded.identity))
      runs[-1].keep_margin = 1 if len(seeds) > 1 else 0
  except BaseException:
    for run in runs:
      run.close()
    raise
  return runs


def restore_common(runs, setup: RunSetup, seeds) -> list:
  """Every seed's state at the newest epoch all of them have intact.

  Each seed first restores its own newest intact step (damaged newer ones are
  reported and moved aside); a seed ahead of the common step restores that
  step instead, which it must still hold."""
  spe = setup.steps_per_epoch
  fresh = [fresh_state(setup, s) for s in seeds]
  states = [run.restore(f, steps_per_epoch=spe) for run, f in zip(runs, fresh)]
  common = min(int(st.step) for st in states)
  for i, (run, state) in enumerate(zip(runs, states)):
    if int(state.step) == common:
      continue
    if common and not run.has_step(common):
      raise CheckpointError(
          f"{run.workdir}: the other seeds resume from step {common}, but this seed kept only "
          f"later checkpoints ({run.checkpoints.latest.all_steps()}); start the sweep in a new "
          "--workdir")
    states[i] = run.restore(fresh[i], at_most=common, steps_per_epoch=spe)
    if int(states[i].step) != common:
      raise CheckpointError(f"{run.workdir}: its checkpoint at step {common} is damaged, and "
                            "the other seeds resume from it; start the sweep in a new --workdir")
  for run, state, f in zip(runs, states, fresh):
    run.repair_best(state, f, spe)
  return states


def train_seeds(plan: Plan, seeds: Sequence[int], workdirs: Sequence[str],
                seed_axis: str = "auto") -> list[dict]:
  """Trains `plan` for every seed in one compiled program; seed s writes
  `workdirs[s]`, an ordinary run directory (`run_dir.RunDir`).

  Returns the per-seed summaries (a summary with an "error" key for a seed
  whose loss or gradients went non-finite). A stop signal leaves every
  seed's latest completed epoch saved and says so; any other error is
  recorded in each training seed's summary.json.
  """
  if len(seeds) != len(workdirs) or not seeds:
    raise ConfigError(f"--seeds: {len(seeds)} seed(s) for {len(workdirs)} run directories")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"--seeds: repeated seed in {list(seeds)}")
  if len(seeds) > 1 and jax.process_count() > 1:
    raise ConfigError("launch.sweep runs in one process (its seeds share the devices it "
                      "sees); several processes are for one run: launch.train")
  plan = plan.with_seed(seeds[0])
  runs = open_run_dirs(plan, seeds, workdirs)
  with run_dir.guarded(runs):
    return _train(runs, plan, list(seeds), seed_axis)


def _start_line(config, names, axis, seeds, start_step, spe, data, runs) -> str:
  label = runs[0].identity.label
  if not axis.stacked:
    return (f"training {label} on {config.dataset.name} ({', '.join(names)}): "
            f"{config.num_epochs} epochs x {spe} steps, data on the {data.placement}"
            + (f", batch sharded over {axis.mesh.size} devices" if axis.mesh is not None else "")
            + _process_note(config.batch_size) + f", workdir {runs[0].workdir}")
  return (f"sweep: {label} on {config.dataset.name} ({', '.join(names)}), seeds "
          f"{', '.join(map(str, seeds))} in one program ({axis.mode}"
          + (f", seeds sharded over {axis.mesh.size} devices" if axis.mesh is not None else "")
          + f"): {config.num_epochs} epochs x {spe} steps from step {start_step}, data on the "
          f"{data.placement}")


def _train(runs, plan: Plan, seeds: list[int], seed_axis: str) -> list[dict]:
  compiling = compile_cache.CompileReport()
  setup = setup_run(plan)
  config, names, data = setup.config, setup.names, setup.data
  spe, num_seeds = setup.steps_per_epoch, len(seeds)
  total_steps = spe * config.num_epochs
  axis = programs.SeedAxis.for_run(config, num_seeds, seed_axis)
  check_model_memory(setup, num_seeds)
  prefixes = [f"seed {s}: " if axis.stacked else "" for s in seeds]

  fingerprint = input_pipeline.fingerprint(data)
  for run in runs:   # before the restore: changed data is not a damaged checkpoint
    run.check_data(fingerprint)
  seed_states = restore_common(runs, setup, seeds)
  start_step = int(seed_states[0].step)
  check_epochs_left(runs[0], start_step // spe, config.num_epochs)
  for run, state in zip(runs, seed_states):
    if start_step < total_steps:
      run.discard_stale_summary()
    run.training = True
    run.record_data(fingerprint)
    if int(state.step) == 0:
      run.write_hparams()
  data = axis.place_data(data)
  states = axis.place(axis.stack(seed_states))
  data_keys = [run_keys(s)[1] for s in seeds]
  hooks = EpochHooks(setup, data_keys, stacked=axis.stacked, seeds=seeds)
  if start_step == 0:
    states = axis.place(hooks.prepare(states))
  train_fn, eval_fn, collection = programs.make_programs(
      axis, setup.model, setup.tx, setup.parts, config, spe, seed_states[0], setup.example,
      setup.probe_cfg, setup.eval_batch_size, setup.frame_sizes, data.on_device,
      setup.eval_logits, plan.resamples)
  del seed_states
  # clu.periodic_actions imports TensorFlow (~5 s): only once the data is loaded,
  # so that a mistake in the config or the workdir is reported without it.
  from clu import periodic_actions
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=runs[0].writer,
                                             every_steps=config.log_every_steps)
  failed: dict[int, str] = {}
  run_dir.log(_start_line(config, names, axis, seeds, start_step, spe, data, runs))
  step = start_step
  throughput = run_dir.Throughput()

  def flush(pending) -> None:
    """Logs a window's per-seed metrics, fetched after the next step was dispatched."""
    at_step, at_epoch, computed, health = pending
    computed, health = jax.device_get((computed, health))
    rate = throughput.rate(at_step)
    per_seed = axis.per_seed(computed)
    for s, (run, seed_health) in enumerate(zip(runs, axis.per_seed(health))):
      message = nonfinite_message(seed_health, names, spe)
      if message and s not in failed:
        failed[s] = message
        if axis.stacked:
          run_dir.log(f"seed {seeds[s]}: {message}; the other seeds go on")
      if s not in failed:
        run.write_train_scalars(at_step, {k: float(v) for k, v in per_seed[s].items()})
    if len(failed) == num_seeds:
      return
    mean = {k: float(np.mean(v)) for k, v in computed.items()}
    run_dir.log(progress_line(at_epoch, config.num_epochs, at_step, total_steps, mean, names,
                              rate, prefix=f"[{num_seeds} seeds, mean] " if axis.stacked else ""))

  for epoch in range(start_step // spe, config.num_epochs):
    epoch_start = time.time()
    perms = hooks.epoch_rows(states, input_pipeline.epoch_order(data, axis.keys(data_keys),
                                                                epoch))
    if data.on_device and axis.stacked:
      perms = axis.place(perms)
    batches = trained_batches(perms, config.batch_size, spe) if plan.resamples else spe
    metrics_acc = axis.empty_metrics(collection)
    pending = None
    for batch_index in range(batches):
      interrupts.check()   # a stop signal whose exception Python dropped stops here
      states, metrics_acc = train_fn(states, metrics_acc, *input_pipeline.train_args(
          data, perms, batch_index, config.batch_size, plan.resamples))
      step += 1
      if compiling is not None:
        log_first_step(compiling, states.step)
        compiling = None
      progress(step)
      if pending is not None:  # the last window's values, ready while this step runs
        flush(pending)
        pending = None
        if len(failed) == num_seeds:
          break
      if step % config.log_every_steps == 0 or batch_index == batches - 1:
        # Dispatched, not fetched: no host sync here (the state is donated next
        # step, so the health flags are copied out).
        pending = (step, epoch, axis.compute(metrics_acc), jnp.copy(states.health))
        metrics_acc = axis.empty_metrics(collection)
    if pending is not None:
      flush(pending)
    if len(failed) == num_seeds:
      break
    if batches < spe:  # the order's trailing padding: skipped steps, not dispatched
      states = axis.place(states.replace(step=states.step + (spe - batches)))
      for _ in range(spe - batches):   # clu's progress report counts every step
        step += 1
        progress(step)
    per_split = {split: programs.evaluate_seeds(axis, eval_fn, states, data, split,
                                                setup.eval_batch_size, plan.task)
                 for split in ("validation", "test")}
    states = axis.place(hooks.epoch_end(states, per_split["validation"], epoch + 1))
    seconds = time.time() - epoch_start
    for s, run in enumerate(runs):
      if s in failed:
        continue
      record = eval_record(epoch + 1, per_split["validation"][s], per_split["test"][s],
                           seconds / num_seeds)
      if axis.stacked:
        record["sweep_seconds"] = seconds
      run.end_epoch(step, axis.unstack(states, s), record)
      run_dir.log(plan.task.epoch_line(record, names, prefix=prefixes[s]))
    for run in runs:   # every seed has saved this epoch: the extra step may go
      run.prune_to_keep()
  for run in runs:
    run.checkpoints.wait()
  summaries = []
  for s, run in enumerate(runs):
    if s in failed:
      summaries.append(run.fail(failed[s]))
      continue
    summary = run.finish()
    summaries.append(summary)
    run_dir.log(plan.task.done_line(summary) + ("" if axis.stacked else
                                              f"; TensorBoard: tensorboard --logdir {run.workdir}"))
  return summaries
