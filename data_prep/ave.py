"""AVE (Audio-Visual Event) in OGM-GE's preprocessed layout.

Raw layout (`manual_dir`):

    audio_spec/{video_id}.pkl      a pickled 2-D numpy spectrogram (OGM-GE's
                                   audio preprocessing; every clip the same shape)
    visual/{video_id}/*.jpg        frames extracted at 1 fps, sorted by name
    trainSet.txt, valSet.txt, testSet.txt   the official lists:
                                   Category&VideoID&Quality&StartTime&EndTime
    stat.txt (optional)            the 28 category names, one per line

Splits (`split`):
- `official` (default): the official train / val / test lists.
- `random_80_20`: what the seeds' code did — every listed video pooled and
  split 80/20 train/test by `split_seed`, validation carved from train.
Classes: stat.txt if present (a category outside it is an error), else the
sorted categories of the lists. Frames: T (`frames`, default 3) picked as the
reference does (segment length n // T, the first frame of each), stored square
at `frame_size` as JPEG.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from data_prep import video
from data_prep.common import (build_identity, BadFiles, BadInputError, carve_validation, read_id_list,
                              require_dir, require_file)

LISTS = {"train": "trainSet.txt", "validation": "valSet.txt", "test": "testSet.txt"}


@dataclasses.dataclass(eq=False)
class AveConfig(tfds.core.BuilderConfig):
  split: str = "official"
  frames: int = 3
  frame_size: int = 256
  validation_fraction: float = 0.1
  split_seed: int = 0
  spec_shape: tuple = ()
  class_names: tuple = ()


def make_config(*, split: str = "official", frames: int = 3, frame_size: int = 256,
                validation_fraction: float = 0.1, split_seed: int = 0) -> AveConfig:
  if split not in ("official", "random_80_20"):
    raise ValueError(f"AVE split must be 'official' or 'random_80_20', got {split!r}")
  name = f"{split}_{frames}frame_s{frame_size}_v{validation_fraction:g}_seed{split_seed}"
  return AveConfig(name=name, split=split, frames=frames, frame_size=frame_size,
                   validation_fraction=validation_fraction, split_seed=split_seed)


def load_spectrogram(path: str) -> np.ndarray:
  try:
    with open(path, "rb") as f:
      spec = np.asarray(pickle.load(f), np.float32)
  except FileNotFoundError:
    raise BadInputError(f"{path}: file is missing") from None
  except Exception as e:
    raise BadInputError(f"{path}: does not load as a pickled spectrogram ({e})") from None
  if spec.ndim != 2:
    raise BadInputError(f"{path}: expected a 2-D spectrogram, got shape {spec.shape}")
  if not np.all(np.isfinite(spec)):
    raise BadInputError(f"{path}: spectrogram holds non-finite values")
  return spec


def _lists(raw: str) -> dict[str, list[tuple[str, str]]]:
  """Split -> [(video id, category)] from the official lists."""
  out = {}
  for split, name in LISTS.items():
    rows = read_id_list(require_file(os.path.join(raw, name), f"AVE split list {name}"))
    out[split] = []
    for row in rows:
      if len(row) < 2:
        raise BadInputError(f"{os.path.join(raw, name)}: line {'&'.join(row)!r} is not "
                            "Category&VideoID&...")
      out[split].append((row[1], row[0]))
  return out


class Ave(tfds.core.GeneratorBasedBuilder):
  """AVE spectrogram + T frames (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "OGM-GE layout; official or random 80/20 split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point --raw_dir at a folder with audio_spec/, visual/ and the "
                                  "official trainSet.txt / valSet.txt / testSet.txt.")

  def __init__(self, *, config: AveConfig | None = None, skip_bad: bool = False, **kwargs):
    self.bad_files = BadFiles(skip_bad)
    config = config or make_config()
    raw = kwargs.pop("raw_dir", None)
    if raw:  # the feature spec (spectrogram shape, classes) comes from the raw data
      config = self._with_layout(config, require_dir(raw, "AVE raw"))
    super().__init__(config=build_identity(config, skip_bad), **kwargs)

  @staticmethod
  def _with_layout(config: AveConfig, raw: str) -> AveConfig:
    lists = _lists(raw)
    stat = os.path.join(raw, "stat.txt")
    if os.path.isfile(stat):
      names = tuple(r[0] for r in read_id_list(stat))
    else:
      names = tuple(sorted({c for items in lists.values() for _, c in items}))
    first = next(v for items in lists.values() for v, _ in items)
    shape = load_spectrogram(os.path.join(raw, "audio_spec", first + ".pkl")).shape
    return dataclasses.replace(config, spec_shape=tuple(shape) + (1,), class_names=names)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not cfg.class_names:
      raise BadInputError("AVE: the builder needs raw_dir the first time (to read the "
                          "spectrogram shape and the classes)")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=cfg.spec_shape, dtype=np.float32),
            "visual": tfds.features.Video(shape=(cfg.frames, cfg.frame_size, cfg.frame_size, 3),
                                          encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
            "video_id": tfds.features.Text(),
        }),
        homepage="https://sites.google.com/view/audiovisualresearch")

  def _scan(self, raw: str) -> dict[str, list[tuple[str, int]]]:
    cfg = self.builder_config
    lists = _lists(raw)
    classes = {c: i for i, c in enumerate(cfg.class_names)}
    checked = {}
    for split, items in lists.items():
      checked[split] = []
      for vid, cat in items:
        where = f"{os.path.join(raw, LISTS[split])}: {vid}"
        if cat not in classes:
          self.bad_files.report(where, f"category {cat!r} is not in the class list")
        elif not os.path.isfile(os.path.join(raw, "audio_spec", vid + ".pkl")):
          self.bad_files.report(os.path.join(raw, "audio_spec", vid + ".pkl"),
                                f"file is missing (named by {LISTS[split]})")
        elif not os.path.isdir(os.path.join(raw, "visual", vid)):
          self.bad_files.report(os.path.join(raw, "visual", vid),
                                f"frame folder is missing (named by {LISTS[split]})")
        else:
          checked[split].append((vid, classes[cat]))
    if cfg.split == "random_80_20":
      pool = sorted({x for items in checked.values() for x in items})
      rest, test = carve_validation(pool, 0.2, cfg.split_seed)
      train, val = carve_validation(rest, cfg.validation_fraction, cfg.split_seed + 1)
      checked = {"train": train, "validation": val, "test": test}
    for split, items in checked.items():
      if not items:
        raise BadInputError(f"{raw}: the {split} split is empty")
    return checked

  def _split_generators(self, dl_manager):
    raw = require_dir(str(dl_manager.manual_dir), "AVE raw")
    return {s: self._generate_examples(raw, items) for s, items in self._scan(raw).items()}

  def _generate_examples(self, raw, items):
    cfg = self.builder_config
    for vid, label in items:
      try:
        spec = load_spectrogram(os.path.join(raw, "audio_spec", vid + ".pkl"))
        if spec.shape + (1,) != cfg.spec_shape:
          raise BadInputError(f"{os.path.join(raw, 'audio_spec', vid + '.pkl')}: spectrogram "
                              f"shape {spec.shape} differs from the dataset's {cfg.spec_shape[:2]}")
        folder = os.path.join(raw, "visual", vid)
        names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        if len(names) < cfg.frames:
          raise BadInputError(f"{folder}: holds {len(names)} frame(s), shorter than the "
                              f"{cfg.frames} the config needs")
        idx = video.uniform_indices(len(names), cfg.frames, centred=False)
        frames = np.stack([video.load_image(os.path.join(folder, names[i]), cfg.frame_size)
                           for i in idx])
      except BadInputError as e:
        self.bad_files.report_error(e)
        continue
      yield vid, {"audio": spec[..., None], "visual": frames, "label": label, "video_id": vid}
