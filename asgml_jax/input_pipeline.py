"""TFDS dataset -> device-resident arrays, and on-device batching.

Small datasets (synthetic, AV-Digits, MMSA features) fit in device memory:
each split is read from TFDS once, moved to the device, and every train batch
is gathered on the device from a per-epoch permutation, so the host never
feeds the training loop. Evaluation splits are padded to a whole number of
eval batches with a `mask` that zeroes the padding in the metrics.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from asgml_jax.config_schema import ConfigError, modality_names


@dataclasses.dataclass
class DeviceData:
  """Every split as device arrays; eval splits padded and masked."""
  train: dict
  eval_splits: dict[str, dict]  # split name -> arrays incl. "mask"
  num_classes: int
  num_train: int
  eval_sizes: dict[str, int]


def data_dir(config) -> str:
  return os.path.expanduser(config.dataset.data_dir or os.environ.get(
      "TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _hide_gpus_from_tensorflow() -> None:
  """tf.data only reads files; keep TensorFlow off the accelerator JAX uses."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised
    pass


def prepared_builder(config):
  """The configured dataset's TFDS builder, built from the raw files if needed."""
  from data_prep.common import prepare
  from data_prep.registry import builder_for
  builder, raw_dir = builder_for(config, data_dir(config))
  if not builder.is_prepared() and config.dataset.name != "synthetic" and not raw_dir:
    raise ConfigError(f"config.dataset.raw_dir: {config.dataset.name} is not prepared in "
                      f"{data_dir(config)} and no raw directory is set to build it from")
  prepare(builder, raw_dir=raw_dir)
  bad_files = getattr(builder, "bad_files", None)
  if bad_files is not None and bad_files.skipped:
    print(bad_files.summary(), flush=True)
  return builder


def label_key(config) -> str:
  """The dataset feature used as the class label (MMSA offers two)."""
  if config.dataset.name == "mmsa" and config.dataset.mmsa.label == "binary":
    return "label_binary"
  return "label"


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  return {k: np.asarray(v) for k, v in tfds.as_numpy(ds).items()}


def _check_shapes(config, arrays: dict, split: str) -> None:
  for name in modality_names(config):
    if name not in arrays:
      raise ConfigError(f"config.modalities.{name}: the dataset has no modality {name!r} "
                        f"(it has: {', '.join(k for k in arrays if k != 'label')})")
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


def load(config) -> DeviceData:
  """Prepares the configured dataset (if needed) and returns it on the device."""
  _hide_gpus_from_tensorflow()
  builder = prepared_builder(config)
  names = modality_names(config)
  label = label_key(config)
  splits = {}
  for split in ("train", "validation", "test"):
    arrays = _read_split(builder, split)
    _check_shapes(config, arrays, split)
    splits[split] = {k: arrays[k] for k in names}
    splits[split]["label"] = arrays[label].astype(np.int32)
  if len(splits["train"]["label"]) < config.batch_size:
    raise ConfigError(f"config.batch_size: {config.batch_size} is larger than the training "
                      f"split ({len(splits['train']['label'])} examples)")
  num_classes = builder.info.features[label].num_classes
  to_device = lambda tree: jax.tree.map(jnp.asarray, tree)
  eval_splits = {s: to_device(_pad_to_multiple(splits[s], config.eval_batch_size))
                 for s in ("validation", "test")}
  train = splits["train"]
  return DeviceData(train=to_device(train), eval_splits=eval_splits, num_classes=num_classes,
                    num_train=len(train["label"]),
                    eval_sizes={s: len(splits[s]["label"]) for s in ("validation", "test")})


def epoch_permutation(data_key: jnp.ndarray, epoch: int, num_examples: int) -> jnp.ndarray:
  """The train order of one epoch: a function of (seed, epoch) only, so a
  resumed run sees exactly the batches an uninterrupted one would."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def gather_batch(data: dict, perm: jnp.ndarray, batch_index, batch_size: int) -> dict:
  """Batch `batch_index` of the permutation, gathered on the device (jit-safe)."""
  idx = jax.lax.dynamic_slice_in_dim(perm, batch_index * batch_size, batch_size)
  return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)


def slice_batch(data: dict, start, batch_size: int) -> dict:
  return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, batch_size), data)
