"""CREMA-D from the public release's raw layout, preprocessed as OGM-GE does.

Raw layout (`manual_dir`):

    AudioWAV/{actor}_{sentence}_{emotion}_{level}.wav     16 kHz
    VideoFlash/{actor}_{sentence}_{emotion}_{level}.flv

- Labels from the file name's emotion field, in OGM-GE's class order
  NEU, HAP, SAD, FEA, DIS, ANG.
- Split: OGM-GE's test list (744 clips, shipped as `splits/cremad_test.txt`);
  train is every other clip of the release (6,698 of 7,442); validation is a
  fixed seeded fraction of train (the README's data section), so test is never used to select.
- Audio: `audio.cremad_spectrogram` (22,050 Hz, tiled to 3 s, clipped, STFT
  512/353, log) -> (257, 188, 1) float32. Clips under 1 s are rejected:
  OGM-GE's `np.tile(x, 3)[:3 s]` gives them a shorter spectrogram.
- Visual: T (`frames`, 1 or 3) of the 1-fps frames, uniformly spaced and
  centred in their segments (OGM-GE draws them at random, even at test time,
  which makes evaluation non-deterministic), stored square at `frame_size` as
  JPEG; crop/flip/resize/normalise happen on the device (asgml_jax/augment.py).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from data_prep import audio, video
from data_prep.common import (build_identity, BadFiles, BadInputError, carve_validation, read_id_list,
                              require_dir)

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
TEST_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits", "cremad_test.txt")
_CLIP = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


@dataclasses.dataclass(eq=False)
class CremaDConfig(tfds.core.BuilderConfig):
  frames: int = 1
  frame_size: int = 256
  pad_mode: str = "reflect"
  validation_fraction: float = 0.1
  split_seed: int = 0
  test_list: str = TEST_LIST


def make_config(*, frames: int = 1, frame_size: int = 256, pad_mode: str = "reflect",
                validation_fraction: float = 0.1, split_seed: int = 0,
                test_list: str = TEST_LIST) -> CremaDConfig:
  tag = "" if test_list == TEST_LIST else "_customsplit"
  name = (f"{frames}frame_s{frame_size}_{pad_mode}_v{validation_fraction:g}_seed{split_seed}"
          f"{tag}")
  return CremaDConfig(name=name, frames=frames, frame_size=frame_size, pad_mode=pad_mode,
                      validation_fraction=validation_fraction, split_seed=split_seed,
                      test_list=test_list)


def label_of(clip_id: str) -> int:
  m = _CLIP.match(clip_id)
  if not m:
    raise BadInputError(f"{clip_id}: not a CREMA-D clip name ({{actor}}_{{sentence}}_"
                        "{emotion}_{level})")
  if m.group(3) not in CLASSES:
    raise BadInputError(f"{clip_id}: emotion {m.group(3)!r} is not one of {', '.join(CLASSES)}")
  return CLASSES.index(m.group(3))


class CremaD(tfds.core.GeneratorBasedBuilder):
  """CREMA-D audio spectrogram + 1/3 video frames (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "OGM-GE preprocessing, OGM-GE test split, seeded validation."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Point --raw_dir at the release folder holding AudioWAV/ and VideoFlash/."

  def __init__(self, *, config: CremaDConfig | None = None, skip_bad: bool = False, **kwargs):
    self.bad_files = BadFiles(skip_bad)
    super().__init__(config=build_identity(config or make_config(), skip_bad), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(257, 188, 1), dtype=np.float32),
            "visual": tfds.features.Video(shape=(cfg.frames, cfg.frame_size, cfg.frame_size, 3),
                                          encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(CLASSES)),
            "clip": tfds.features.Text(),
        }),
        homepage="https://github.com/CheyneyComputerScience/CREMA-D")

  def _scan(self, raw: str) -> dict[str, list[str]]:
    audio_dir = require_dir(os.path.join(raw, "AudioWAV"), "CREMA-D AudioWAV")
    video_dir = require_dir(os.path.join(raw, "VideoFlash"), "CREMA-D VideoFlash")
    wavs = {f[:-4] for f in os.listdir(audio_dir) if f.endswith(".wav")}
    flvs = {f[:-4] for f in os.listdir(video_dir) if f.endswith(".flv")}
    clips = []
    for clip in sorted(wavs | flvs):
      if clip not in wavs:
        self.bad_files.report(os.path.join(audio_dir, clip + ".wav"), "file is missing "
                              "(the clip has a video but no audio)")
      elif clip not in flvs:
        self.bad_files.report(os.path.join(video_dir, clip + ".flv"), "file is missing "
                              "(the clip has audio but no video)")
      else:
        try:
          label_of(clip)
        except BadInputError as e:
          self.bad_files.report(os.path.join(audio_dir, clip + ".wav"), e.path_and_problem[1])
          continue
        clips.append(clip)
    available = set(clips)
    test = []
    for row in read_id_list(self.builder_config.test_list):
      clip = row[0]
      if clip not in available:
        self.bad_files.report(f"{self.builder_config.test_list}: {clip}",
                              f"the split list names a clip not found (usable) in {raw}")
        continue
      test.append(clip)
    held = set(test)
    train, val = carve_validation([c for c in clips if c not in held],
                                  self.builder_config.validation_fraction,
                                  self.builder_config.split_seed)
    splits = {"train": train, "validation": val, "test": sorted(test)}
    for split, items in splits.items():
      if not items:
        raise BadInputError(f"{raw}: the {split} split is empty")
    return splits

  def _split_generators(self, dl_manager):
    raw = require_dir(str(dl_manager.manual_dir), "CREMA-D raw")
    return {split: self._generate_examples(raw, clips)
            for split, clips in self._scan(raw).items()}

  def _generate_examples(self, raw: str, clips: list[str]):
    cfg = self.builder_config
    for clip in clips:
      wav = os.path.join(raw, "AudioWAV", clip + ".wav")
      flv = os.path.join(raw, "VideoFlash", clip + ".flv")
      try:
        x, rate = audio.read_wav(wav, min_seconds=1.0)
        spec = audio.cremad_spectrogram(x, rate, pad_mode=cfg.pad_mode)[..., None]
        frames = video.select_frames(flv, cfg.frames, cfg.frame_size, centred=True)
      except BadInputError as e:
        self.bad_files.report_error(e)
        continue
      yield clip, {"audio": spec, "visual": frames, "label": label_of(clip), "clip": clip}
