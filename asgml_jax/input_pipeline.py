"""TFDS dataset -> arrays on the device (or the host), and batching.

Each split is read from TFDS once. Where it fits (`dataset.placement`:
"auto" compares the splits' bytes with `dataset.device_budget_gib`), it is
moved to the device and every train batch is gathered there from a per-epoch
permutation, so the host never feeds the training loop: synthetic, AV-Digits,
MMSA features, and one- or three-frame CREMA-D on a large GPU.

Larger datasets stay in host memory ("host"): the host gathers each batch
with the same per-epoch permutation (so a run's batches, and its results, do
not depend on the placement) and `jax.device_put`s it. Dispatch is
asynchronous, so the host gathers batch i+1 while the device computes batch i.
A dataset larger than host memory would need a streaming tf.data pipeline,
which this module does not have.

Evaluation splits are padded to a whole number of eval batches with a `mask`
that zeroes the padding in the metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np

from asgml_jax import distributed, parallel
from asgml_jax.config_checks import ConfigError, modality_names
from asgml_jax.input_adapters import adapt_splits, check_stored_shapes
from asgml_jax.methods.base import ROW_CODE
from data_prep.common import BadInputError, available_host_bytes, prepare
from data_prep.registry import builder_for


PLACEMENTS = ("auto", "device", "host")


@dataclasses.dataclass
class LoadedData:
  """Every split as arrays (device arrays, or numpy for "host"); eval splits
  padded and masked."""
  train: dict
  eval_splits: dict[str, dict]  # split name -> arrays incl. "mask"
  num_classes: int
  num_train: int
  eval_sizes: dict[str, int]
  placement: str = "device"
  eval_batch_size: int = 0  # config.eval_batch_size, at most the largest eval split

  @property
  def on_device(self) -> bool:
    return self.placement == "device"


def data_dir(config) -> str:
  return os.path.expanduser(config.dataset.data_dir or os.environ.get(
      "TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _hide_gpus_from_tensorflow() -> None:
  """tf.data only reads files; keep TensorFlow off the accelerator JAX uses."""
  import tensorflow as tf  # heavy (~5 s): only when a dataset is read
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised
    pass


def _check_data_dir(path: str, name: str | None = None) -> None:
  """The TFDS folder must be a folder (or be makeable under one) and, when
  `name` is to be built there, writable: one line otherwise."""
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = existing if existing == path else f"{existing} (in {path})"
    raise ConfigError(f"config.dataset.data_dir: {where} is a file, not a folder; name the "
                      "folder that holds (or will hold) the prepared datasets")
  if name is not None and not os.access(existing, os.W_OK):
    raise ConfigError(f"config.dataset.data_dir: {existing} is not writable, and {name} has to "
                      "be built there; name a writable folder")


def prepared_builder(config):
  """The configured dataset's TFDS builder, built from the raw files if needed."""
  _check_data_dir(data_dir(config))
  builder, raw_dir = builder_for(config, data_dir(config))
  check_stored_shapes(config, declared_shapes(builder),
                      f"the {config.dataset.name} dataset")  # before anything is built
  if not builder.is_prepared() and config.dataset.name != "synthetic" and not raw_dir:
    raise ConfigError(f"config.dataset.raw_dir: {config.dataset.name} is not prepared in "
                      f"{data_dir(config)} and no raw directory is set to build it from")
  if not builder.is_prepared():
    _check_data_dir(data_dir(config), config.dataset.name)
  if distributed.is_primary():
    prepare(builder, raw_dir=raw_dir)
  if distributed.process_count() > 1:
    # One process builds the dataset (two would write the same files); the
    # others wait for it, then read what it wrote.
    distributed.barrier("dataset prepared")
    if not distributed.is_primary():
      builder, _ = builder_for(config, data_dir(config))
  bad_files = getattr(builder, "bad_files", None)
  if bad_files is not None and bad_files.skipped:
    print(bad_files.summary(), flush=True)
  return builder


def declared_shapes(builder) -> dict[str, tuple]:
  """Per-example shapes of the builder's tensor features, known before it is built."""
  out = {}
  for name, feature in builder.info.features.items():
    shape = getattr(feature, "shape", None)
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
      out[name] = shape
  return out


