"""The compiled programs of a run: the train body with metric accumulation, the
eval body, and how S seeds share one program.

`make_train_body` and `make_eval_body` are one seed's un-jitted functions; a
`SeedAxis` maps them over the seeds of a sweep and jits them:

- "none" (S = 1): the body itself, its batch sharded over the data-parallel
  mesh when there are several devices (`parallel.data_mesh`);
- "vmap" (MLP encoders): `jax.vmap` over the seed axis, so every matmul is
  one batched op for all seeds (x4.5 per seed on an H100 for MOSEI's MLPs);
- "unroll" (convolutional encoders): the body traced once per seed into the
  same program. A vmapped convolution with per-seed kernels becomes a grouped
  convolution, which both XLA:CPU (densified) and cuDNN (9x slower for
  ResNet-18 on an H100) run far slower than S plain ones; unrolling keeps
  each seed's convolutions as fast as a single run's and still saves the
  per-run compile, data load and per-step dispatch.

Numerics: a vmapped step batches each matmul / convolution over seeds and an
unrolled one is fused differently, so XLA may reassociate float sums: a seed's
metrics in a sweep match its separate run to float tolerance, not bit for
bit. A one-seed sweep is a single run's program (mode "none").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from asgml_jax import augment, input_pipeline, optim, parallel, steps
from asgml_jax.config_checks import ConfigError
from asgml_jax.metrics import train_metrics_collection
from asgml_jax.state import distinct_buffers
from asgml_jax.tasks import CLASSIFICATION, Task


def metric_field(metric: str) -> str:
  """Metric name -> Collection field (an identifier): "probe/acc_audio" -> "probe__acc_audio"."""
  return metric.replace("/", "__")


def make_train_body(model, tx, parts, config, steps_per_epoch: int, state, example_batch,
                    probe_cfg, on_device: bool = True, mesh=None, coded: bool = False):
  """Un-jitted train step with metric accumulation, and its metrics Collection.

  on_device: (state, metrics_acc, train_data, perm, i) -> (state, metrics_acc),
  gathering batch i of `perm` from the device-resident split; otherwise
  (state, metrics_acc, batch) -> ..., for batches the host feeds
  (`input_pipeline.train_args` builds either argument list). The metric names
  are read off the step itself (`jax.eval_shape`), so each method logs
  whatever signals its transformations keep. parts: the stack's `StepParts`
  (the plan's); mesh: shard each batch over it (parallel.py); coded: the
  epoch's order carries row codes (a re-sampling method).
  """
  lr_fn = optim.lr_schedule(config, steps_per_epoch)
  frame_sizes = augment.frame_modalities(config)
  step_fn = functools.partial(steps.train_step, model=model, tx=tx,
                              unimodal_weight=config.loss.unimodal_weight, lr_fn=lr_fn,
                              probe_cfg=probe_cfg, parts=parts)
  metric_keys = sorted(jax.eval_shape(step_fn, state, example_batch)[1])
  collection = train_metrics_collection([metric_field(k) for k in metric_keys])

  def batch_body(state, metrics_acc, batch):
    batch = parallel.constrain_batch(batch, mesh)
    if frame_sizes:
      aug_key = jax.random.fold_in(jax.random.fold_in(state.rng, 0xA06), state.step)
      batch = augment.train_inputs(batch, aug_key, frame_sizes)
    new_state, metrics = step_fn(state, batch)
    fields = {metric_field(k): v for k, v in metrics.items()}
    merged = metrics_acc.merge(collection.single_from_model_output(**fields))
    if coded:   # a batch of padding entries is a skipped step: only the step count moves
      skip = input_pipeline.padding_batch(batch)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)
      new_state = keep(new_state, state.replace(step=state.step + 1))
      merged = keep(merged, metrics_acc)
    return new_state, merged

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


def make_eval_body(model, batch_size: int, probe_cfg, frame_sizes=None, on_device: bool = True,
                   mesh=None, eval_logits=None, task: Task = CLASSIFICATION):
  """Un-jitted eval step -> {head or probe: the task's counts} (classification:
  a confusion matrix): (state, split_data, start) slicing the device-resident
  split, or (state, batch). eval_logits: the stack's evaluation hook
  (`Evaluation.eval_logits`)."""

  def batch_body(state, batch):
    batch = parallel.constrain_batch(batch, mesh)
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    logits = steps.eval_step(state, batch, model=model, probe_cfg=probe_cfg,
                             eval_logits=eval_logits)
    return task.eval_counts(logits, batch)

  def slice_body(state, data, start):
    return batch_body(state, input_pipeline.slice_batch(data, start, batch_size))

  return slice_body if on_device else batch_body


def accumulate_confusions(eval_fn, state, data: input_pipeline.LoadedData, split: str,
                          batch_size: int) -> dict:
  """Sum of `eval_fn`'s counts over the split, still on the device."""
  total = None
  for start in range(0, data.eval_splits[split]["label"].shape[0], batch_size):
    part = eval_fn(state, *input_pipeline.eval_args(data, split, start, batch_size))
    total = part if total is None else {k: total[k].merge(part[k]) for k in total}
  return {k: v.counts for k, v in total.items()}


# ------------------------------------------------------------------ the seed axis

SEED_AXIS_MODES = ("auto", "vmap", "unroll")


def stack_trees(trees) -> object:
  """[tree_s] -> one tree with a leading seed axis on every leaf."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_tree(tree, index: int):
  """Seed `index`'s slice of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def seed_axis_mode(config, num_seeds: int, requested: str = "auto") -> str:
  """How the seed axis is compiled: "none", "vmap" or "unroll" (module docstring).

  One seed: "none", whatever is asked (there is no axis to map). auto:
  "unroll" when an encoder is convolutional, "vmap" when all are MLPs.
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
  if num_seeds == 1:
    return "none"
  if requested != "auto":
    return requested
  convolutional = any(config.modalities[m].encoder != "mlp" for m in config.modalities)
  return "unroll" if convolutional else "vmap"


@dataclasses.dataclass(frozen=True)
class SeedAxis:
  """How the S seeds of one program are laid out (mode from `seed_axis_mode`).

  In mode "none" nothing has a seed axis: states, permutations and metrics
  are one run's, and the mesh (if any) shards each batch. Otherwise every
  leaf has a leading axis of size S, and the mesh (a vmapped axis whose size
  divides by the device count) spreads the seeds over the devices.
  """
  mode: str
  num_seeds: int
  mesh: object = None

  @classmethod
  def for_run(cls, config, num_seeds: int, requested: str = "auto") -> "SeedAxis":
    mode = seed_axis_mode(config, num_seeds, requested)
    mesh = (parallel.data_mesh(config) if mode == "none"
            else parallel.seed_mesh(config, num_seeds, mode))
    return cls(mode, num_seeds, mesh)

  @property
  def stacked(self) -> bool:
    return self.mode != "none"

  def stack(self, trees):
    return stack_trees(trees) if self.stacked else distinct_buffers(trees[0])

  def unstack(self, tree, s: int):
    return unstack_tree(tree, s) if self.stacked else tree

  def per_seed(self, tree) -> list:
    """[seed s's values] of a (host) tree."""
    return [self.unstack(tree, s) for s in range(self.num_seeds)]

  def place(self, tree):
    """States (or anything with the seed axis) where the program expects them."""
    if self.stacked:
      return parallel.shard_seeds(tree, self.mesh)
    return parallel.replicate(tree, self.mesh)

  def place_data(self, data: input_pipeline.LoadedData) -> input_pipeline.LoadedData:
    """Device-resident splits replicated over the mesh (no copy per seed)."""
    if self.mesh is None or not data.on_device:
      return data
    return dataclasses.replace(data, train=parallel.replicate(data.train, self.mesh),
                               eval_splits=parallel.replicate(data.eval_splits, self.mesh))

  def keys(self, data_keys: list):
    """The data key(s) `input_pipeline.epoch_order` takes: a list for a seed axis."""
    return list(data_keys) if self.stacked else data_keys[0]

  def over(self, body, in_axes):
    """`body` mapped over the leading seed axis of the arguments `in_axes` marks 0."""
    if self.mode == "none":
      return body
    if self.mode == "vmap":
      return jax.vmap(body, in_axes=in_axes)

    def unrolled(*args):
      outs = [body(*(a if ax is None else unstack_tree(a, s) for a, ax in zip(args, in_axes)))
              for s in range(self.num_seeds)]
      return stack_trees(outs)
    return unrolled

  def compute(self, metrics_acc):
    """The accumulated metrics' values (per seed on a seed axis)."""
    return jax.vmap(lambda m: m.compute())(metrics_acc) if self.stacked else metrics_acc.compute()

  def empty_metrics(self, collection):
    """A fresh accumulator per seed (one run's: not placed, jit lays it out)."""
    if not self.stacked:
      return fresh_metrics(collection)
    return self.place(stack_trees([fresh_metrics(collection) for _ in range(self.num_seeds)]))


def make_programs(axis: SeedAxis, model, tx, parts, config, steps_per_epoch: int, one_state,
                  example_batch, probe_cfg, eval_batch_size: int, frame_sizes, on_device: bool,
                  eval_logits=None, coded: bool = False):
  """(train_fn, eval_fn, collection): one seed's bodies mapped over `axis` and jitted.

  train_fn(states, metrics, data, perms, i) and eval_fn(states, split, start)
  for device-resident data (the data shared, not copied per seed);
  train_fn(states, metrics, batches) and eval_fn(states, batch) for host-held
  data, the host gathering each seed's batch from its own permutation
  (`input_pipeline.train_args`). The state and metric accumulator are donated.
  """
  mesh = axis.mesh if axis.mode == "none" else None
  body, collection = make_train_body(model, tx, parts, config, steps_per_epoch, one_state,
                                     example_batch, probe_cfg, on_device, mesh, coded)
  train_axes = (0, 0, None, 0, None) if on_device else (0, 0, 0)
  train_fn = jax.jit(axis.over(body, train_axes), donate_argnums=donated_args(0, 1))
  eval_body = make_eval_body(model, eval_batch_size, probe_cfg, frame_sizes, on_device, mesh,
                             eval_logits, parts.task or CLASSIFICATION)
  eval_fn = jax.jit(axis.over(eval_body, (0, None, None) if on_device else (0, None)))
  return train_fn, eval_fn, collection


def evaluate_seeds(axis: SeedAxis, eval_fn, states, data, split: str, batch_size: int,
                   task: Task = CLASSIFICATION) -> list[dict]:
  """[metrics of seed s on `split`] (`task.summarize` of the summed counts)."""
  counts = jax.device_get(accumulate_confusions(eval_fn, states, data, split, batch_size))
  return [task.summarize(c) for c in axis.per_seed(counts)]
