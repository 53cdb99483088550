"""Bring your own dataset: a folder of per-split `.npz` files as a TFDS dataset.

Layout (the folder is `raw_dir`):

    train.npz        one array per modality, shape (N, ...), plus `label` (N,) ints
    test.npz         same keys and per-example shapes
    validation.npz   optional; without it a seeded fraction of train is held out
    class_names.json optional: ["cat", "dog", ...]; labels must index it

Any config then trains on it by naming the modalities (the npz keys), their
shapes and encoders, e.g. `dataset.name="npz"`, `dataset.raw_dir=".../mydata"`,
`modalities.audio=modality_config("mlp", (40,))`. Arrays keep uint8 (frames
for `image_augment="imagenet"`); every other dtype is stored as float32.

The builder config name is the dataset name plus a hash of the files' bytes,
so editing a file makes a new dataset instead of silently reusing the old one.
Without class_names.json the classes are 0..max(label).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from data_prep.common import (MODALITY_NAME, RESERVED_NAMES, build_identity, BadFiles,
                              BadInputError, carve_validation, require_dir)

SPLIT_FILES = {"train": "train.npz", "validation": "validation.npz", "test": "test.npz"}
LABEL_GAP_SLACK = 2


def load_npz(path: str) -> dict[str, np.ndarray]:
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise BadInputError(f"{path}: does not load as an .npz archive ({e})") from None
  out = {}
  with archive as f:
    for key in f.files:
      _check_declared_size(path, f.zip, key)
      try:
        out[key] = f[key]
      except ValueError as e:
        if "pickle" in str(e).lower():  # object arrays need pickle, which is never enabled
          raise BadInputError(f"{path}: '{key}' cannot be read without pickle ({e}); store "
                              "numeric arrays") from None
        raise BadInputError(f"{path}: '{key}' is damaged ({e})") from None
      except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise BadInputError(f"{path}: '{key}' is damaged ({e})") from None
  return out


def _check_declared_size(path: str, archive: zipfile.ZipFile, key: str) -> None:
  """Refuses an array whose header declares more bytes than its member holds
  (a truncated file, or a header claiming terabytes) before NumPy allocates them."""
  member = f"{key}.npy"
  if member not in archive.namelist():
    return
  stored = archive.getinfo(member).file_size
  try:
    with archive.open(member) as handle:
      version = np.lib.format.read_magic(handle)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read_header(handle)
      stored -= handle.tell()   # the bytes after the header
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise BadInputError(f"{path}: '{key}' has no readable array header ({e})") from None
  if dtype.hasobject:
    return   # refused as needing pickle when read
  declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
  if declared > stored:
    raise BadInputError(f"{path}: '{key}' declares shape {tuple(shape)} of {dtype} "
                        f"({declared} bytes) but holds {stored} bytes of data; the file is damaged")


def _fingerprint(paths: list[str]) -> str:
  h = hashlib.sha1()
  for p in sorted(paths):
    with open(p, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class NpzLayout:
  """What a scan of the folder found: files, feature shapes/dtypes, classes."""
  raw_dir: str
  files: dict  # split -> path (validation may be absent)
  shapes: dict  # modality -> per-example shape
  dtypes: dict  # modality -> stored numpy dtype
  class_names: tuple


def scan(raw_dir: str) -> NpzLayout:
  """Checks the folder (keys, shapes, labels) before anything is written."""
  raw = require_dir(raw_dir, "npz dataset")
  files = {s: os.path.join(raw, f) for s, f in SPLIT_FILES.items()
           if os.path.isfile(os.path.join(raw, f))}
  for split in ("train", "test"):
    if split not in files:
      raise BadInputError(f"{os.path.join(raw, SPLIT_FILES[split])}: the {split} split is missing")
  arrays = {s: load_npz(p) for s, p in files.items()}
  shapes, dtypes, max_label, seen = None, None, -1, set()
  for split, arrs in arrays.items():
    path = files[split]
    if "label" not in arrs:
      raise BadInputError(f"{path}: has no 'label' array (keys: {', '.join(sorted(arrs))})")
    label = arrs["label"]
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise BadInputError(f"{path}: 'label' must be a 1-D integer array, got {label.shape} "
                          f"{label.dtype}")
    if label.size and label.min() < 0:
      raise BadInputError(f"{path}: 'label' holds negative class {int(label.min())}")
    if not label.size:
      raise BadInputError(f"{path}: the {split} split has no examples")
    max_label = max(max_label, int(label.max()))
    seen.update(np.unique(label).tolist())
    mods = {k: v for k, v in arrs.items() if k != "label"}
    if not mods:
      raise BadInputError(f"{path}: holds no modality arrays besides 'label'")
    for k in mods:
      if k in RESERVED_NAMES:
        raise BadInputError(f"{path}: an array may not be named '{k}' (the input pipeline's "
                            f"own key); rename it")
      if not MODALITY_NAME.fullmatch(k):
        raise BadInputError(f"{path}: array name {k!r} is not a modality name (letters, digits "
                            "and _, starting with a letter: it becomes a config key); rename it")
    for k, v in mods.items():
      if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)
              or v.dtype == np.bool_):
        raise BadInputError(f"{path}: '{k}' is a {v.dtype} array; modalities must be real "
                            "numbers (int, uint, float or bool)")
      if v.shape[:1] != label.shape:
        raise BadInputError(f"{path}: '{k}' has {v.shape[0] if v.ndim else 0} examples but "
                            f"'label' has {label.shape[0]}")
    these = {k: v.shape[1:] for k, v in mods.items()}
    if shapes is None:
      shapes = these
      dtypes = {k: (np.uint8 if v.dtype == np.uint8 else np.float32) for k, v in mods.items()}
    elif these != shapes:
      raise BadInputError(f"{path}: modalities/shapes {these} differ from train.npz's {shapes}")
  names_path = os.path.join(raw, "class_names.json")
  if os.path.isfile(names_path):
    try:
      with open(names_path) as f:
        names = json.load(f)
    except ValueError as e:
      raise BadInputError(f"{names_path}: not valid JSON ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
      raise BadInputError(f"{names_path}: must be a JSON list of class-name strings")
    if max_label >= len(names):
      raise BadInputError(f"{raw}: label {max_label} is outside the {len(names)} classes of "
                          "class_names.json")
    class_names = tuple(names)
  else:
    _check_dense_labels(raw, max_label, seen)
    class_names = tuple(str(i) for i in range(max_label + 1))
  if len(class_names) < 2:
    raise BadInputError(f"{raw}: needs at least 2 classes, found {len(class_names)}")
  return NpzLayout(raw, files, shapes, dtypes, class_names)


def _check_dense_labels(raw: str, max_label: int, seen: set) -> None:
  """Without class_names.json the classes are 0..max(label): refuse labels
  that would make a model far wider than the classes present (a label of
  1000 among ten classes, or 2**63, which would also build 2**63 names). A
  few classes absent from every split are allowed (LABEL_GAP_SLACK)."""
  missing = max_label + 1 - len(seen)
  if missing > max(LABEL_GAP_SLACK, (max_label + 1) // 10):
    raise BadInputError(
        f"{raw}: labels must be 0..C-1 without gaps, but the largest is {max_label} and only "
        f"{len(seen)} distinct values occur; renumber them, or add class_names.json naming "
        "every class")


@dataclasses.dataclass(eq=False)
class NpzConfig(tfds.core.BuilderConfig):
  layout: NpzLayout | None = None
  validation_fraction: float = 0.1
  split_seed: int = 0


class NpzDataset(tfds.core.GeneratorBasedBuilder):
  """Per-split .npz files -> TFDS (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Arrays per modality + label from per-split npz files."}

  def __init__(self, *, config: NpzConfig, skip_bad: bool = False, **kwargs):
    self.bad_files = BadFiles(skip_bad)
    super().__init__(config=build_identity(config, skip_bad), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    layout = self.builder_config.layout
    features = {k: tfds.features.Tensor(shape=s, dtype=layout.dtypes[k])
                for k, s in layout.shapes.items()}
    features["label"] = tfds.features.ClassLabel(names=list(layout.class_names))
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                          homepage="file://" + layout.raw_dir)

  def _split_generators(self, dl_manager):
    del dl_manager  # the layout was scanned at construction
    cfg = self.builder_config
    layout = cfg.layout
    arrays = {s: load_npz(p) for s, p in layout.files.items()}
    indices = {s: list(range(len(a["label"]))) for s, a in arrays.items()}
    if "validation" not in arrays:
      train_idx, val_idx = carve_validation(indices["train"], cfg.validation_fraction,
                                            cfg.split_seed)
      return {"train": self._generate_examples(arrays["train"], train_idx, "train"),
              "validation": self._generate_examples(arrays["train"], val_idx, "train"),
              "test": self._generate_examples(arrays["test"], indices["test"], "test")}
    return {s: self._generate_examples(arrays[s], indices[s], s) for s in arrays}

  def _generate_examples(self, arrays, indices, source):
    layout = self.builder_config.layout
    path = layout.files[source]
    for i in indices:
      example = {k: arrays[k][i].astype(layout.dtypes[k]) for k in layout.shapes}
      bad = [k for k, v in example.items() if v.dtype != np.uint8 and not np.all(np.isfinite(v))]
      if bad:
        self.bad_files.report(f"{path}[{i}]", f"non-finite values in {', '.join(bad)}")
        continue
      example["label"] = int(arrays["label"][i])
      yield f"{source}_{i}", example


def builder_for_dir(raw_dir: str, *, name: str | None = None, validation_fraction: float = 0.1,
                    split_seed: int = 0, **kwargs) -> NpzDataset:
  layout = scan(raw_dir)
  base = re.sub(r"[^a-z0-9_]+", "_", (name or os.path.basename(layout.raw_dir)).lower()).strip("_")
  tag = _fingerprint(list(layout.files.values()))
  config = NpzConfig(name=f"{base or 'data'}_{tag}_v{validation_fraction:g}_s{split_seed}",
                     layout=layout, validation_fraction=validation_fraction,
                     split_seed=split_seed, description=f"npz files in {layout.raw_dir}")
  return NpzDataset(config=config, **kwargs)
