"""MMSA feature pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS) as a TFDS dataset.

An MMSA pickle is `{"train"|"valid"|"test": {"text" (N, T, Dt), "audio" (N, T,
Da), "vision" (N, T, Dv), "regression_labels" (N,), optional "audio_lengths",
"vision_lengths", "text_bert" (N, 3, T: ids, mask, segments), "id"}}`.

- The dataset is named from its feature sizes (text/audio/vision): MOSI
  768/5/20, MOSEI 768/74/35, CH-SIMS 768/33/709. The seeds' "MOSEI"
  `unaligned_39.pkl` has 768/33/709 features — it is CH-SIMS (the seeds'
  code read it as MOSEI) and is built and named as such. Unknown sizes get
  a generic `mmsa_<Dt>_<Da>_<Dv>`.
- Each modality is mean-pooled over time, masking padding: audio/vision by
  their `*_lengths`, text by the BERT attention mask when the pickle has
  `text_bert` (else every step). Non-finite values (MOSEI's audio has -inf)
  are set to 0 first, as MMSA's loader does.
- Labels from the regression label, by MMSA's own 3-class rule per dataset:
  CH-SIMS thresholds (-0.1, 0.1] for neutral; MOSI/MOSEI round(clip(y, -1,
  1)), i.e. neutral for |y| <= 0.5. `label_binary` is MMSA's "has-0" binary:
  negative (y < 0) vs non-negative.
- MMSA's train/valid/test are kept; features are standardised per dimension
  with train-split statistics only (the seeds' code used each split's own).
- `pooling="none"` (`config.dataset.mmsa.pooling`) keeps the sequences for the
  `transformer` encoder: each modality is stored as (T, D+1), its D features
  standardised per dimension with the mean/std over the real steps of the
  train split (padding set to 0 after), and a last column of 1 for real steps
  and 0 for padding (the mask the encoder reads with
  `sequence_mask=last_column`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from data_prep.common import build_identity, BadFiles, BadInputError, require_file

KNOWN = {(768, 5, 20): "cmu_mosi", (768, 74, 35): "cmu_mosei", (768, 33, 709): "ch_sims"}
SPLITS = {"train": "train", "validation": "valid", "test": "test"}
MODALITIES = ("text", "audio", "vision")


def read_pickle(path: str) -> dict:
  require_file(path, "MMSA pickle")
  try:
    with open(path, "rb") as f:
      data = pickle.load(f)
  except Exception as e:  # unpickling garbage raises many kinds
    raise BadInputError(f"{path}: does not load as a pickle ({type(e).__name__}: {e})") from None
  if not isinstance(data, dict):
    raise BadInputError(f"{path}: expected a dict of splits, got {type(data).__name__}")
  for split in SPLITS.values():
    if split not in data:
      raise BadInputError(f"{path}: has no '{split}' split (keys: {', '.join(map(str, data))})")
  for split in SPLITS.values():
    for key in MODALITIES + ("regression_labels",):
      if key not in data[split]:
        raise BadInputError(f"{path}: split '{split}' has no '{key}' array")
    n = len(data[split]["regression_labels"])
    for key in MODALITIES:
      arr = np.asarray(data[split][key])
      if arr.ndim != 3 or arr.shape[0] != n:
        raise BadInputError(f"{path}: '{split}/{key}' should be (N={n}, T, D), got {arr.shape}")
  return data


def feature_dims(data: dict) -> tuple[int, int, int]:
  return tuple(int(np.asarray(data["train"][m]).shape[-1]) for m in MODALITIES)


def dataset_name(dims) -> str:
  return KNOWN.get(tuple(dims), "mmsa_" + "_".join(map(str, dims)))


def _mask(split: dict, modality: str) -> np.ndarray:
  steps = np.asarray(split[modality]).shape[1]
  n = len(split["regression_labels"])
  if modality == "text":
    if "text_bert" in split:
      return np.asarray(split["text_bert"])[:, 1, :steps].astype(np.float64)
    return np.ones((n, steps))
  lengths = split.get(f"{modality}_lengths")
  if lengths is None:
    return np.ones((n, steps))
  return (np.arange(steps)[None, :] < np.asarray(lengths).reshape(-1, 1)).astype(np.float64)


def mean_pool(split: dict, modality: str) -> np.ndarray:
  """(N, T, D) -> (N, D): mean over the unmasked steps (zero if none)."""
  x = np.nan_to_num(np.asarray(split[modality], np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  mask = _mask(split, modality)
  count = np.maximum(mask.sum(1, keepdims=True), 1.0)
  return (x * mask[..., None]).sum(1) / count


def masked_sequence(split: dict, modality: str) -> np.ndarray:
  """(N, T, D) -> (N, T, D+1): finite features, padding zeroed, the mask appended.
  float32 (MOSEI's sequences are ~5 GB per modality in float64); the
  statistics below accumulate in float64."""
  x = np.nan_to_num(np.asarray(split[modality], np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  mask = _mask(split, modality).astype(np.float32)[..., None]
  return np.concatenate([x * mask, mask], axis=-1)


def _train_statistics(train: np.ndarray, pooling: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean/std of the train split (over the real steps of sequences)."""
  if pooling != "none":
    return train.mean(0), train.std(0)
  real = train[..., -1:].reshape(-1, 1)
  values = train[..., :-1].reshape(-1, train.shape[-1] - 1)
  count = max(float(real.sum(dtype=np.float64)), 1.0)
  mean = (values * real).sum(0, dtype=np.float64) / count
  std = np.sqrt((((values - mean.astype(values.dtype)) * real) ** 2).sum(0, dtype=np.float64)
                / count)
  return mean, std


def _standardised(x: np.ndarray, mean, std, pooling: str) -> np.ndarray:
  scale = np.where(std > 0, std, 1.0)
  if pooling != "none":
    return ((x - mean) / scale).astype(np.float32)
  real = x[..., -1:]
  return np.concatenate([(x[..., :-1] - mean) / scale * real, real], -1).astype(np.float32)


def three_class(y: np.ndarray, name: str) -> np.ndarray:
  """0 negative, 1 neutral, 2 positive, by MMSA's rule for the dataset."""
  y = np.asarray(y, np.float64).reshape(-1)
  if name == "ch_sims":
    return np.where(y <= -0.1, 0, np.where(y <= 0.1, 1, 2)).astype(np.int64)
  return (np.round(np.clip(y, -1.0, 1.0)) + 1).astype(np.int64)


def binary(y: np.ndarray) -> np.ndarray:
  return (np.asarray(y, np.float64).reshape(-1) >= 0).astype(np.int64)


@dataclasses.dataclass(eq=False)
class MmsaConfig(tfds.core.BuilderConfig):
  path: str = ""
  dims: tuple = ()
  pooling: str = "mean"   # mean | none (sequences with a mask column)
  steps: tuple = ()       # T per modality (pooling="none")


class Mmsa(tfds.core.GeneratorBasedBuilder):
  """One MMSA pickle -> pooled, train-standardised features (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Masked mean-pooled MMSA features, MMSA splits, 3-class + binary "
                            "(or masked sequences, pooling=none)."}

  def __init__(self, *, config: MmsaConfig, skip_bad: bool = False, **kwargs):
    self.bad_files = BadFiles(skip_bad)
    super().__init__(config=build_identity(config, skip_bad), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.pooling == "none":
      features = {m: tfds.features.Tensor(shape=(t, d + 1), dtype=np.float32)
                  for m, t, d in zip(MODALITIES, cfg.steps, cfg.dims)}
    else:
      features = {m: tfds.features.Tensor(shape=(d,), dtype=np.float32)
                  for m, d in zip(MODALITIES, cfg.dims)}
    features.update(
        label=tfds.features.ClassLabel(names=["negative", "neutral", "positive"]),
        label_binary=tfds.features.ClassLabel(names=["negative", "non_negative"]),
        regression=tfds.features.Scalar(dtype=np.float32),
        id=tfds.features.Text())
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                          homepage="https://github.com/thuiar/MMSA")

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    data = read_pickle(cfg.path)
    name = dataset_name(cfg.dims)
    if cfg.pooling == "none":
      features = {s: {m: masked_sequence(data[src], m) for m in MODALITIES}
                  for s, src in SPLITS.items()}
    else:
      features = {s: {m: mean_pool(data[src], m) for m in MODALITIES}
                  for s, src in SPLITS.items()}
    stats = {m: _train_statistics(features["train"][m], cfg.pooling) for m in MODALITIES}
    out = {}
    for split, src in SPLITS.items():
      y = np.asarray(data[src]["regression_labels"], np.float64).reshape(-1)
      feats = {m: _standardised(features[split][m], *stats[m], cfg.pooling) for m in MODALITIES}
      ids = data[src].get("id", np.arange(len(y)))
      out[split] = self._generate_examples(feats, y, three_class(y, name), binary(y), ids, split)
    return out

  def _generate_examples(self, feats, y, y3, y2, ids, split):
    for i in range(len(y)):
      if not np.isfinite(y[i]):
        self.bad_files.report(f"{self.builder_config.path}[{split}][{i}]",
                              f"regression label is {y[i]}")
        continue
      yield f"{split}_{i}", {**{m: feats[m][i] for m in MODALITIES},
                             "label": int(y3[i]), "label_binary": int(y2[i]),
                             "regression": np.float32(y[i]), "id": str(ids[i])}


def builder_for_file(path: str, pooling: str = "mean", **kwargs) -> Mmsa:
  """The builder for one pickle; its config is named after the dataset it really
  is (and `_seq` when it keeps sequences, `pooling="none"`)."""
  if pooling not in ("mean", "none"):
    raise BadInputError(f"config.dataset.mmsa.pooling: {pooling!r}; choose mean or none")
  path = os.path.abspath(os.path.expanduser(path))
  data = read_pickle(path)
  dims = feature_dims(data)
  steps = tuple(int(np.asarray(data["train"][m]).shape[1]) for m in MODALITIES)
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  stem = os.path.splitext(os.path.basename(path))[0].lower().replace("-", "_")
  suffix = "_seq" if pooling == "none" else ""
  config = MmsaConfig(name=f"{dataset_name(dims)}_{stem}_{h.hexdigest()[:8]}{suffix}", path=path,
                      dims=dims, pooling=pooling, steps=steps,
                      description=f"{dataset_name(dims)} from {path}"
                                  + (" (masked sequences)" if pooling == "none" else ""))
  return Mmsa(config=config, **kwargs)