def label_key(config) -> str:
  """The dataset feature used as the class label (MMSA offers two)."""
  if config.dataset.name == "mmsa" and config.dataset.mmsa.label == "binary":
    return "label_binary"
  return "label"


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
  """The split's arrays; a prepared dataset whose files are damaged (a
  truncated or overwritten shard) is a BadInputError saying how to rebuild it."""
  import tensorflow as tf  # heavy: only when a dataset is read
  import tensorflow_datasets as tfds
  try:
    ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
    return {k: np.asarray(v) for k, v in tfds.as_numpy(ds).items()}
  except (tf.errors.OpError, OSError, ValueError) as err:
    text = re.sub(r"\{\{function_node[^}]*\}\}\s*", "", str(getattr(err, "message", "") or err))
    first = (text.strip().splitlines() or [""])[0][:200]
    raise BadInputError(
        f"{builder.data_dir}: the prepared {split} split cannot be read "
        f"({type(err).__name__}: {first}); the prepared files are damaged: delete "
        f"{builder.data_dir} and rerun to build it again") from None


def _check_shapes(config, arrays: dict, split: str) -> None:
  """The adapted arrays against the config (frames for imagenet augmentation
  are checked only here: their dtype and frame count)."""
  for name in modality_names(config):
    mod = config.modalities[name]
    want = tuple(mod.input_shape)
    got = tuple(arrays[name].shape[1:])
    if mod.image_augment == "imagenet":
      if arrays[name].dtype != np.uint8 or len(got) != 4 or got[0] != want[0] or got[-1] != 3:
        raise ConfigError(f"config.modalities.{name}.image_augment: imagenet needs uint8 frames "
                          f"({want[0]}, H, W, 3) but the {split} split holds {got} "
                          f"{arrays[name].dtype}")
    elif got != want:
      raise ConfigError(f"config.modalities.{name}.input_shape: {want} but the {split} split "
                        f"holds {got}")


