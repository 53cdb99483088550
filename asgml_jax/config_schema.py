"""The one schema every experiment config is checked against.

Configs in `configs/` start from `base_config()` and override values. Because a
misspelt key in a research config silently trains the wrong experiment,
`validate(config)` rejects any key the schema does not know and any impossible
value, with one line that names the key (`ConfigError`). Modality names are
free (they come from the dataset); everything under a modality is checked.

Modalities are always taken in sorted-name order (ml_collections sorts keys);
this fixes the concat order of the fusion (audio before visual, as OGM-GE).
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections
from ml_collections import config_dict

ENCODERS = ("resnet18", "small_cnn", "mlp")
FUSIONS = ("concat", "sum", "film", "gated")
DATASETS = ("synthetic",)
METHODS = ("baseline", "ogm", "ogm_ge")
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """An experiment config that cannot be run; the message names the key."""


def modality_config(encoder: str = "small_cnn", input_shape=(32, 32, 1),
                    **overrides) -> ml_collections.ConfigDict:
  """One modality: its encoder and the shape of one example (no batch axis).

  Images/spectrograms are (H, W, C); several frames are (T, H, W, C) and are
  folded into the batch by the encoder; features for the MLP are (D,).
  """
  cfg = ml_collections.ConfigDict(dict(
      encoder=encoder,
      input_shape=tuple(input_shape),
      cnn_width=32,        # small_cnn: channels of the first stage (x1, x2, x4)
      mlp_hidden_dim=256,  # mlp: hidden width
      dropout=0.1,         # mlp: dropout between the two layers
  ))
  cfg.update(overrides)
  return cfg


def base_config() -> ml_collections.ConfigDict:
  """Every key an experiment may set, with the SPEC §6 defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 42

  c.dataset = ml_collections.ConfigDict(dict(
      name="synthetic",
      data_dir=config_dict.placeholder(str),  # None: ~/tensorflow_datasets
      synthetic=ml_collections.ConfigDict(dict(
          num_classes=6,
          num_train=3000,
          num_validation=600,
          num_test=600,
          seed=0,
          noise=1.0,
          # Per modality: scale of the class template added to the noise.
          # A larger signal makes that modality easier, so it dominates.
          signal=ml_collections.ConfigDict(),
      )),
  ))

  c.modalities = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(dict(
      feature_dim=512,
      fusion="concat",
      # None: the fusion maps straight to class logits (OGM-GE reference);
      # an int: fusion -> Linear(fusion_dim) -> ReLU -> classifier (seeds' model).
      fusion_dim=config_dict.placeholder(int),
      # film/gated: the modality that conditions/gates the others (None: first).
      condition_modality=config_dict.placeholder(str),
      # Per-modality heads (used where the fusion weight cannot be split):
      # stop the unimodal loss from reaching the encoder?
      unimodal_head_stop_gradient=False,
      compute_dtype="float32",
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      momentum=0.9,
      weight_decay=1e-4,
      lr_step_epochs=40,  # StepLR(step_size, gamma) in epochs
      lr_decay=0.1,
  ))

  c.loss = ml_collections.ConfigDict(dict(
      unimodal_weight=1.0,  # gamma of SPEC §2; 0 disables the unimodal terms
  ))

  c.method = ml_collections.ConfigDict(dict(
      name="baseline",
      # OGM / OGM-GE (method.name ogm | ogm_ge): reference math of BASELINES.md.
      ogm=ml_collections.ConfigDict(dict(
          alpha=0.8,
          modulation_starts=0,   # epochs, inclusive
          modulation_ends=50,    # epochs, inclusive
          leaves="all",          # all | conv (reference: 4-D only) | min_2d (seeds' code)
          noise_on="all",        # all (reference) | dominant (seeds' code)
      )),
  ))

  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 50
  c.log_every_steps = 20
  c.checkpoint_keep = 3
  # Where to start when the workdir has no checkpoint: a workdir whose latest
  # checkpoint's params and batch stats initialise this run (step 0).
  c.init_from = config_dict.placeholder(str)
  return c


# Paths (dotted) whose keys are free names; their values are checked against
# the template given here (None: any scalar value).
_FREE_MAPS = {
    "modalities": modality_config(),
    "dataset.synthetic.signal": None,
}


