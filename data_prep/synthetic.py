"""Synthetic N-modality classification data as a TFDS builder (no download).

Each modality m sees every example's class y through a smooth class template:

    x_m = signal_m · a · T_m[y] + noise · ε,   a ~ U(0.5, 1.5), ε ~ N(0, I)

Templates are fixed random low-frequency fields (RMS 1) drawn from the dataset
seed; noise is drawn independently per modality, so the modalities are
conditionally independent given y. A modality's `signal` sets how easily its
class can be read: the one with the larger signal learns faster and dominates
joint training (as audio does on CREMA-D), while each modality alone stays
below the fused Bayes accuracy, because fusing independent evidence adds it.

Generation is pure numpy from the seed, so the same spec always gives the same
bytes; the TFDS config name is a fingerprint of the spec, so two specs never
share a prepared directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from asgml_jax.config_checks import ConfigError
from data_prep.common import available_host_bytes

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  name: str
  shape: tuple[int, ...]
  signal: float


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  modalities: tuple[ModalitySpec, ...]
  num_classes: int = 6
  num_train: int = 3000
  num_validation: int = 600
  num_test: int = 600
  noise: float = 1.0
  seed: int = 0

  def split_size(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}[split]

  def fingerprint(self) -> str:
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
    return f"n{len(self.modalities)}_c{self.num_classes}_{hashlib.sha1(blob).hexdigest()[:12]}"

  @classmethod
  def from_config(cls, config) -> "SyntheticSpec":
    """The spec of `config.dataset.synthetic` for the configured modalities."""
    syn = config.dataset.synthetic
    mods = tuple(ModalitySpec(name, tuple(int(s) for s in config.modalities[name].input_shape),
                              float(syn.signal[name]))
                 for name in sorted(config.modalities.keys()))
    return cls(modalities=mods, num_classes=syn.num_classes, num_train=syn.num_train,
               num_validation=syn.num_validation, num_test=syn.num_test,
               noise=float(syn.noise), seed=syn.seed)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """A random field with only low spatial frequencies, RMS 1.

  Feature vectors (1-D) are plain Gaussian. For images, frequencies above a
  quarter of each spatial axis are removed so templates look like blobs and
  strokes rather than pixel noise (what a conv encoder is built for).
  """
  field = rng.standard_normal(shape)
  if len(shape) >= 3:
    spatial = (len(shape) - 3, len(shape) - 2)  # H, W of (..., H, W, C)
    spectrum = np.fft.fftn(field, axes=spatial)
    mask = np.ones(shape, dtype=bool)
    for axis in spatial:
      freqs = np.abs(np.fft.fftfreq(shape[axis]))
      keep = (freqs <= 0.125).reshape([-1 if a == axis else 1 for a in range(len(shape))])
      mask = mask & keep
    field = np.real(np.fft.ifftn(spectrum * mask, axes=spatial))
  return field / np.sqrt(np.mean(field ** 2))


def class_templates(spec: SyntheticSpec) -> dict[str, np.ndarray]:
  """Per modality, the (C, *shape) class templates, fixed by the dataset seed."""
  rng = np.random.default_rng([spec.seed, 7919])
  return {m.name: np.stack([_smooth_field(rng, m.shape) for _ in range(spec.num_classes)])
          for m in spec.modalities}


# Bytes per generated element at the peak: float64 noise and its float64 sum,
# then the float32 array kept.
_GENERATION_BYTES = 8 + 8 + 4


def _check_generation_memory(spec: SyntheticSpec, split: str, n: int) -> None:
  """A split too large to generate in memory is one line before it is tried
  (it was an out-of-memory kill or a MemoryError)."""
  free = available_host_bytes()
  elements = n * sum(int(np.prod(m.shape)) for m in spec.modalities)
  need = elements * _GENERATION_BYTES
  if free is not None and need > 0.8 * free:
    key = "num_train" if split == "train" else f"num_{split}"
    raise ConfigError(f"config.dataset.synthetic.{key}: generating the {split} split ({n:,} "
                      f"examples) needs about {need / 2**30:.1f} GiB, more than the "
                      f"{free / 2**30:.1f} GiB free; make it smaller")


def generate_split(spec: SyntheticSpec, split: str) -> dict[str, np.ndarray]:
  """All examples of one split: {modality: (n, *shape) float32, "label": (n,) int64}."""
  n = spec.split_size(split)
  _check_generation_memory(spec, split, n)
  rng = np.random.default_rng([spec.seed, SPLITS.index(split) + 1])
  labels = rng.integers(0, spec.num_classes, size=n)
  templates = class_templates(spec)
  out = {"label": labels.astype(np.int64)}
  for m in spec.modalities:
    amplitude = rng.uniform(0.5, 1.5, size=(n,) + (1,) * len(m.shape))
    noise = rng.standard_normal((n,) + m.shape)
    x = m.signal * amplitude * templates[m.name][labels] + spec.noise * noise
    out[m.name] = x.astype(np.float32)
  return out


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  spec: SyntheticSpec | None = None


class Synthetic(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over `generate_split`; one config per spec (named by its fingerprint)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Smooth class templates plus Gaussian noise, per-modality signal."}

  def __init__(self, *, spec: SyntheticSpec, **kwargs):
    config = SyntheticConfig(name=spec.fingerprint(), spec=spec,
                             description=json.dumps(dataclasses.asdict(spec)))
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    features = {m.name: tfds.features.Tensor(shape=m.shape, dtype=np.float32)
                for m in spec.modalities}
    features["label"] = tfds.features.ClassLabel(num_classes=spec.num_classes)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage="https://github.com/ (generated locally; no download)")

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    data = generate_split(self.builder_config.spec, split)
    for i in range(len(data["label"])):
      yield i, {k: v[i] for k, v in data.items()}