def _pad_to_multiple(arrays: dict, multiple: int) -> dict:
  n = len(arrays["label"])
  padded_n = -(-n // multiple) * multiple
  out = {k: np.concatenate([v, np.zeros((padded_n - n,) + v.shape[1:], v.dtype)])
         for k, v in arrays.items()}
  out["mask"] = (np.arange(padded_n) < n).astype(np.float32)
  return out


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def choose_placement(config, num_bytes: int) -> str:
  """"device" or "host" for splits of `num_bytes` (see the module docstring)."""
  requested = config.dataset.placement
  if requested != "auto":
    return requested
  return "device" if num_bytes <= config.dataset.device_budget_gib * 2**30 else "host"


def free_device_bytes() -> int | None:
  """Bytes the first device can still allocate: the accelerator's allocator
  limit minus what is in use, or the host's MemAvailable for the CPU backend
  (None where neither is known)."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return available_host_bytes()


MEMORY_HEADROOM = 0.8  # of the free bytes; the rest is for parameters and activations


def check_memory(config, placement: str, data_bytes: int, batch_bytes: int,
                 free: int | None) -> str:
  """The placement to use after comparing what it needs with `free` bytes:
  device-resident splits that would not fit fall back to the host under
  "auto" (with a note) and are refused under "device"; the largest batch
  must fit either way. Activations are not estimated: they depend on the
  encoders, and XLA reports them only after compiling."""
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  if free is None:
    return placement
  budget = MEMORY_HEADROOM * free
  if placement == "device" and data_bytes + batch_bytes > budget:
    if config.dataset.placement == "device":
      raise ConfigError(f"config.dataset.placement: 'device' needs {gib(data_bytes)} for the "
                        f"splits but {gib(free)} is free on {jax.devices()[0].platform}; use "
                        "'auto' or 'host'")
    print(f"note: the splits ({gib(data_bytes)}) do not fit in the {gib(free)} free on the "
          "device; feeding batches from the host", flush=True)
    placement = "host"
  if batch_bytes > budget:
    raise ConfigError(f"config.batch_size/eval_batch_size: the largest batch needs "
                      f"{gib(batch_bytes)} of inputs but {gib(free)} is free; lower them")
  return placement


def effective_eval_batch_size(config, eval_sizes: dict[str, int]) -> int:
  """config.eval_batch_size, capped at the largest eval split (rounded up to a
  multiple of the data-parallel device count): a larger batch would only
  evaluate padding, and pad every split to its size in memory."""
  devices = 1 if config.parallel.data_parallel == "off" else jax.device_count()
  largest = -(-max(eval_sizes.values()) // devices) * devices
  if config.eval_batch_size <= largest:
    return config.eval_batch_size
  print(f"note: config.eval_batch_size {config.eval_batch_size} is larger than the largest "
        f"evaluation split ({max(eval_sizes.values())} examples); using {largest}", flush=True)
  return largest


def load(config) -> LoadedData:
  """Prepares the configured dataset (if needed) and returns its splits where
  `choose_placement` puts them."""
  _hide_gpus_from_tensorflow()
  builder = prepared_builder(config)
  names = modality_names(config)
  label = label_key(config)
  # Every configured modality is a declared feature (checked in prepared_builder).
  read = {split: _read_split(builder, split) for split in ("train", "validation", "test")}
  adapted = adapt_splits(config, {s: {k: a[k] for k in names} for s, a in read.items()})
  splits = {}
  for split, arrays in adapted.items():
    _check_shapes(config, arrays, split)
    splits[split] = arrays
    splits[split]["label"] = read[split][label].astype(np.int32)
  if len(splits["train"]["label"]) < config.batch_size:
    raise ConfigError(f"config.batch_size: {config.batch_size} is larger than the training "
                      f"split ({len(splits['train']['label'])} examples)")
  num_classes = builder.info.features[label].num_classes
  eval_sizes = {s: len(splits[s]["label"]) for s in ("validation", "test")}
  for split, size in eval_sizes.items():
    if not size:
      raise ConfigError(f"config.dataset: the {split} split of {config.dataset.name} is empty")
  eval_batch = effective_eval_batch_size(config, eval_sizes)
  padded = {s: _pad_to_multiple(splits[s], eval_batch) for s in ("validation", "test")}
  data_bytes = tree_bytes(padded) + tree_bytes(splits["train"])
  per_example = tree_bytes(jax.tree.map(lambda x: x[:1], splits["train"]))
  placement = check_memory(config, choose_placement(config, data_bytes),
                           data_bytes, per_example * max(config.batch_size, eval_batch),
                           free_device_bytes())
  if jax.process_count() > 1 and placement == "device":
    # Device-resident data would put every split on every process's devices;
    # host-fed, each process transfers only its slice of each batch.
    logging.info("%d processes: each feeds its own slice of each batch from the host",
                 jax.process_count())
    placement = "host"
  place = (lambda tree: jax.tree.map(jnp.asarray, tree)) if placement == "device" else (
      lambda tree: tree)
  eval_splits = {s: place(padded[s]) for s in ("validation", "test")}
  train = splits["train"]
  return LoadedData(train=place(train), eval_splits=eval_splits, num_classes=num_classes,
                    num_train=len(train["label"]), eval_sizes=eval_sizes,
                    placement=placement, eval_batch_size=eval_batch)


def epoch_permutation(data_key: jnp.ndarray, epoch: int, num_examples: int) -> jnp.ndarray:
  """The train order of one epoch: a function of (seed, epoch) only, so a
  resumed run sees exactly the batches an uninterrupted one would."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)




def split_row_codes(idx, num_rows: int):
  """Coded order entries -> (rows, codes): an entry is row + num_rows · code.

  A method that re-samples the training set (valuation) orders an epoch with
  coded entries, so one row can appear several times with different codes
  (e.g. "only audio kept"); the code reaches the train step as
  batch["row_code"]. Plain permutations have code 0 everywhere; a padding
  entry (`PAD_ENTRY`, −1) decodes to code −1 (its row, num_rows − 1, is read
  but never trained: `padding_batch`)."""
  return idx % num_rows, idx // num_rows


def padding_batch(batch: dict):
  """Whether a coded batch is padding (a skipped step): orders put padding
  entries after every real one, in whole batches."""
  return batch[ROW_CODE][..., 0] < 0


def gather_batch(data: dict, perm: jnp.ndarray, batch_index, batch_size: int,
                 coded: bool = False) -> dict:
  """Batch `batch_index` of the permutation, gathered on the device (jit-safe);
  coded: the entries carry row codes (batch["row_code"])."""
  idx = jax.lax.dynamic_slice_in_dim(perm, batch_index * batch_size, batch_size)
  if not coded:
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
  rows, codes = split_row_codes(idx, data["label"].shape[0])
  batch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), data)
  return {**batch, ROW_CODE: codes.astype(jnp.int32)}


def take_rows(data: dict, on_device: bool, idx) -> dict:
  """Rows `idx` of every array, on the device: gathered there when the data is
  device-resident, else sliced on the host and transferred (between-epoch
  passes of the epoch hooks, not the jitted train loop)."""
  if on_device:
    return jax.tree.map(lambda x: jnp.take(x, jnp.asarray(idx), axis=0), data)
  return jax.device_put({k: v[idx] for k, v in data.items()})


