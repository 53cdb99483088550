"""Seed sweeps: S seeds of one config trained by one jit-compiled program.

The S train states are stacked on a leading seed axis, and
`train.make_train_body` (forward, loss, probes, `tx.update`, metric
accumulation) and the eval step are mapped over it inside one `jax.jit`:

- "vmap" (MLP encoders): `jax.vmap` over the seed axis, so every matmul is
  one batched op for all seeds (x4.5 per seed on an H100 for MOSEI's MLPs);
- "unroll" (convolutional encoders): the body traced once per seed into the
  same program. A vmapped convolution with per-seed kernels becomes a grouped
  convolution, which both XLA:CPU (densified) and cuDNN (9x slower for
  ResNet-18 on an H100) run far slower than S plain ones; unrolling keeps
  each seed's convolutions as fast as a single run's and still saves the
  per-run compile, data load and per-step dispatch. `seed_axis_mode`
  chooses; `--seed_axis` overrides.

What differs per seed is exactly what differs between separate runs:

- the init key (`train.run_keys(seed)`), hence params, probes and the state rng
  that dropout and frame augmentation fold the step into;
- the noise keys of the methods' transformations, which `tx.init` seeds from `config.seed`, so each
  seed's optimizer state is initialised by its own `tx` (the update is the same
  function for every seed, and only the first seed's `tx` is traced);
- the data order: each seed's epoch permutation comes from its own data key,
  and the (S, N) permutations index the one device-resident copy of the train
  split, so every seed gathers its own batches on the device. A dataset too
  large for the device (`dataset.placement`) stays on the host, which gathers
  the (S, B) batches from the same permutations and feeds them each step.

Each seed writes an ordinary run directory (`run_dir.RunDir`): config.json,
checkpoints, TensorBoard events, summary.json, exactly as `launch.train` would,
so a sweep's runs are read, resumed and reported like single runs.

Resuming: every seed restarts from the newest epoch all of them have saved
(seeds are saved one after another, so a kill can land between two of them);
a seed already past it re-trains that epoch, deterministically, and its saved
checkpoint is kept rather than rewritten.

Numerics: a vmapped step batches each matmul / convolution over seeds and an
unrolled one is fused differently, so XLA may reassociate float sums: a seed's
metrics in a sweep match its separate run to float tolerance, not bit for
bit (tests/test_sweep.py states the tolerance). With S = 1 the program is the
plain run's up to the same caveat.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asgml_jax import compile_cache, input_pipeline, parallel, run_dir, teachers, train
from asgml_jax.config_checks import ConfigError
from asgml_jax.epoch_hooks import EpochHooks
from asgml_jax.methods import stack as method_stack
from asgml_jax.metrics import summarize_confusions


def stack(trees: Sequence) -> object:
  """[tree_s] -> one tree with a leading seed axis on every leaf."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree, index: int):
  """Seed `index`'s slice of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


SEED_AXIS_MODES = ("auto", "vmap", "unroll")


def seed_axis_mode(config, requested: str = "auto") -> str:
  """How the seed axis is compiled: "vmap" or "unroll" (see the module docstring).

  auto: "unroll" when an encoder is convolutional, "vmap" when all are MLPs.
  Measured (per seed and step, baseline; docs/benchmarks.md):
  - 2-core CPU, default config: one run 69-87 ms; vmap S=3 163 ms; unroll
    S=3 67 ms. XLA:CPU turns a convolution with per-seed kernels into a
    grouped convolution and densifies it.
  - H100, CREMA-D ResNet-18 bf16: one run 11.75 ms; vmap S=5 103 ms (grouped
    convolutions, 9x slower); unroll S=5 11.68 ms (one run already keeps the
    GPU busy at ~128 TFLOP/s, so seeds cannot share much).
  - H100, MOSEI MLPs: vmap S=5 0.23 ms against 1.05 ms for one run (x4.5).
  """
  if requested not in SEED_AXIS_MODES:
    raise ConfigError(f"--seed_axis: {requested!r} is not one of {', '.join(SEED_AXIS_MODES)}")
  if requested != "auto":
    return requested
  convolutional = any(config.modalities[m].encoder != "mlp" for m in config.modalities)
  return "unroll" if convolutional else "vmap"


def _over_seeds(body, num_seeds: int, mode: str, in_axes):
  """`body` mapped over the leading seed axis of the arguments `in_axes` marks 0."""
  if mode == "vmap":
    return jax.vmap(body, in_axes=in_axes)

  def unrolled(*args):
    outs = [body(*(a if ax is None else unstack(a, s) for a, ax in zip(args, in_axes)))
            for s in range(num_seeds)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)
  return unrolled


def make_sweep_fns(setup: train.RunSetup, one_state, num_seeds: int, mode: str = "vmap",
                   on_device: bool | None = None):
  """(train_fn, eval_fn, collection, empty_metrics) for S seeds, in one program each.

  train_fn(states, metrics, data, perms_SxN, i) and eval_fn(states, split, start)
  are the single-run bodies mapped over the seed axis of the states (and of
  the permutations, for training); the data are shared, not copied per seed.
  For host-held data: train_fn(states, metrics, batches_SxB) and
  eval_fn(states, batch), the host gathering each seed's batch from its own
  permutation (`input_pipeline.train_args`). `on_device` (default: where
  `setup.data` is) is for callers without data, such as the benchmark.
  """
  if on_device is None:
    on_device = setup.data.on_device
  body, collection = train.make_train_body(setup.model, setup.tx, setup.config,
                                           setup.steps_per_epoch, one_state, setup.example,
                                           setup.probe_cfg, on_device)
  train_axes = (0, 0, None, 0, None) if on_device else (0, 0, 0)
  train_fn = jax.jit(_over_seeds(body, num_seeds, mode, train_axes),
                     donate_argnums=train.donated_args(0, 1))
  eval_body = train.make_eval_body(setup.model, setup.eval_batch_size, setup.probe_cfg,
                                   setup.frame_sizes, on_device, eval_logits=setup.eval_logits)
  eval_fn = jax.jit(_over_seeds(eval_body, num_seeds, mode,
                                (0, None, None) if on_device else (0, None)))
  empty = lambda: stack([train.fresh_metrics(collection) for _ in range(num_seeds)])
  return train_fn, eval_fn, collection, empty


def _restore_common(runs, setup, seeds) -> list:
  """Every seed's state at the newest epoch all of them have intact.

  Each seed first restores its own newest intact step (damaged newer ones are
  reported and moved aside); a seed ahead of the common step restores that
  step instead, which it must still hold."""
  spe = setup.steps_per_epoch
  fresh = [train.fresh_state(setup, s) for s in seeds]
  states = [run.restore(f, steps_per_epoch=spe) for run, f in zip(runs, fresh)]
  common = min(int(st.step) for st in states)
  for i, (run, state) in enumerate(zip(runs, states)):
    if int(state.step) == common:
      continue
    if common and not run.has_step(common):
      raise RuntimeError(
          f"{run.workdir}: the other seeds resume from step {common}, but this seed kept only "
          f"later checkpoints ({run.checkpoints.latest.all_steps()}); raise "
          f"config.checkpoint_keep or start the sweep in a new --workdir")
    states[i] = run.restore(fresh[i], at_most=common, steps_per_epoch=spe)
    if int(states[i].step) != common:
      raise RuntimeError(f"{run.workdir}: its checkpoint at step {common} is damaged, and the "
                         "other seeds resume from it; start the sweep in a new --workdir")
  return states


def _split_eval(counts_stacked: dict, num_seeds: int) -> list[dict]:
  counts = jax.device_get(counts_stacked)
  return [summarize_confusions({k: v[s] for k, v in counts.items()}) for s in range(num_seeds)]


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
  config = train.run_config(train.with_seed(config, seeds[0]))
  if teachers.needs_teachers(config):
    config = teachers.with_root(
        config, os.path.join(os.path.commonpath([os.path.abspath(w) for w in workdirs]),
                             "teachers"))
    teachers.ensure(config, seeds)
  runs = open_run_dirs(config, seeds, workdirs)
  with run_dir.guarded(runs):
    return _sweep_in(runs, config, seeds, seed_axis)


def open_run_dirs(config, seeds, workdirs) -> list[run_dir.RunDir]:
  """Every seed's RunDir (checked and locked) before the data load; on a
  refusal the ones already opened are released."""
  runs = []
  try:
    for s, w in zip(seeds, workdirs):
      runs.append(run_dir.RunDir(train.with_seed(config, s), w))
  except BaseException:
    for run in runs:
      run.close()
    raise
  return runs


def _sweep_in(runs, config, seeds, seed_axis) -> list[dict]:
  compiling = compile_cache.CompileReport()
  setup = train.setup_run(config)
  config, names, data = setup.config, setup.names, setup.data
  steps_per_epoch, num_seeds = setup.steps_per_epoch, len(seeds)
  total_steps = steps_per_epoch * config.num_epochs

  seed_states = _restore_common(runs, setup, seeds)
  start_step = int(seed_states[0].step)
  train.check_epochs_left(runs[0], start_step // steps_per_epoch, config.num_epochs)
  for run, state in zip(runs, seed_states):
    if int(state.step) == 0:
      run.write_hparams()
    if start_step < total_steps:
      run.discard_stale_summary()
    run.training = True
  mode = seed_axis_mode(config, seed_axis)
  mesh = parallel.seed_mesh(config, num_seeds, mode)
  if mesh is not None and data.on_device:
    data = dataclasses.replace(data, train=parallel.replicate(data.train, mesh),
                               eval_splits=parallel.replicate(data.eval_splits, mesh))
  states = parallel.shard_seeds(stack(seed_states), mesh)
  data_keys = [train.run_keys(s)[1] for s in seeds]
  hooks = EpochHooks(setup, data_keys, stacked=True, seeds=seeds)
  coded = method_stack.resamples(config)
  if start_step == 0:
    states = parallel.shard_seeds(hooks.prepare(states), mesh)
  train_fn, eval_fn, collection, empty_metrics = make_sweep_fns(setup, seed_states[0], num_seeds,
                                                                mode)
  del seed_states
  from clu import periodic_actions  # after the data: keeps TensorFlow off the import path
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                             writer=runs[0].writer,
                                             every_steps=config.log_every_steps)
  failed: dict[int, str] = {}

  run_dir.log(f"sweep: {method_stack.run_label(config)} on {config.dataset.name} ({', '.join(names)}), "
              f"seeds {', '.join(map(str, seeds))} in one program ({mode}"
              + (f", seeds sharded over {mesh.size} devices" if mesh is not None else "")
              + f"): {config.num_epochs} epochs x "
              f"{steps_per_epoch} steps from step {start_step}, data on the {data.placement}")
  step = start_step
  throughput = run_dir.Throughput()

  def flush(pending) -> None:
    """Logs a window's per-seed metrics, fetched after the next step was dispatched."""
    at_step, at_epoch, computed, health = pending
    computed, health = jax.device_get((computed, health))
    rate = throughput.rate(at_step)
    for s, run in enumerate(runs):
      message = train.nonfinite_message(health[s], names, steps_per_epoch)
      if message and s not in failed:
        failed[s] = message
        run_dir.log(f"seed {seeds[s]}: {message}; the other seeds go on")
      if s not in failed:
        run.write_train_scalars(at_step, {k: float(v[s]) for k, v in computed.items()})
    mean = {k: float(np.mean(v)) for k, v in computed.items()}
    run_dir.log(train.progress_line(at_epoch, config.num_epochs, at_step, total_steps, mean,
                                    names, rate, prefix=f"[{num_seeds} seeds, mean] "))

  for epoch in range(start_step // steps_per_epoch, config.num_epochs):
    epoch_start = time.time()
    perms = hooks.epoch_rows(states, input_pipeline.epoch_order(data, data_keys, epoch))
    if data.on_device:
      perms = parallel.shard_seeds(perms, mesh)
    metrics_acc = parallel.shard_seeds(empty_metrics(), mesh)
    pending = None
    for batch_index in range(steps_per_epoch):
      states, metrics_acc = train_fn(states, metrics_acc, *input_pipeline.train_args(
          data, perms, batch_index, config.batch_size, coded))
      step += 1
      if compiling is not None:
        train.log_first_step(compiling, states.step)
        compiling = None
      progress(step)
      if pending is not None:  # the last window's values, ready while this step runs
        flush(pending)
        pending = None
      if step % config.log_every_steps == 0 or batch_index == steps_per_epoch - 1:
        pending = (step, epoch, jax.vmap(lambda m: m.compute())(metrics_acc),
                   jnp.copy(states.health))
        metrics_acc = parallel.shard_seeds(empty_metrics(), mesh)
    if pending is not None:
      flush(pending)
    per_split = {}
    for split in ("validation", "test"):
      counts = train.accumulate_confusions(eval_fn, states, data, split,
                                           setup.eval_batch_size)
      per_split[split] = _split_eval(counts, num_seeds)
    states = parallel.shard_seeds(hooks.epoch_end(states, per_split["validation"], epoch + 1),
                                  mesh)
    seconds = time.time() - epoch_start
    for s, run in enumerate(runs):
      if s in failed:
        continue
      record = train.eval_record(epoch + 1, per_split["validation"][s], per_split["test"][s],
                                 seconds / num_seeds)
      record["sweep_seconds"] = seconds
      run.end_epoch(step, unstack(states, s), record)
      run_dir.log(run_dir.epoch_line(record, names, prefix=f"seed {seeds[s]}: "))
  for run in runs:
    run.checkpoints.wait()
  summaries = []
  for s, run in enumerate(runs):
    if s in failed:
      summaries.append(run.fail(failed[s]))
      continue
    summary = run.finish()
    summaries.append(summary)
    run_dir.log(run_dir.done_line(summary))
  return summaries
