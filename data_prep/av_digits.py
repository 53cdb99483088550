"""AV-Digits: a spoken digit (FSDD) paired with a handwritten digit (MNIST).

The project's real-data benchmark that trains on a CPU (the README's data section). Raw layout
(`manual_dir`, e.g. `../shared/data`):

    fsdd/recordings/{digit}_{speaker}_{index}.wav   8 kHz mono, 6 speakers x 10 x 50
    mnist/t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz

Pairing: each recording gets a *distinct* MNIST test image of the same digit,
drawn without replacement from a permutation fixed by `pairing_seed`, so no
image appears twice anywhere (train and test never share an image).

Splits (builder config `split`):
- `speaker` (default): speaker-disjoint — `test_speaker` is test,
  `validation_speaker` validation, the other four train (2,000 / 500 / 500).
- `index`: FSDD's official split — take index 0-4 test, 5-49 train — with a
  seeded 10 % of train carved out as validation.

Features:
- audio: 1 s (longer recordings are centre-cropped, shorter zero-padded at the
  end), log-mel with a 32 ms window, 10 ms hop, 40 bins → (40, 101, 1);
- visual: the 28 x 28 image in [0, 1] → (28, 28, 1).
Both are standardised with one mean/std per modality computed on the train
split only (recorded in the dataset description).

Degradation (so the dominant modality and the size of the imbalance can be
chosen; drawn per example from a generator seeded by `pairing_seed` and the
recording's name, so it is the same in every build):
- `image_noise`: std of Gaussian noise added to the [0, 1] image;
- `image_occlusion`: side of a zeroed square patch as a fraction of 28, at a
  random position;
- `audio_snr_db`: white noise at this SNR (relative to the recording's own
  power); None keeps the clean recording.
The default (`DEFAULT`: image noise 0.4, a 25 % occlusion patch, clean audio)
keeps each modality alone clearly below the fused model (measured numbers in
configs/av_digits.py).
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
import hashlib
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from data_prep import audio
from data_prep.common import (BadFiles, BadInputError, build_identity, carve_validation,
                              require_dir, require_file)

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
RATE = 8000
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


@dataclasses.dataclass(eq=False)
class AvDigitsConfig(tfds.core.BuilderConfig):
  split: str = "speaker"
  test_speaker: str = "theo"
  validation_speaker: str = "nicolas"
  image_noise: float = 0.0
  image_occlusion: float = 0.0
  audio_snr_db: float | None = None
  pairing_seed: int = 0
  validation_fraction: float = 0.1

  def params(self) -> dict:
    return {k: getattr(self, k) for k in ("split", "test_speaker", "validation_speaker",
                                          "image_noise", "image_occlusion", "audio_snr_db",
                                          "pairing_seed", "validation_fraction")}


def make_config(**params) -> AvDigitsConfig:
  """A config whose name encodes its parameters (readable prefix + hash)."""
  probe = AvDigitsConfig(name="probe", **params)
  p = probe.params()
  if p["split"] not in ("speaker", "index"):
    raise ValueError(f"AV-Digits split must be 'speaker' or 'index', got {p['split']!r}")
  for key in ("test_speaker", "validation_speaker"):
    if p[key] not in SPEAKERS:
      raise ValueError(f"AV-Digits {key} {p[key]!r} is not an FSDD speaker ({', '.join(SPEAKERS)})")
  if p["split"] == "speaker" and p["test_speaker"] == p["validation_speaker"]:
    raise ValueError("AV-Digits test_speaker and validation_speaker must differ")
  snr = "clean" if p["audio_snr_db"] is None else f"snr{p['audio_snr_db']:g}"
  digest = hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:8]
  name = f"{p['split']}_n{p['image_noise']:g}_o{p['image_occlusion']:g}_{snr}_{digest}"
  return AvDigitsConfig(name=name, description=json.dumps(p, sort_keys=True), **params)


# Speaker-disjoint audio is already the weak modality; the image is degraded
# so that it dominates by less than it would clean (configs/av_digits.py).
DEFAULT = dict(image_noise=0.4, image_occlusion=0.25, audio_snr_db=None)


def read_idx(path: str) -> np.ndarray:
  """An MNIST IDX file (gzip or plain) as a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated .gz
    raise BadInputError(f"{path}: cannot be read as an IDX file ({e or type(e).__name__})") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise BadInputError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
  ndim = data[3]
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise BadInputError(f"{path}: header says {dims} but holds {body.size} bytes of data")
  return body.reshape(dims)


def pair_indices(labels: np.ndarray, recordings, seed: int) -> dict[str, int]:
  """Recording name -> index of a distinct MNIST image with the recording's digit."""
  rng = np.random.default_rng([seed, 10])
  pools = {d: list(rng.permutation(np.flatnonzero(labels == d))) for d in range(10)}
  out = {}
  for name, digit in recordings:
    if not pools[digit]:
      raise BadInputError(f"MNIST: not enough images of digit {digit} to pair every "
                          "recording with a distinct one")
    out[name] = int(pools[digit].pop())
  return out


def _example_rng(seed: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)])


def audio_features(x: np.ndarray) -> np.ndarray:
  """1 s at 8 kHz (centre crop / end pad) -> log-mel (40, 101, 1)."""
  if len(x) > RATE:
    start = (len(x) - RATE) // 2
    x = x[start:start + RATE]
  else:
    x = np.pad(x, (0, RATE - len(x)))
  return audio.log_mel(x, RATE, n_fft=256, hop=80, n_mels=40)[..., None]


