"""train_and_evaluate(config, workdir): the orchestration of one run.

Everything numeric happens in the jitted step; this module only sequences it:
resume, epochs of on-device batches, metrics fetched every `log_every_steps`
(the one host sync of the loop), evaluation and checkpoints each epoch, and a
run summary at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp

from asgml_jax import (augment, compile_cache, input_pipeline, optim, parallel, pretrained,
                       run_dir, steps, teachers)
from asgml_jax.epoch_hooks import EpochHooks
from asgml_jax.config_schema import ConfigError, effective_config, modality_names, validate
from asgml_jax.metrics import ConfusionMatrix, summarize_confusions, train_metrics_collection
from asgml_jax.models import model_from_config
from asgml_jax.methods import stack as method_stack
from asgml_jax.probes import probe_config_from
from asgml_jax.state import create_train_state, distinct_buffers

SUMMARY_FILE = run_dir.SUMMARY_FILE


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


def _field(metric: str) -> str:
  """Metric name -> Collection field (an identifier): "probe/acc_audio" -> "probe__acc_audio"."""
  return metric.replace("/", "__")


def step_options(config, steps_per_epoch: int, num_classes: int | None = None) -> dict:
  """The static options of `steps.train_step` for the config's method stack."""
  return {"parts": method_stack.step_parts(config, steps_per_epoch, num_classes)}


def make_train_body(model, tx, config, steps_per_epoch: int, state, example_batch, probe_cfg,
                    on_device: bool = True, mesh=None):
  """Un-jitted train step with metric accumulation, and its metrics Collection.

  on_device: (state, metrics_acc, train_data, perm, i) -> (state, metrics_acc),
  gathering batch i of `perm` from the device-resident split; otherwise
  (state, metrics_acc, batch) -> ..., for batches the host feeds
  (`input_pipeline.train_args` builds either argument list). `make_train_fn`
  jits it; the sweep maps it over seeds first. The metric names are read off
  the step itself (`jax.eval_shape`), so each method logs whatever signals
  its transformations keep. mesh: shard each batch over it (parallel.py).
  """
  lr_fn = optim.lr_schedule(config, steps_per_epoch)
  frame_sizes = augment.frame_modalities(config)
  step_fn = functools.partial(steps.train_step, model=model, tx=tx,
                              unimodal_weight=config.loss.unimodal_weight, lr_fn=lr_fn,
                              probe_cfg=probe_cfg,
                              **step_options(config, steps_per_epoch, model.num_classes))
  metric_keys = sorted(jax.eval_shape(step_fn, state, example_batch)[1])
  collection = train_metrics_collection([_field(k) for k in metric_keys])

  def batch_body(state, metrics_acc, batch):
    batch = parallel.constrain_batch(batch, mesh)
    if frame_sizes:
      aug_key = jax.random.fold_in(jax.random.fold_in(state.rng, 0xA06), state.step)
      batch = augment.train_inputs(batch, aug_key, frame_sizes)
    state, metrics = step_fn(state, batch)
    fields = {_field(k): v for k, v in metrics.items()}
    return state, metrics_acc.merge(collection.single_from_model_output(**fields))

  coded = method_stack.resamples(config)

  def gather_body(state, metrics_acc, data, perm, batch_index):
    return batch_body(state, metrics_acc,
                      input_pipeline.gather_batch(data, perm, batch_index, config.batch_size,
                                                  coded))

  return (gather_body if on_device else batch_body), collection


def fresh_metrics(collection):
  """An empty accumulator with a buffer per field: the step donates it, and
  clu's empty metrics may share one zero buffer between fields."""
  return distinct_buffers(collection.empty())


def donated_args(*argnums: int) -> tuple[int, ...]:
  """Donation saves a copy of the state per step on accelerators; XLA:CPU
  cannot use donated buffers and would only warn."""
  return () if jax.default_backend() == "cpu" else argnums


def make_train_fn(model, tx, config, steps_per_epoch: int, state, example_batch, probe_cfg,
                  on_device: bool = True, mesh=None):
  """Jitted `make_train_body`, with the state and metric accumulator donated."""
  body, collection = make_train_body(model, tx, config, steps_per_epoch, state, example_batch,
                                     probe_cfg, on_device, mesh)
  return jax.jit(body, donate_argnums=donated_args(0, 1)), collection


def make_eval_body(model, batch_size: int, probe_cfg, frame_sizes=None, on_device: bool = True,
                   mesh=None, eval_logits=None):
  """Un-jitted eval step -> {head or probe: ConfusionMatrix}: (state,
  split_data, start) slicing the device-resident split, or (state, batch).
  eval_logits: the stack's evaluation hook (`methods.stack.eval_logits`)."""

  def batch_body(state, batch):
    batch = parallel.constrain_batch(batch, mesh)
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    logits = steps.eval_step(state, batch, model=model, probe_cfg=probe_cfg,
                             eval_logits=eval_logits)
    return {k: ConfusionMatrix.from_logits(v, batch["label"], batch["mask"])
            for k, v in logits.items()}

  def slice_body(state, data, start):
    return batch_body(state, input_pipeline.slice_batch(data, start, batch_size))

  return slice_body if on_device else batch_body