def fixed_size_batches(arrays: dict, on_device: bool, count: int, size: int):
  """Yields (rows, real) over the first `count` rows of `arrays` in batches of
  `size`: the last batch is padded by repeating row count − 1, so one compiled
  shape serves every batch; `real` rows of each batch are data (between-epoch
  passes of the epoch hooks)."""
  for start in range(0, count, size):
    idx = np.minimum(np.arange(start, start + size), count - 1)
    yield take_rows(arrays, on_device, idx), min(size, count - start)


def slice_batch(data: dict, start, batch_size: int) -> dict:
  return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, batch_size), data)


def epoch_order(data: LoadedData, data_keys, epoch: int):
  """The epoch's permutation per data key, stacked (S, N) for a list of keys
  or (N,) for one key; a device array, or numpy for host-held data."""
  if isinstance(data_keys, (list, tuple)):
    perm = jnp.stack([epoch_permutation(k, epoch, data.num_train) for k in data_keys])
  else:
    perm = epoch_permutation(data_keys, epoch, data.num_train)
  return perm if data.on_device else np.asarray(perm)


def train_args(data: LoadedData, perm, batch_index: int, batch_size: int,
               coded: bool = False) -> tuple:
  """What the train fn takes after (state, metrics): the device data, the
  permutation and the batch index; or, for host-held data, the batch itself
  (gathered on the host, (S, B, ...) for an (S, N) permutation). coded: the
  order's entries carry row codes (`split_row_codes`)."""
  if data.on_device:
    return (data.train, perm, batch_index)
  idx = np.asarray(perm)[..., batch_index * batch_size:(batch_index + 1) * batch_size]
  codes = None
  if coded:
    idx, codes = split_row_codes(idx, data.num_train)
  if jax.process_count() > 1:
    if coded:
      raise ValueError("a re-sampling method (row codes) does not run over several processes")
    return (_process_batch(data.train, idx),)
  batch = {k: v[idx] for k, v in data.train.items()}
  if coded:
    batch[ROW_CODE] = codes.astype(np.int32)
  return (jax.device_put(batch),)


def _process_batch(arrays: dict, rows: np.ndarray) -> dict:
  """Several processes: the global batch, each process reading only its rows."""
  return distributed.process_batch(arrays, np.asarray(rows),
                                   parallel.batch_sharded(parallel.all_devices_mesh()))


def eval_args(data: LoadedData, split: str, start: int, batch_size: int) -> tuple:
  """What the eval fn takes after the state (as `train_args`)."""
  arrays = data.eval_splits[split]
  if data.on_device:
    return (arrays, start)
  if jax.process_count() > 1:
    return (_process_batch(arrays, np.arange(start, start + batch_size)),)
  return (jax.device_put({k: v[start:start + batch_size] for k, v in arrays.items()}),)


FINGERPRINT_ROWS = 64   # rows per array whose bytes a data fingerprint hashes


def fingerprint(data: LoadedData) -> dict:
  """What identifies the data a run trains and is evaluated on: each split's
  size, every array's shape and dtype, and a SHA-256 over every split's labels
  and the bytes of FINGERPRINT_ROWS evenly spaced rows of each array (all of a
  large dataset would take minutes to hash; relabelled, added, removed or
  reordered rows, and most edited features, change it)."""
  digest = hashlib.sha256()
  arrays = {}
  splits = {"train": data.train, **data.eval_splits}
  for split in sorted(splits):
    for name in sorted(splits[split]):
      values = splits[split][name]
      arrays[f"{split}/{name}"] = [list(values.shape), str(values.dtype)]
      digest.update(f"{split}/{name}".encode())
      if isinstance(values, jax.Array) and not values.is_fully_addressable:
        continue   # spread over processes: its shape is recorded, its values not
      rows = np.unique(np.linspace(0, len(values) - 1, FINGERPRINT_ROWS).astype(np.int64))
      picked = values if name == "label" else values[rows]
      digest.update(np.ascontiguousarray(np.asarray(picked)).tobytes())
  return {"num_train": int(data.num_train), "eval_sizes": dict(data.eval_sizes),
          "num_classes": int(data.num_classes), "arrays": arrays,
          "sha256": digest.hexdigest()}

