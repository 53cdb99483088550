"""Config -> TFDS builder: which builder (and builder config) a dataset name means.

The training side (`asgml_jax.input_pipeline`) and the command line
(`python -m data_prep.build`) both come through here, so a dataset prepared by
one is found by the other: same builder, same config name, same data_dir.
"""

from __future__ import annotations

import os

from data_prep.common import BadInputError


def _raw(config) -> str | None:
  raw = config.dataset.raw_dir
  return os.path.abspath(os.path.expanduser(raw)) if raw else None


def builder_for(config, data_dir: str):
  """(builder, raw_dir) for `config.dataset`."""
  ds = config.dataset
  kwargs = dict(data_dir=data_dir, skip_bad=ds.skip_bad)
  if ds.name == "synthetic":
    from data_prep.synthetic import Synthetic, SyntheticSpec
    return Synthetic(spec=SyntheticSpec.from_config(config), data_dir=data_dir), None
  if ds.name == "av_digits":
    from data_prep import av_digits
    cfg = av_digits.make_config(**{k: ds.av_digits[k] for k in ds.av_digits.keys()},
                                validation_fraction=ds.validation_fraction)
    return av_digits.AvDigits(config=cfg, **kwargs), _raw(config)
  if ds.name == "cremad":
    from data_prep import cremad
    cfg = cremad.make_config(frames=ds.cremad.frames, frame_size=ds.cremad.frame_size,
                             pad_mode=ds.cremad.pad_mode,
                             test_list=ds.cremad.test_list or cremad.TEST_LIST,
                             validation_fraction=ds.validation_fraction, split_seed=ds.split_seed)
    return cremad.CremaD(config=cfg, **kwargs), _raw(config)
  if ds.name == "ave":
    from data_prep import ave
    cfg = ave.make_config(split=ds.ave.split, frames=ds.ave.frames, frame_size=ds.ave.frame_size,
                          validation_fraction=ds.validation_fraction, split_seed=ds.split_seed)
    return ave.Ave(config=cfg, raw_dir=_raw(config), **kwargs), _raw(config)
  if ds.name == "kinetics_sounds":
    from data_prep import kinetics_sounds
    cfg = kinetics_sounds.make_config(frames=ds.kinetics_sounds.frames,
                                      frame_size=ds.kinetics_sounds.frame_size,
                                      validation_fraction=ds.validation_fraction,
                                      split_seed=ds.split_seed)
    return kinetics_sounds.KineticsSounds(config=cfg, raw_dir=_raw(config), **kwargs), _raw(config)
  if ds.name == "mmsa":
    from data_prep import mmsa
    raw = _raw(config)
    path = ds.mmsa.file if os.path.isabs(ds.mmsa.file) or not raw else os.path.join(raw, ds.mmsa.file)
    return mmsa.builder_for_file(path, pooling=ds.mmsa.pooling, **kwargs), raw
  if ds.name == "npz":
    from data_prep import npz
    raw = _raw(config)
    if raw is None:
      raise BadInputError("config.dataset.raw_dir: the npz dataset needs the folder of .npz files")
    return npz.builder_for_dir(raw, name=ds.npz.name or None,
                               validation_fraction=ds.validation_fraction,
                               split_seed=ds.split_seed, **kwargs), raw
  raise BadInputError(f"config.dataset.name: no builder for {ds.name!r}")
