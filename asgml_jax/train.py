"""train_and_evaluate(config, workdir): the orchestration of one run.

Everything numeric happens in the jitted step; this module only sequences it:
resume, epochs of on-device batches, metrics fetched every `log_every_steps`
(the one host sync of the loop), evaluation and checkpoints each epoch, and a
run summary at the end.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from asgml_jax import augment, checkpointing, input_pipeline, optim, steps
from asgml_jax.config_schema import ConfigError, effective_config, modality_names, validate
from asgml_jax.metrics import ConfusionMatrix, summarize_confusions, train_metrics_collection
from asgml_jax.models import model_from_config
from asgml_jax.probes import probe_config_from
from asgml_jax.state import create_train_state

# Keys whose value may change between a run and its resumption.
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps")
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


class NonFiniteError(FloatingPointError):
  """The loss or a gradient became NaN/inf; names the step and the culprit."""


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _check_config_matches_workdir(config, workdir: str) -> None:
  """A workdir belongs to one experiment: resuming it with another config
  would silently mix two runs, so refuse and name the keys that differ."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    old, new = _flatten(saved), _flatten(current)
    differ = sorted(k for k in set(old) | set(new)
                    if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if differ:
      raise ConfigError(
          f"config.{differ[0]}: differs from the run already in {workdir} "
          f"({len(differ)} key(s): {', '.join(differ[:5])}); use a new --workdir")
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _raise_if_unhealthy(state, names, steps_per_epoch: int) -> None:
  bad_step, code = (int(x) for x in jax.device_get(state.health))
  if bad_step < 0:
    return
  what = ("the loss" if code == 0 else
          f"the gradient of encoder '{names[code - 1]}'" if code <= len(names) else
          "the gradient of the fusion/heads")
  raise NonFiniteError(f"non-finite {what} at step {bad_step} (epoch "
                       f"{bad_step // steps_per_epoch + 1}); stopped; checkpoints hold only "
                       f"the epochs before it")


def _field(metric: str) -> str:
  """Metric name -> Collection field (an identifier): "probe/acc_audio" -> "probe__acc_audio"."""
  return metric.replace("/", "__")


def _tag(field: str) -> str:
  """Collection field -> TensorBoard tag; plain names go under train/."""
  name = field.replace("__", "/")
  return name if "/" in name else f"train/{name}"


def make_train_fn(model, tx, config, steps_per_epoch: int, state, example_batch, probe_cfg):
  """Jitted (state, metrics_acc, train_data, perm, i) -> (state, metrics_acc).

  The metric names are read off the step itself (`jax.eval_shape`), so each
  method logs whatever signals its transformations keep.
  """
  lr_fn = optim.lr_schedule(config, steps_per_epoch)
  frame_sizes = augment.frame_modalities(config)
  step_fn = functools.partial(steps.train_step, model=model, tx=tx,
                              unimodal_weight=config.loss.unimodal_weight, lr_fn=lr_fn,
                              probe_cfg=probe_cfg)
  metric_keys = sorted(jax.eval_shape(step_fn, state, example_batch)[1])
  collection = train_metrics_collection([_field(k) for k in metric_keys])

  # Donation saves a copy of the state per step on accelerators; XLA:CPU
  # cannot use donated buffers and would only warn.
  donate = () if jax.default_backend() == "cpu" else (0, 1)

  @functools.partial(jax.jit, donate_argnums=donate)
  def train_fn(state, metrics_acc, data, perm, batch_index):
    batch = input_pipeline.gather_batch(data, perm, batch_index, config.batch_size)
    if frame_sizes:
      aug_key = jax.random.fold_in(jax.random.fold_in(state.rng, 0xA06), state.step)
      batch = augment.train_inputs(batch, aug_key, frame_sizes)
    state, metrics = step_fn(state, batch)
    fields = {_field(k): v for k, v in metrics.items()}
    return state, metrics_acc.merge(collection.single_from_model_output(**fields))

  return train_fn, collection


def make_eval_fn(model, batch_size: int, probe_cfg, frame_sizes=None):
  """Jitted (state, split_data, start) -> {head or probe: ConfusionMatrix}."""

  @jax.jit
  def eval_fn(state, data, start):
    batch = input_pipeline.slice_batch(data, start, batch_size)
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    logits = steps.eval_step(state, batch, model=model, probe_cfg=probe_cfg)
    return {k: ConfusionMatrix.from_logits(v, batch["label"], batch["mask"])
            for k, v in logits.items()}

  return eval_fn


def evaluate(eval_fn, state, split_data: dict, batch_size: int) -> dict[str, float]:
  total = None
  for start in range(0, split_data["label"].shape[0], batch_size):
    part = eval_fn(state, split_data, start)
    total = part if total is None else {k: total[k].merge(part[k]) for k in total}
  return summarize_confusions({k: v.compute() for k, v in total.items()})


def _progress_line(epoch, num_epochs, step, total, scalars, names, rate, eta) -> str:
  uni = " ".join(f"{m} {scalars[f'unimodal_accuracy_{m}']:.3f}" for m in names)
  return (f"epoch {epoch + 1}/{num_epochs}  step {step}/{total}  loss {scalars['loss']:.4f}  "
          f"acc {scalars['accuracy']:.3f}  unimodal acc: {uni}  probe gap "
          f"{scalars[_field('probe/utilization_gap')]:.3f}  |  {rate:.1f} steps/s  "
          f"ETA {time.strftime('%H:%M:%S', time.gmtime(max(eta, 0)))}")


def _summary(history: list[dict], config, workdir: str) -> dict:
  """Run summary (SPEC §7): best-by-validation, final, convergence, wall-clock."""
  best = max(history, key=lambda h: (h["validation"]["accuracy"], -h["epoch"]))
  final = history[-1]
  target = 0.9 * final["test"]["accuracy"]
  convergence = next(h["epoch"] for h in history if h["test"]["accuracy"] >= target)
  best_on_test = max(history, key=lambda h: h["test"]["accuracy"])
  return {
      "workdir": os.path.abspath(workdir),
      "num_epochs": len(history),
      "best_val_epoch": best["epoch"],
      "at_best_val": {"validation": best["validation"], "test": best["test"]},
      "final": {"validation": final["validation"], "test": final["test"]},
      "convergence_epoch": convergence,
      # SPEC §7: mean probe utilization gap over the last 10 epochs.
      "utilization_gap_last10": {
          split: float(np.mean([h[split]["utilization_gap"] for h in history[-10:]]))
          for split in ("validation", "test")},
      "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
      # Only for comparison with papers that select on test; never for model selection.
      "best_on_test_for_literature_comparison": {"epoch": best_on_test["epoch"],
                                                 "accuracy": best_on_test["test"]["accuracy"]},
      "seed": config.seed,
  }


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a run); returns the summary."""
  config = effective_config(validate(config))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  _check_config_matches_workdir(config, workdir)
  names = modality_names(config)

  data = input_pipeline.load(config)
  steps_per_epoch = data.num_train // config.batch_size
  total_steps = steps_per_epoch * config.num_epochs
  model = model_from_config(config, data.num_classes)
  tx = optim.make_optimizer(config, steps_per_epoch)
  root_key = jax.random.PRNGKey(config.seed)
  init_key, data_key = jax.random.split(root_key)
  example = augment.eval_inputs(
      input_pipeline.gather_batch(data.train, jnp.arange(config.batch_size), 0,
                                  config.batch_size), augment.frame_modalities(config))
  probe_cfg = probe_config_from(config, data.num_classes)
  state = create_train_state(model, tx, example, init_key, probe_cfg)

  ckpts = checkpointing.Checkpoints(workdir, config.checkpoint_keep)
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, meta = restored
    history = meta["history"]
    logging.info("resumed from step %d in %s", int(state.step), workdir)
  else:
    history = []
    if config.init_from:
      state = checkpointing.restore_init_from(config.init_from, state)
      logging.info("initialised params from %s", config.init_from)
  start_step = int(state.step)
  if start_step % steps_per_epoch:
    raise RuntimeError(f"checkpoint at step {start_step} is not at an epoch boundary "
                       f"({steps_per_epoch} steps per epoch)")
  start_epoch = start_step // steps_per_epoch

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flatten(json.loads(config.to_json_best_effort())).items()
                          if isinstance(v, (int, float, str, bool))})
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  train_fn, collection = make_train_fn(model, tx, config, steps_per_epoch, state, example,
                                       probe_cfg)
  eval_fn = make_eval_fn(model, config.eval_batch_size, probe_cfg,
                         augment.frame_modalities(config))
  best_val = max((h["validation"]["accuracy"] for h in history), default=-1.0)

  print(f"training {config.method.name} on {config.dataset.name} ({', '.join(names)}): "
        f"{config.num_epochs} epochs x {steps_per_epoch} steps, workdir {workdir}", flush=True)
  step = start_step
  window_start, window_step = time.time(), step
  try:
    for epoch in range(start_epoch, config.num_epochs):
      epoch_start = time.time()
      perm = input_pipeline.epoch_permutation(data_key, epoch, data.num_train)
      metrics_acc = collection.empty()
      for batch_index in range(steps_per_epoch):
        state, metrics_acc = train_fn(state, metrics_acc, data.train, perm, batch_index)
        step += 1
        progress(step)
        if step % config.log_every_steps == 0 or batch_index == steps_per_epoch - 1:
          scalars = {k: float(v) for k, v in metrics_acc.compute().items()}
          _raise_if_unhealthy(state, names, steps_per_epoch)
          writer.write_scalars(step, {_tag(k): v for k, v in scalars.items()})
          now = time.time()
          rate = (step - window_step) / max(now - window_start, 1e-9)
          print(_progress_line(epoch, config.num_epochs, step, total_steps, scalars, names, rate,
                               (total_steps - step) / max(rate, 1e-9)), flush=True)
          window_start, window_step = now, step
          metrics_acc = collection.empty()
      record = {"epoch": epoch + 1}
      for split in ("validation", "test"):
        record[split] = evaluate(eval_fn, state, data.eval_splits[split], config.eval_batch_size)
        writer.write_scalars(step, {f"{'eval' if split == 'validation' else 'test'}/{k}": v
                                    for k, v in record[split].items()})
      record["seconds"] = time.time() - epoch_start
      history.append(record)
      is_best = record["validation"]["accuracy"] > best_val
      best_val = max(best_val, record["validation"]["accuracy"])
      ckpts.save(step, state, {"epoch": epoch + 1, "history": history}, is_best=is_best)
      print(f"epoch {epoch + 1}: val acc {record['validation']['accuracy']:.4f} "
            f"f1 {record['validation']['macro_f1']:.4f} | test acc "
            f"{record['test']['accuracy']:.4f} f1 {record['test']['macro_f1']:.4f} | "
            + " ".join(f"{m} {record['validation'][f'unimodal_accuracy_{m}']:.3f}" for m in names)
            + f" | probe gap {record['validation']['utilization_gap']:.3f}"
            + f" | {record['seconds']:.1f}s", flush=True)
      writer.flush()
  finally:
    ckpts.wait()
    ckpts.close()
    writer.flush()

  summary = _summary(history, config, workdir)
  path = os.path.join(workdir, SUMMARY_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)
  print(f"done: best val acc {summary['at_best_val']['validation']['accuracy']:.4f} at epoch "
        f"{summary['best_val_epoch']} (test {summary['at_best_val']['test']['accuracy']:.4f}); "
        f"summary {path}; TensorBoard: tensorboard --logdir {workdir}", file=sys.stdout, flush=True)
  return summary