def degrade_image(image: np.ndarray, cfg: AvDigitsConfig, rng: np.random.Generator) -> np.ndarray:
  x = image.astype(np.float32) / 255.0
  if cfg.image_occlusion > 0:
    side = int(round(cfg.image_occlusion * 28))
    top, left = rng.integers(0, 28 - side + 1, size=2)
    x[top:top + side, left:left + side] = 0.0
  if cfg.image_noise > 0:
    x = x + cfg.image_noise * rng.standard_normal(x.shape).astype(np.float32)
  return x[..., None]


class AvDigits(tfds.core.GeneratorBasedBuilder):
  """FSDD + MNIST pairs; one builder config per split/degradation (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Log-mel (40x101) + 28x28 image, speaker-disjoint or index split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point manual_dir (--raw_dir) at a folder holding fsdd/recordings/*.wav and "
      "mnist/t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz (e.g. ../shared/data).")

  def __init__(self, *, config: AvDigitsConfig | None = None, skip_bad: bool = False, **kwargs):
    self.bad_files = BadFiles(skip_bad)
    super().__init__(config=build_identity(config or make_config(**DEFAULT), skip_bad), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(40, 101, 1), dtype=np.float32),
            "visual": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            "recording": tfds.features.Text(),
        }),
        homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
        metadata=tfds.core.MetadataDict())

  def _scan(self, raw: str) -> dict[str, list[tuple[str, int, str, int]]]:
    """Split -> [(file name, digit, speaker, index)], checked before anything is written."""
    rec_dir = require_dir(os.path.join(raw, "fsdd", "recordings"), "FSDD recordings")
    entries = []
    for name in sorted(os.listdir(rec_dir)):
      if not name.endswith(".wav"):
        continue
      m = _NAME.match(name)
      if not m:
        self.bad_files.report(os.path.join(rec_dir, name),
                              "name is not {digit}_{speaker}_{index}.wav")
        continue
      entries.append((name, int(m.group(1)), m.group(2), int(m.group(3))))
    if not entries:
      raise BadInputError(f"{rec_dir}: holds no FSDD .wav recordings")
    cfg = self.builder_config
    if cfg.split == "speaker":
      which = lambda e: ("test" if e[2] == cfg.test_speaker else
                         "validation" if e[2] == cfg.validation_speaker else "train")
      splits = {s: [e for e in entries if which(e) == s] for s in ("train", "validation", "test")}
    else:
      test = [e for e in entries if e[3] < 5]
      rest = [e for e in entries if e[3] >= 5]
      train, val = carve_validation(rest, cfg.validation_fraction, cfg.pairing_seed)
      splits = {"train": train, "validation": val, "test": test}
    for split, items in splits.items():
      if not items:
        raise BadInputError(f"{rec_dir}: the {split} split of config {cfg.name} is empty "
                            f"(speakers present: {sorted({e[2] for e in entries})})")
    return splits

  def _pair_images(self, raw: str, splits) -> dict[str, np.ndarray]:
    """Recording name -> a distinct MNIST image of the same digit."""
    images = read_idx(require_file(os.path.join(raw, "mnist", "t10k-images-idx3-ubyte.gz"),
                                   "MNIST test images"))
    labels = read_idx(require_file(os.path.join(raw, "mnist", "t10k-labels-idx1-ubyte.gz"),
                                   "MNIST test labels"))
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise BadInputError(f"{raw}/mnist: expected N x 28 x 28 images with N labels, got "
                          f"{images.shape} and {labels.shape}")
    order = [(name, digit) for split in ("train", "validation", "test")
             for name, digit, _, _ in splits[split]]
    index = pair_indices(labels, order, self.builder_config.pairing_seed)
    return {name: images[i] for name, i in index.items()}

  def _split_generators(self, dl_manager):
    raw = require_dir(str(dl_manager.manual_dir), "AV-Digits raw")
    splits = self._scan(raw)
    pairs = self._pair_images(raw, splits)
    rec_dir = os.path.join(raw, "fsdd", "recordings")
    features = {split: self._features(rec_dir, items, pairs) for split, items in splits.items()}
    # One standardisation per modality, from train only.
    stats = {m: (float(features["train"][m].mean()), float(features["train"][m].std()))
             for m in ("audio", "visual")}
    self.info.metadata["normalisation"] = stats
    for split in features.values():
      for m, (mean, std) in stats.items():
        split[m] = ((split[m] - mean) / std).astype(np.float32)
    return {split: self._generate_examples(features[split]) for split in splits}

  def _features(self, rec_dir, items, pairs) -> dict[str, np.ndarray]:
    cfg = self.builder_config
    out = {"audio": [], "visual": [], "label": [], "recording": []}
    for name, digit, _, _ in items:
      path = os.path.join(rec_dir, name)
      try:
        x, rate = audio.read_wav(path, min_seconds=0.05)
      except BadInputError as e:
        self.bad_files.report_error(e)
        continue
      if rate != RATE:
        self.bad_files.report(path, f"sample rate {rate} Hz, expected {RATE} Hz")
        continue
      rng = _example_rng(cfg.pairing_seed, name)
      if cfg.audio_snr_db is not None:
        x = audio.add_noise_at_snr(x, cfg.audio_snr_db, rng)
      out["audio"].append(audio_features(x))
      out["visual"].append(degrade_image(pairs[name], cfg, rng))
      out["label"].append(digit)
      out["recording"].append(name)
    if not out["label"]:
      raise BadInputError(f"{rec_dir}: no usable recording left in a split")
    return {k: np.stack(v) if k != "recording" else v for k, v in out.items()}

  def _generate_examples(self, feats):
    for i, name in enumerate(feats["recording"]):
      yield name, {"audio": feats["audio"][i], "visual": feats["visual"][i],
                   "label": int(feats["label"][i]), "recording": name}
