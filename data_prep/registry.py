"""Every dataset, listed once: its config group, its checks, its TFDS builder, its task.

`config.dataset.name` is one of `DATASETS`; `dataset.<name>` is that entry's
group of keys (`defaults()`), checked by its `check(config)` in every run
that uses it. The training side (`asgml_jax.input_pipeline`) and the command
line (`python -m data_prep.build`) both come through `builder_for`, so a
dataset prepared by one is found by the other: same builder, same config
name, same data_dir.

The builder modules import TensorFlow Datasets, which takes seconds; each
entry's builder imports its module only when a dataset is built or read, so
a mistake in a config is reported without it.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import ml_collections
from ml_collections import config_dict

from asgml_jax import config_checks as cc
from data_prep.common import BadInputError


class Dataset(NamedTuple):
  """defaults(): its keys under config.dataset.<name>; check(config): value
  checks when it is the run's dataset; builder(config, data_dir, kwargs) ->
  (TFDS builder, raw dir or None); task: what its labels are (asgml_jax/tasks/);
  from_raw: built from files under raw_dir (or an already prepared data_dir);
  MMSA reads one pickle, which its own check locates."""
  defaults: Callable[[], ml_collections.ConfigDict]
  builder: Callable
  check: Callable | None = None
  task: str = "classification"
  from_raw: bool = True


def _raw(config) -> str | None:
  raw = config.dataset.raw_dir
  return os.path.abspath(os.path.expanduser(raw)) if raw else None


def _frames_check(name: str):
  def check(config) -> None:
    cc.require(config.dataset[name].frames >= 1, f"dataset.{name}.frames", "must be >= 1")
    cc.positive(config, f"dataset.{name}.frame_size", integer=True)
  return check


# ------------------------------------------------------------------ synthetic


def _synthetic_defaults():
  return ml_collections.ConfigDict(dict(
      num_classes=6, num_train=3000, num_validation=600, num_test=600, seed=0, noise=1.0,
      # Per modality: scale of the class template added to the noise.
      # A larger signal makes that modality easier, so it dominates.
      signal=ml_collections.ConfigDict(),
  ))


def _synthetic_check(config) -> None:
  syn, names = config.dataset.synthetic, cc.modality_names(config)
  for key in ("num_classes", "num_train", "num_validation", "num_test"):
    cc.positive(config, f"dataset.synthetic.{key}", integer=True)
  cc.require(syn.num_classes >= 2, "dataset.synthetic.num_classes", "needs at least 2 classes")
  signal_names = set(syn.signal.keys())
  for name in sorted(signal_names - set(names)):
    raise cc.ConfigError(f"config.dataset.synthetic.signal.{name}: unknown modality "
                         f"(configured modalities: {', '.join(names)})")
  for name in names:
    cc.require(name in signal_names, f"dataset.synthetic.signal.{name}",
               "missing: the synthetic dataset needs a signal strength per modality")
    cc.require(syn.signal[name] >= 0, f"dataset.synthetic.signal.{name}",
               f"must be >= 0, got {syn.signal[name]!r}")
  cc.require(syn.num_train >= config.batch_size, "batch_size",
             f"{config.batch_size} is larger than the training split ({syn.num_train})")


def _synthetic(config, data_dir, kwargs):
  from data_prep.synthetic import Synthetic, SyntheticSpec  # imports TFDS: only to build
  return Synthetic(spec=SyntheticSpec.from_config(config), data_dir=data_dir), None


# ------------------------------------------------------------------ AV-Digits


def _av_digits_defaults():
  return ml_collections.ConfigDict(dict(
      split="speaker",       # speaker (disjoint) | index (FSDD official)
      test_speaker="theo",
      validation_speaker="nicolas",
      image_noise=0.4,
      image_occlusion=0.25,
      audio_snr_db=config_dict.placeholder(float),  # None: clean audio
      pairing_seed=0,
  ))


def _av_digits_check(config) -> None:
  ds = config.dataset.av_digits
  cc.one_of(ds.split, ("speaker", "index"), "dataset.av_digits.split")
  cc.require(ds.image_noise >= 0, "dataset.av_digits.image_noise", "must be >= 0")
  cc.require(0 <= ds.image_occlusion < 1, "dataset.av_digits.image_occlusion",
             "must be in [0, 1)")


def _av_digits(config, data_dir, kwargs):
  from data_prep import av_digits  # imports TFDS: only to build
  ds = config.dataset
  cfg = av_digits.make_config(**{k: ds.av_digits[k] for k in ds.av_digits.keys()},
                              validation_fraction=ds.validation_fraction)
  return av_digits.AvDigits(config=cfg, **kwargs), _raw(config)


# ------------------------------------------------------------------ CREMA-D, AVE, Kinetics-Sounds


def _cremad_defaults():
  return ml_collections.ConfigDict(dict(
      frames=1,              # 1 or 3 frames per clip
      frame_size=256,        # frames are stored square at this size
      pad_mode="reflect",    # STFT centre padding: reflect (librosa <0.10) | constant
      test_list="",          # a file of test clip ids; "": OGM-GE's 744 (shipped)
  ))


def _cremad_check(config) -> None:
  _frames_check("cremad")(config)
  cc.one_of(config.dataset.cremad.pad_mode, ("reflect", "constant"), "dataset.cremad.pad_mode")


def _cremad(config, data_dir, kwargs):
  from data_prep import cremad  # imports TFDS: only to build
  ds = config.dataset
  cfg = cremad.make_config(frames=ds.cremad.frames, frame_size=ds.cremad.frame_size,
                           pad_mode=ds.cremad.pad_mode,
                           test_list=ds.cremad.test_list or cremad.TEST_LIST,
                           validation_fraction=ds.validation_fraction, split_seed=ds.split_seed)
  return cremad.CremaD(config=cfg, **kwargs), _raw(config)


def _ave_defaults():
  return ml_collections.ConfigDict(dict(
      split="official",      # official (train/val/test lists) | random_80_20 (seeds' code)
      frames=3,
      frame_size=256,
  ))


def _ave_check(config) -> None:
  _frames_check("ave")(config)
  cc.one_of(config.dataset.ave.split, ("official", "random_80_20"), "dataset.ave.split")


def _ave(config, data_dir, kwargs):
  from data_prep import ave  # imports TFDS: only to build
  ds = config.dataset
  cfg = ave.make_config(split=ds.ave.split, frames=ds.ave.frames, frame_size=ds.ave.frame_size,
                        validation_fraction=ds.validation_fraction, split_seed=ds.split_seed)
  return ave.Ave(config=cfg, raw_dir=_raw(config), **kwargs), _raw(config)


def _kinetics_sounds_defaults():
  return ml_collections.ConfigDict(dict(frames=3, frame_size=256))


def _kinetics_sounds(config, data_dir, kwargs):
  from data_prep import kinetics_sounds  # imports TFDS: only to build
  ds = config.dataset
  cfg = kinetics_sounds.make_config(frames=ds.kinetics_sounds.frames,
                                    frame_size=ds.kinetics_sounds.frame_size,
                                    validation_fraction=ds.validation_fraction,
                                    split_seed=ds.split_seed)
  return kinetics_sounds.KineticsSounds(config=cfg, raw_dir=_raw(config), **kwargs), _raw(config)


# ------------------------------------------------------------------ MMSA (CMU-MOSEI), npz


def _mmsa_defaults():
  return ml_collections.ConfigDict(dict(
      file="",               # the MMSA pickle, e.g. unaligned_39.pkl (relative to raw_dir)
      label="three_class",   # three_class (neg/neu/pos) | binary (neg/non-neg)
      # mean: masked mean over time, (D,) per modality (MLP encoders);
      # none: sequences (T, D+1) with a mask column (transformer encoder).
      pooling="mean",
  ))


def _mmsa_check(config) -> None:
  ds = config.dataset.mmsa
  cc.require(bool(ds.file), "dataset.mmsa.file", "name the MMSA pickle to read")
  # The pickle is the raw data: an absolute path needs no raw_dir, a bare file
  # name is read from raw_dir (or not at all once data_dir holds the build).
  cc.require(os.path.isabs(os.path.expanduser(ds.file)) or bool(config.dataset.raw_dir)
             or bool(config.dataset.data_dir), "dataset.mmsa.file",
             f"{ds.file!r} is a relative name: give the pickle's absolute path, or set "
             "dataset.raw_dir to the folder holding it")
  cc.one_of(ds.label, ("three_class", "binary"), "dataset.mmsa.label")
  cc.one_of(ds.pooling, ("mean", "none"), "dataset.mmsa.pooling")


def _mmsa(config, data_dir, kwargs):
  from data_prep import mmsa  # imports TFDS: only to build
  ds, raw = config.dataset, _raw(config)
  file = os.path.expanduser(ds.mmsa.file)
  path = file if os.path.isabs(file) or not raw else os.path.join(raw, file)
  return mmsa.builder_for_file(path, pooling=ds.mmsa.pooling, **kwargs), raw


def _npz_defaults():
  return ml_collections.ConfigDict(dict(
      name="",               # the dataset's name (default: raw_dir's base name)
  ))


def _npz(config, data_dir, kwargs):
  from data_prep import npz  # imports TFDS: only to build
  ds, raw = config.dataset, _raw(config)
  if raw is None:
    raise BadInputError("config.dataset.raw_dir: the npz dataset needs the folder of .npz files")
  return npz.builder_for_dir(raw, name=ds.npz.name or None,
                             validation_fraction=ds.validation_fraction,
                             split_seed=ds.split_seed, **kwargs), raw


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(_synthetic_defaults, _synthetic, _synthetic_check, from_raw=False),
    "av_digits": Dataset(_av_digits_defaults, _av_digits, _av_digits_check),
    "cremad": Dataset(_cremad_defaults, _cremad, _cremad_check),
    "ave": Dataset(_ave_defaults, _ave, _ave_check),
    "kinetics_sounds": Dataset(_kinetics_sounds_defaults, _kinetics_sounds,
                               _frames_check("kinetics_sounds")),
    "mmsa": Dataset(_mmsa_defaults, _mmsa, _mmsa_check, from_raw=False),
    "npz": Dataset(_npz_defaults, _npz),
}


def builder_for(config, data_dir: str):
  """(builder, raw_dir) for `config.dataset`."""
  ds = config.dataset
  if ds.name not in DATASETS:
    raise BadInputError(f"config.dataset.name: no builder for {ds.name!r}")
  return DATASETS[ds.name].builder(config, data_dir,
                                   dict(data_dir=data_dir, skip_bad=ds.skip_bad))