def make_eval_fn(model, batch_size: int, probe_cfg, frame_sizes=None, on_device: bool = True,
                 mesh=None, eval_logits=None):
  """Jitted `make_eval_body`."""
  return jax.jit(make_eval_body(model, batch_size, probe_cfg, frame_sizes, on_device, mesh,
                                eval_logits))


def accumulate_confusions(eval_fn, state, data: input_pipeline.LoadedData, split: str,
                          batch_size: int) -> dict:
  """Sum of `eval_fn`'s confusion counts over the split, still on the device."""
  total = None
  for start in range(0, data.eval_splits[split]["label"].shape[0], batch_size):
    part = eval_fn(state, *input_pipeline.eval_args(data, split, start, batch_size))
    total = part if total is None else {k: total[k].merge(part[k]) for k in total}
  return {k: v.counts for k, v in total.items()}


def evaluate(eval_fn, state, data: input_pipeline.LoadedData, split: str,
             batch_size: int) -> dict[str, float]:
  counts = jax.device_get(accumulate_confusions(eval_fn, state, data, split, batch_size))
  return summarize_confusions(counts)


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
          f"{scalars[_field('probe/utilization_gap')]:.3f}  |  {pace}")


@dataclasses.dataclass
class RunSetup:
  """What a run (or every seed of a sweep) shares: data, model, optimizer, probes."""
  config: Any
  names: tuple[str, ...]
  data: input_pipeline.LoadedData
  steps_per_epoch: int
  model: Any
  tx: Any
  probe_cfg: Any
  example: dict
  frame_sizes: dict
  eval_logits: Any = None   # the stack's evaluation hook (methods.stack.eval_logits)
  epoch_hooks: tuple = ()   # the stack's `Epoch.hook` builders

  @property
  def eval_batch_size(self) -> int:
    """The eval batch the data was padded for (config.eval_batch_size, capped
    at the largest eval split: `input_pipeline.effective_eval_batch_size`)."""
    if self.data is not None and self.data.eval_batch_size:
      return self.data.eval_batch_size
    return self.config.eval_batch_size


def run_config(config):
  """The validated config a run uses (its protocol's settings applied); cheap,
  so launchers call it before anything slow."""
  return effective_config(validate(config))


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


def setup_run(config) -> RunSetup:
  """Validates `config`, loads its data onto the device and builds model and optimizer."""
  config = run_config(config)
  data = input_pipeline.load(config)
  steps_per_epoch = data.num_train // config.batch_size
  note = probe_schedule_note(config, steps_per_epoch)
  if note:
    run_dir.log(note)
  model = model_from_config(config, data.num_classes)
  frame_sizes = augment.frame_modalities(config)
  example = augment.eval_inputs(
      jax.tree.map(lambda x: jnp.asarray(x[:config.batch_size]), data.train), frame_sizes)
  return RunSetup(config=config, names=modality_names(config), data=data,
                  steps_per_epoch=steps_per_epoch, model=model,
                  tx=optim.make_optimizer(config, steps_per_epoch, data.num_classes),
                  probe_cfg=probe_config_from(config, data.num_classes), example=example,
                  frame_sizes=frame_sizes,
                  eval_logits=method_stack.eval_logits(config, steps_per_epoch, data.num_classes),
                  epoch_hooks=method_stack.epoch_hook_builders(config))