def _suggest(key: str, known) -> str:
  close = difflib.get_close_matches(key, list(known), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(cfg, schema, path: str) -> None:
  for key in cfg.keys():
    full = f"{path}.{key}" if path else key
    if key not in schema:
      raise ConfigError(f"config.{full}: unknown key{_suggest(key, schema.keys())}")
    value, template = cfg[key], schema[key]
    if full in _FREE_MAPS:
      for name in value.keys():
        sub = _FREE_MAPS[full]
        if sub is not None:
          _check_keys(value[name], sub, f"{full}.{name}")
    elif isinstance(template, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config.{full}: expected a group of keys, got {value!r}")
      _check_keys(value, template, full)


def _require(ok: bool, key: str, problem: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}: {problem}")


def _one_of(value: Any, allowed, key: str) -> None:
  _require(value in allowed, key,
           f"unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")


def _positive(cfg, key: str, *, integer: bool = False) -> None:
  value = cfg
  for part in key.split("."):
    value = value[part]
  kind = int if integer else (int, float)
  _require(isinstance(value, kind) and not isinstance(value, bool) and value > 0,
           key, f"must be a positive {'integer' if integer else 'number'}, got {value!r}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys and values; returns the config unchanged or raises ConfigError."""
  _check_keys(config, base_config(), "")
  _one_of(config.dataset.name, DATASETS, "dataset.name")
  _one_of(config.method.name, METHODS, "method.name")
  _one_of(config.model.fusion, FUSIONS, "model.fusion")
  _one_of(config.model.compute_dtype, COMPUTE_DTYPES, "model.compute_dtype")
  for key in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
              "checkpoint_keep", "model.feature_dim", "optimizer.lr_step_epochs"):
    _positive(config, key, integer=True)
  _positive(config, "optimizer.learning_rate")
  _require(0.0 <= config.optimizer.momentum < 1.0, "optimizer.momentum",
           f"must be in [0, 1), got {config.optimizer.momentum!r}")
  _require(config.optimizer.weight_decay >= 0, "optimizer.weight_decay",
           f"must be >= 0, got {config.optimizer.weight_decay!r}")
  _require(0.0 < config.optimizer.lr_decay <= 1.0, "optimizer.lr_decay",
           f"must be in (0, 1], got {config.optimizer.lr_decay!r}")
  _require(config.loss.unimodal_weight >= 0, "loss.unimodal_weight",
           f"must be >= 0, got {config.loss.unimodal_weight!r}")
  ogm = config.method.ogm
  _require(ogm.alpha >= 0, "method.ogm.alpha", f"must be >= 0, got {ogm.alpha!r}")
  _one_of(ogm.leaves, ("all", "conv", "min_2d"), "method.ogm.leaves")
  _one_of(ogm.noise_on, ("all", "dominant"), "method.ogm.noise_on")
  _require(0 <= ogm.modulation_starts <= ogm.modulation_ends, "method.ogm.modulation_ends",
           f"window [{ogm.modulation_starts}, {ogm.modulation_ends}] is empty or negative")
  if config.model.fusion_dim is not None:
    _positive(config, "model.fusion_dim", integer=True)

  names = list(config.modalities.keys())
  _require(len(names) >= 1, "modalities", "no modality configured")
  for name in names:
    mod = config.modalities[name]
    key = f"modalities.{name}"
    _one_of(mod.encoder, ENCODERS, f"{key}.encoder")
    shape = tuple(mod.input_shape)
    _require(all(isinstance(s, int) and s > 0 for s in shape), f"{key}.input_shape",
             f"must be positive integers, got {shape!r}")
    if mod.encoder == "mlp":
      _require(len(shape) == 1, f"{key}.input_shape",
               f"the mlp encoder takes feature vectors (D,), got {shape!r}")
    else:
      _require(len(shape) in (3, 4), f"{key}.input_shape",
               f"{mod.encoder} takes (H, W, C) or (T, H, W, C), got {shape!r}")
    _require(0.0 <= mod.dropout < 1.0, f"{key}.dropout", f"must be in [0, 1), got {mod.dropout!r}")
    _positive(config, f"{key}.cnn_width", integer=True)
    _positive(config, f"{key}.mlp_hidden_dim", integer=True)
  cond = config.model.condition_modality
  if cond is not None:
    _one_of(cond, names, "model.condition_modality")
  if config.model.fusion in ("film", "gated"):
    _require(len(names) >= 2, "model.fusion", f"{config.model.fusion} needs at least 2 modalities")

  if config.dataset.name == "synthetic":
    syn = config.dataset.synthetic
    for key in ("num_classes", "num_train", "num_validation", "num_test"):
      _positive(config, f"dataset.synthetic.{key}", integer=True)
    _require(syn.num_classes >= 2, "dataset.synthetic.num_classes", "needs at least 2 classes")
    signal_names = set(syn.signal.keys())
    for name in signal_names - set(names):
      raise ConfigError(f"config.dataset.synthetic.signal.{name}: unknown modality "
                        f"(configured modalities: {', '.join(names)})")
    for name in names:
      _require(name in signal_names, f"dataset.synthetic.signal.{name}",
               "missing: the synthetic dataset needs a signal strength per modality")
      _require(syn.signal[name] >= 0, f"dataset.synthetic.signal.{name}",
               f"must be >= 0, got {syn.signal[name]!r}")
    _require(syn.num_train >= config.batch_size, "batch_size",
             f"{config.batch_size} is larger than the training split ({syn.num_train})")
  return config


def modality_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The configured modalities in their fixed (sorted) order."""
  return tuple(sorted(config.modalities.keys()))
