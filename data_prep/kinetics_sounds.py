"""Kinetics-Sounds from raw videos and split lists, preprocessed as OGM-GE does.

Raw layout (`manual_dir`):

    videos/{video_id}.mp4            (or .mkv / .webm / .avi)
    train.txt, test.txt              one clip a line: `video_id,...,label` — the
    validation.txt (optional)        first field is the id, the last the label
                                     (a class name, or an index into classes.txt;
                                     OGM-GE's `id,10,class_index` lists work as they are)
    classes.txt (optional)           class names, one per line

- Audio: the video's own audio track, resampled to 16 kHz mono, Kaldi fbank
  (128 mel bins, 10 ms shift) padded/cropped to 1,024 frames and normalised
  (x + 4.50) / (5.14 * 2) -> (1024, 128, 1) (`audio.kinetics_sounds_fbank`).
- Visual: T (`frames`, default 3) of the 1-fps frames, picked as the reference
  does (first frame of each of T equal segments), stored square at
  `frame_size` as JPEG.
- Without validation.txt, validation is a seeded fraction of train.
Classes: classes.txt if present, else the sorted label names of the lists (or
0..max for integer labels).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from data_prep import audio, video
from data_prep.common import (build_identity, BadFiles, BadInputError, carve_validation, read_id_list,
                              require_dir)

AUDIO_RATE = 16000
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi")
LISTS = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}


@dataclasses.dataclass(eq=False)
class KsConfig(tfds.core.BuilderConfig):
  frames: int = 3
  frame_size: int = 256
  validation_fraction: float = 0.1
  split_seed: int = 0
  class_names: tuple = ()


def make_config(*, frames: int = 3, frame_size: int = 256, validation_fraction: float = 0.1,
                split_seed: int = 0) -> KsConfig:
  return KsConfig(name=f"{frames}frame_s{frame_size}_v{validation_fraction:g}_seed{split_seed}",
                  frames=frames, frame_size=frame_size,
                  validation_fraction=validation_fraction, split_seed=split_seed)


def _read_lists(raw: str) -> dict[str, list[tuple[str, str]]]:
  out = {}
  for split, name in LISTS.items():
    path = os.path.join(raw, name)
    if split == "validation" and not os.path.isfile(path):
      continue
    out[split] = [(row[0], row[-1]) for row in read_id_list(path)]
  return out


def class_names(raw: str, lists) -> tuple[str, ...]:
  path = os.path.join(raw, "classes.txt")
  if os.path.isfile(path):
    return tuple(r[0] if len(r) == 1 else " ".join(r) for r in read_id_list(path))
  labels = {lab for items in lists.values() for _, lab in items}
  if all(lab.isdigit() for lab in labels):
    return tuple(str(i) for i in range(max(int(x) for x in labels) + 1))
  return tuple(sorted(labels))


class KineticsSounds(tfds.core.GeneratorBasedBuilder):
  """Kinetics-Sounds fbank + T frames (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "OGM-GE preprocessing from raw video."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Point --raw_dir at a folder with videos/, train.txt, test.txt."

  def __init__(self, *, config: KsConfig | None = None, skip_bad: bool = False, **kwargs):
    self.bad_files = BadFiles(skip_bad)
    config = config or make_config()
    raw = kwargs.pop("raw_dir", None)
    if raw:
      raw = require_dir(raw, "Kinetics-Sounds raw")
      config = dataclasses.replace(config, class_names=class_names(raw, _read_lists(raw)))
    super().__init__(config=build_identity(config, skip_bad), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not cfg.class_names:
      raise BadInputError("Kinetics-Sounds: the builder needs raw_dir (to read the classes)")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(audio.KS_TARGET_FRAMES, 128, 1),
                                          dtype=np.float32),
            "visual": tfds.features.Video(shape=(cfg.frames, cfg.frame_size, cfg.frame_size, 3),
                                          encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
            "video_id": tfds.features.Text(),
        }),
        homepage="https://github.com/cvdfoundation/kinetics-dataset")

  def _scan(self, raw: str) -> dict[str, list[tuple[str, int]]]:
    cfg = self.builder_config
    vids_dir = require_dir(os.path.join(raw, "videos"), "Kinetics-Sounds videos")
    files = {os.path.splitext(f)[0]: f for f in os.listdir(vids_dir)
             if f.lower().endswith(VIDEO_EXTS)}
    index = {c: i for i, c in enumerate(cfg.class_names)}
    out = {}
    for split, items in _read_lists(raw).items():
      out[split] = []
      for vid, lab in items:
        where = f"{os.path.join(raw, LISTS[split])}: {vid}"
        if lab in index:
          label = index[lab]
        elif lab.isdigit() and int(lab) < len(cfg.class_names):
          label = int(lab)  # an index into classes.txt (or into 0..max)
        else:
          self.bad_files.report(where, f"label {lab!r} is not in the class list")
          continue
        if vid not in files:
          self.bad_files.report(os.path.join(vids_dir, vid + ".mp4"),
                                f"file is missing (named by {LISTS[split]})")
          continue
        out[split].append((files[vid], label))
    if "validation" not in out:
      out["train"], out["validation"] = carve_validation(out["train"], cfg.validation_fraction,
                                                         cfg.split_seed)
    for split, items in out.items():
      if not items:
        raise BadInputError(f"{raw}: the {split} split is empty")
    return out

  def _split_generators(self, dl_manager):
    raw = require_dir(str(dl_manager.manual_dir), "Kinetics-Sounds raw")
    return {s: self._generate_examples(raw, items) for s, items in self._scan(raw).items()}

  def _generate_examples(self, raw, items):
    cfg = self.builder_config
    for fname, label in items:
      path = os.path.join(raw, "videos", fname)
      try:
        wave = video.audio_track(path, AUDIO_RATE)
        if len(wave) < AUDIO_RATE * 0.025:
          raise BadInputError(f"{path}: audio is {len(wave) / AUDIO_RATE:.3f} s, shorter than "
                              "one 25 ms fbank frame")
        fbank = audio.kinetics_sounds_fbank(wave, AUDIO_RATE)[..., None]
        frames = video.select_frames(path, cfg.frames, cfg.frame_size, centred=False)
      except BadInputError as e:
        self.bad_files.report_error(e)
        continue
      vid = os.path.splitext(fname)[0]
      yield vid, {"audio": fbank, "visual": frames, "label": label, "video_id": vid}
