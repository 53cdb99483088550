"""Your own data: per-split .npz files, modalities read off the files.

    ASGML_NPZ_DIR=~/data/mine python -m launch.train --config configs/npz.py --workdir runs/mine
    ASGML_NPZ_DIR=~/data/mine python -m launch.sweep --config configs/npz.py \\
        --variants baseline,ogm_ge,boost,boost_ogm --workdir runs/mine_grid

The folder ($ASGML_NPZ_DIR) holds `train.npz` and `test.npz` (and optionally
`validation.npz`; without it 10 % of train is held out, seeded):

    label      (N,) integers 0..C-1
    <name>     (N, ...) one array per modality, any name but "label";
               real numbers (float, int, uint8 or bool)
    class_names.json   optional: ["cat", "dog", ...], one name per class

Each modality gets an encoder from its per-example shape, and the adapter
that makes the shape fit it (asgml_jax/input_adapters.py):

    (D,)          mlp on the features, standardized with train statistics
    (H, W)        small_cnn, input_adapter=add_channel -> (H, W, 1), standardized
    (H, W, C)     small_cnn; uint8 scaled to [0, 1], other dtypes standardized
    (T, H, W, C)  small_cnn over T frames (folded into the batch); as (H, W, C)

Change any of it on the command line, e.g.
`--config.modalities.audio.encoder=mlp --config.modalities.audio.input_adapter=flatten
--config.modalities.audio.input_shape="(1040,)"`. The dataset is built once
into ~/tensorflow_datasets (or --config.dataset.data_dir / $TFDS_DATA_DIR);
editing a file makes a new one. Variants: `configs/npz.py:<variant>`.
"""

import os
import zipfile

import numpy as np

from asgml_jax.config_schema import base_config, modality_config
from data_prep.common import MODALITY_NAME, RESERVED_NAMES
from configs.variants import apply_variant

ENV = "ASGML_NPZ_DIR"


def _stored(path: str) -> dict[str, tuple[tuple, np.dtype]]:
  """{key: (per-example shape, dtype)} of an .npz file, read from its headers only."""
  out = {}
  with zipfile.ZipFile(path) as archive:
    for name in archive.namelist():
      if name.endswith(".npy"):
        with archive.open(name) as f:
          version = np.lib.format.read_magic(f)
          read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                         else np.lib.format.read_array_header_2_0)
          shape, _, dtype = read_header(f)  # the header only, not the data
        out[name[:-4]] = (tuple(shape[1:]), np.dtype(dtype))
  return out


def modality_for(shape: tuple, dtype: np.dtype):
  """The encoder and adapter a stored per-example shape gets (module docstring)."""
  if len(shape) == 1:
    return modality_config("mlp", shape, standardize=True)
  if len(shape) == 2:
    return modality_config("small_cnn", shape + (1,), input_adapter="add_channel",
                           standardize=True)
  if dtype == np.uint8:
    return modality_config("small_cnn", shape, scale_uint8=True)
  return modality_config("small_cnn", shape, standardize=True)


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "npz"
  raw = os.environ.get(ENV)
  if not raw:
    raise ValueError(f"set ${ENV} to the folder holding your train.npz and test.npz")
  train = os.path.join(os.path.expanduser(raw), "train.npz")
  if not os.path.isfile(train):
    raise ValueError(f"${ENV}={raw}: no train.npz there")
  try:
    stored = _stored(train)
  except (OSError, ValueError, zipfile.BadZipFile) as err:
    raise ValueError(f"{train}: does not read as an .npz archive ({err})") from None
  config.dataset.raw_dir = raw
  config.dataset.npz.name = os.path.basename(os.path.normpath(os.path.expanduser(raw)))
  for name, (shape, dtype) in sorted(stored.items()):
    if name == "label":
      continue
    if name in RESERVED_NAMES or not MODALITY_NAME.fullmatch(name):
      raise ValueError(f"{train}: array {name!r} cannot be a modality (names are letters, "
                       f"digits and _, starting with a letter, and not "
                       f"{' or '.join(RESERVED_NAMES)}); rename it")
    config.modalities[name] = modality_for(shape, dtype)
  config.model.feature_dim = 64
  config.optimizer.learning_rate = 1e-2
  config.num_epochs = 20
  config.batch_size = 64
  return apply_variant(config, arg)
