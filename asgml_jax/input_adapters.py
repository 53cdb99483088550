"""Make stored arrays fit an encoder: the adapters a modality config may ask for.

A researcher's own features rarely arrive in the shape an encoder takes:
(40, 26) MFCC frames are neither the MLP's (D,) nor the CNN's (H, W, C).
Per modality (`modalities.<m>.*`), applied on the host to every split when
the data are loaded, in this order:

- `scale_uint8`: uint8 arrays → float32 in [0, 1] (x / 255);
- `input_adapter`: "flatten" → (prod(shape),) for the MLP; "add_channel" →
  shape + (1,) for a CNN; "none" (default) → as stored;
- `standardize`: per-feature (every position of one example) mean and std of
  the *train* split, applied to all splits (a std below 1e-6 counts as 1), so
  no statistic of validation or test leaks into training.

`input_shape` is the shape after adapting. `check_stored_shapes` compares the
dataset's declared shapes with the config *before* anything is built, and
names the adapter and `input_shape` that would fit.
"""

from __future__ import annotations

import math

import numpy as np

from asgml_jax.config_checks import ConfigError

ADAPTERS = ("none", "flatten", "add_channel")


def adapted_shape(stored: tuple, adapter: str) -> tuple:
  if adapter == "flatten":
    return (int(math.prod(stored)),)
  if adapter == "add_channel":
    return tuple(stored) + (1,)
  return tuple(stored)


def _suggestion(name: str, stored: tuple, encoder: str) -> str:
  if encoder == "mlp" and len(stored) != 1:
    return (f"; set --config.modalities.{name}.input_adapter=flatten "
            f"--config.modalities.{name}.input_shape=\"{adapted_shape(stored, 'flatten')}\"")
  if encoder != "mlp" and len(stored) == 2:
    return (f"; set --config.modalities.{name}.input_adapter=add_channel "
            f"--config.modalities.{name}.input_shape=\"{adapted_shape(stored, 'add_channel')}\"")
  return f"; set --config.modalities.{name}.input_shape=\"{tuple(stored)}\""


def check_stored_shapes(config, stored: dict[str, tuple], where: str) -> None:
  """ConfigError naming the modality, the shapes and the fix, if a stored
  per-example shape (after its adapter) is not the configured input_shape."""
  for name in config.modalities.keys():
    mod = config.modalities[name]
    if name not in stored:
      have = ", ".join(k for k, v in stored.items() if len(v) > 0)
      raise ConfigError(f"config.modalities.{name}: the dataset has no modality {name!r} "
                        f"(it has: {have})")
    if mod.image_augment == "imagenet":
      continue  # checked on the arrays (dtype, frames)
    got = adapted_shape(tuple(stored[name]), mod.input_adapter)
    want = tuple(mod.input_shape)
    if got != want:
      via = "" if mod.input_adapter == "none" else f" after input_adapter={mod.input_adapter}"
      raise ConfigError(f"config.modalities.{name}.input_shape: {want} but {where} holds "
                        f"{tuple(stored[name])}{via}"
                        + _suggestion(name, tuple(stored[name]), mod.encoder))


def adapt_splits(config, splits: dict[str, dict[str, np.ndarray]]) -> dict:
  """Every split's modality arrays adapted as the module docstring says."""
  out = {split: dict(arrays) for split, arrays in splits.items()}
  for name in config.modalities.keys():
    mod = config.modalities[name]
    for split in out:
      x = out[split][name]
      if mod.scale_uint8 and x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
      if mod.input_adapter != "none":
        x = x.reshape((x.shape[0],) + adapted_shape(x.shape[1:], mod.input_adapter))
      out[split][name] = x
    if mod.standardize:
      train = out["train"][name].astype(np.float64)
      mean = train.mean(axis=0)
      std = train.std(axis=0)
      std = np.where(std < 1e-6, 1.0, std)
      for split in out:
        out[split][name] = ((out[split][name] - mean) / std).astype(np.float32)
  return out