def run_keys(seed: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(init key, data-order key) of a seed."""
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  return init_key, data_key


def fresh_state(setup: RunSetup, seed: int):
  """The untrained state of `seed`: its own init, probe init and GE-noise key."""
  tx = setup.tx if seed == setup.config.seed else optim.make_optimizer(
      with_seed(setup.config, seed), setup.steps_per_epoch, setup.model.num_classes)
  return create_train_state(setup.model, tx, setup.example, run_keys(seed)[0], setup.probe_cfg,
                            replace_variables=pretrained.variables_replacement(setup.config))


def with_seed(config, seed: int):
  """A copy of `config` with `seed` (the only key a sweep's runs differ in)."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.seed = int(seed)
  return out


def eval_record(epoch: int, validation: dict, test: dict, seconds: float) -> dict:
  return {"epoch": epoch, "validation": validation, "test": test, "seconds": seconds}


def check_epochs_left(run, start_epoch: int, num_epochs: int) -> None:
  """A workdir that already trained more epochs than asked cannot report fewer."""
  if start_epoch > num_epochs:
    raise ConfigError(f"config.num_epochs: {num_epochs}, but the run in {run.workdir} already "
                      f"trained {start_epoch} epochs (its summary.json has them); use a new "
                      "--workdir to train fewer")


def _process_note(batch_size: int) -> str:
  """With several processes: which one this is and which rows it feeds."""
  if jax.process_count() == 1:
    return ""
  from asgml_jax import distributed
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a run); returns the summary.

  The workdir is checked and locked before the data load, so a mistake there
  costs no waiting. A stop signal (`interrupts.Interrupted`) leaves the latest
  completed epoch saved and says so; a non-finite step or any other error
  leaves a summary.json that records it. A stack with unimodal teachers (UMT)
  trains them first (`asgml_jax/teachers.py`), in `<workdir>/teachers` unless
  `method.teachers.dir` names another folder."""
  config = run_config(config)
  if teachers.needs_teachers(config):
    config = teachers.with_root(config, os.path.join(os.path.expanduser(workdir), "teachers"))
    teachers.ensure(config, [config.seed])
  run = run_dir.RunDir(config, workdir)
  with run_dir.guarded([run]):
    return _train_in(run, config)


def _train_in(run, config) -> dict:
  compiling = compile_cache.CompileReport()
  setup = setup_run(config)
  config, names, data = setup.config, setup.names, setup.data
  steps_per_epoch = setup.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs
  data_key = run_keys(config.seed)[1]

  mesh = parallel.data_mesh(config)
  state = parallel.replicate(distinct_buffers(run.restore(
      fresh_state(setup, config.seed), steps_per_epoch=steps_per_epoch)), mesh)
  if mesh is not None and data.on_device:
    data = dataclasses.replace(data, train=parallel.replicate(data.train, mesh),
                               eval_splits=parallel.replicate(data.eval_splits, mesh))
  start_step = int(state.step)
  check_epochs_left(run, start_step // steps_per_epoch, config.num_epochs)
  if start_step < total_steps:
    run.discard_stale_summary()
  run.training = True
  hooks = EpochHooks(setup, [data_key], stacked=False)
  coded = method_stack.resamples(config)
  if start_step == 0:
    run.write_hparams()
    state = parallel.replicate(hooks.prepare(state), mesh)
  from clu import periodic_actions  # after the data: keeps TensorFlow off the import path
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=run.writer,
                                             every_steps=config.log_every_steps)
  train_fn, collection = make_train_fn(setup.model, setup.tx, config, steps_per_epoch, state,
                                       setup.example, setup.probe_cfg, data.on_device, mesh)
  eval_fn = make_eval_fn(setup.model, setup.eval_batch_size, setup.probe_cfg, setup.frame_sizes,
                         data.on_device, mesh, setup.eval_logits)

  run_dir.log(f"training {method_stack.run_label(config)} on {config.dataset.name} "
              f"({', '.join(names)}): "
              f"{config.num_epochs} epochs x {steps_per_epoch} steps, data on the "
              f"{data.placement}"
              + (f", batch sharded over {mesh.size} devices" if mesh is not None else "")
              + _process_note(config.batch_size)
              + f", workdir {run.workdir}")
  step = start_step
  throughput = run_dir.Throughput()

  def flush(pending) -> None:
    """Logs a window's metrics, fetched after the next step was dispatched."""
    at_step, at_epoch, computed, health = pending
    message = nonfinite_message(jax.device_get(health), names, steps_per_epoch)
    if message:
      raise NonFiniteError(message)
    scalars = {k: float(v) for k, v in jax.device_get(computed).items()}
    run.write_train_scalars(at_step, scalars)
    run_dir.log(progress_line(at_epoch, config.num_epochs, at_step, total_steps, scalars, names,
                              throughput.rate(at_step)))

  for epoch in range(start_step // steps_per_epoch, config.num_epochs):
    epoch_start = time.time()
    perm = hooks.epoch_rows(state, input_pipeline.epoch_order(data, data_key, epoch))
    metrics_acc = fresh_metrics(collection)
    pending = None
    for batch_index in range(steps_per_epoch):
      state, metrics_acc = train_fn(state, metrics_acc, *input_pipeline.train_args(
          data, perm, batch_index, config.batch_size, coded))
      step += 1
      if compiling is not None:
        log_first_step(compiling, state.step)
        compiling = None
      progress(step)
      if pending is not None:  # the last window's values, ready while this step runs
        flush(pending)
        pending = None
      if step % config.log_every_steps == 0 or batch_index == steps_per_epoch - 1:
        # Dispatched, not fetched: no host sync here (the state is donated next step,
        # so the health flag is copied out).
        pending = (step, epoch, metrics_acc.compute(), jnp.copy(state.health))
        metrics_acc = fresh_metrics(collection)
    if pending is not None:
      flush(pending)
    splits = {s: evaluate(eval_fn, state, data, s, setup.eval_batch_size)
              for s in ("validation", "test")}
    state = parallel.replicate(hooks.epoch_end(state, [splits["validation"]], epoch + 1), mesh)
    record = eval_record(epoch + 1, splits["validation"], splits["test"],
                         time.time() - epoch_start)
    run.end_epoch(step, state, record)
    run_dir.log(run_dir.epoch_line(record, names))
  run.checkpoints.wait()
  summary = run.finish()
  run_dir.log(run_dir.done_line(summary) + f"; TensorBoard: tensorboard --logdir {run.workdir}")
  return summary
