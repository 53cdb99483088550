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
import os

import ml_collections
from ml_collections import config_dict

from asgml_jax import methods as method_registry
from asgml_jax import optim
from asgml_jax.config_checks import (ConfigError, modality_names, parse_named_floats,  # noqa: F401
                                     require as _require, one_of as _one_of, set_dotted,
                                     positive as _positive, at_least)
from asgml_jax.methods import stack as method_stack
from asgml_jax.models.encoders import ENCODERS, stage_count
from asgml_jax.models.fusion import FUSIONS
from asgml_jax.models.mid_fusion import POSITIONS as mmtm_positions
from asgml_jax.transforms.torch_optimizers import KINDS as OPTIMIZER_KINDS
from asgml_jax.transforms.zero_grad import ZERO_GRAD_SCOPES
from data_prep.registry import DATASETS

COMPUTE_DTYPES = ("float32", "bfloat16", "auto")



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
      dropout=0.1,         # mlp: between the two layers; vit/ast/transformer: ViT's dropouts
      # vit / ast / transformer (asgml_jax/models/transformers.py)
      patch_size=16,       # vit/ast: square patches of this side
      patch_stride=0,      # vit/ast: 0 = patch_size (no overlap); AST uses 10 with 16
      transformer_width=192,
      transformer_depth=4,
      transformer_heads=3,
      transformer_pooling="cls",        # cls | mean (of the real tokens)
      sequence_mask="last_column",      # transformer: last_column (input (L, D+1)) | none
      # resnet18: a torchvision resnet18 state dict (.pth, .npz or .safetensors)
      # to start the encoder from (asgml_jax/pretrained.py); None: from scratch.
      pretrained=config_dict.placeholder(str),
      # Multiplies this encoder's learning rate (e.g. 0.1 for a pretrained one).
      lr_scale=1.0,
      # imagenet: stored uint8 frames get RandomResizedCrop+flip (train) or a
      # resize (eval) to input_shape's size and ImageNet normalisation, on the
      # device (asgml_jax/augment.py); none: used as stored.
      image_augment="none",
      # Fitting stored arrays to the encoder (asgml_jax/input_adapters.py):
      # input_adapter none | flatten | add_channel; input_shape is the shape after it.
      input_adapter="none",
      standardize=False,   # per-feature mean/std of the train split, applied to all splits
      scale_uint8=False,   # uint8 -> float32 in [0, 1]
  ))
  cfg.update(overrides)
  return cfg


def base_config() -> ml_collections.ConfigDict:
  """Every key an experiment may set, with the paper protocol's defaults.

  `config_dict.placeholder(T)` below is ml_collections' typed None: the key
  defaults to None and `--config.key=...` is still type-checked as T. None
  is a real setting for each: the default TFDS dir (data_dir), no raw data
  (raw_dir), clean audio (audio_snr_db), fusion straight to logits
  (fusion_dim), the first modality conditions (condition_modality), skip
  rather than soft-mask (soft_mask_scale), start from scratch (init_from).
  """
  c = ml_collections.ConfigDict()
  c.seed = 42
  # How reports, sweep directories and log lines name this run ("": its variant
  # or stack of methods, as "a+b"). Set it to tell apart runs of one
  # method with different settings (an ablation).
  c.label = ""
  # Seeds of `launch.sweep` when --seeds is not given (the paper protocol: 42, 0, 1, 2, 3;
  # the 3-frame CREMA-D config uses 42, 123, 456, 789, 1024).
  c.sweep_seeds = (42, 0, 1, 2, 3)

  c.dataset = ml_collections.ConfigDict(dict(
      name="synthetic",
      data_dir=config_dict.placeholder(str),  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      # Where the raw files are (TFDS manual_dir); read only when the prepared
      # dataset is not in data_dir yet. Real datasets only.
      raw_dir=config_dict.placeholder(str),
      skip_bad=False,            # leave undecodable raw files out (count reported)
      # Where the splits live in training: device (batches gathered on the
      # accelerator) | host (host gathers and feeds each batch) | auto: device
      # when all splits take at most device_budget_gib, else host.
      placement="auto",
      device_budget_gib=8.0,
      validation_fraction=0.1,   # carve-out of train where a dataset has no validation split
      split_seed=0,              # fixes that carve-out
      # each dataset's own group (data_prep/registry.py)
      **{name: entry.defaults() for name, entry in DATASETS.items()},
  ))

  c.modalities = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(dict(
      feature_dim=512,
      fusion="concat",
      # None: the fusion maps straight to class logits (OGM-GE reference);
      # an int: fusion -> Linear(fusion_dim) -> ReLU -> classifier (the seeds'
      # model has 512 and no ReLU: fusion_activation=none).
      fusion_dim=config_dict.placeholder(int),
      # relu (design) | none (the seeds' model: the 512-d hidden layer feeds the
      # classifier directly).
      fusion_activation="relu",
      # film/gated: the modality that conditions/gates the others (None: first).
      condition_modality=config_dict.placeholder(str),
      # Per-modality heads (used where the fusion weight cannot be split):
      # stop the unimodal loss from reaching the encoder?
      unimodal_head_stop_gradient=False,
      # split: unimodal logits from the split fusion weight (concat) or the
      # per-modality fusion layers (sum); separate: Linear(D -> C) heads.
      unimodal_heads="split",
      # A learned Linear(C -> C) on the fused logits (AMCo's `linear_star`).
      logit_mixer=False,
      # none | mmtm: MMTM blocks between the encoders' stages (Greedy's
      # mid-fusion model; resnet18 / small_cnn / mlp encoders with the same
      # number of stages), after "all" stages or "all_but_first".
      mid_fusion="none",
      mmtm_after="all",
      mmtm_ratio=4,
      # Activations' dtype; params, optimizer state, loss, softmax, OGM scores and
      # probe signals stay float32. auto: bfloat16 on GPU/TPU, float32 on CPU.
      compute_dtype="float32",
  ))

  # Decoupled probes (docs/methods.md, decoupled probes), on in every run: they only watch.
  c.probes = ml_collections.ConfigDict(dict(
      kind="linear",          # linear | mlp_1layer
      hidden_dim=256,
      learning_rate=1e-3,     # Adam, the probes' own optimizer
      eval_freq=20,           # refresh every this many steps
      train_steps=10,         # probe steps per refresh, on the first half of the batch
      score_ema=0.1,          # EMA of the held-out probe accuracy = utilization score
      ema_init="first",       # first (design) | zero (seeds' code)
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      # sgd: PyTorch's SGD (momentum, weight decay added to the gradient) |
      # adam: PyTorch's Adam (weight decay added to the gradient) | adamw:
      # PyTorch's AdamW (decoupled decay); Adam's betas/eps: PyTorch's defaults.
      kind="sgd",
      learning_rate=1e-3,
      momentum=0.9,       # sgd
      weight_decay=1e-4,
      # step: StepLR(lr_step_epochs, lr_decay) in epochs | piecewise: the
      # learning rate is multiplied by each factor of lr_piecewise
      # ("epoch:factor,...", 0-based epochs; "" = constant) from that epoch on.
      schedule="step",
      lr_step_epochs=40,
      lr_decay=0.1,
      lr_piecewise="",
      # what a parameter group without a gradient gets (transforms/zero_grad.py):
      # set_to_none: skipped (PyTorch >= 2) | zeros_per_batch: a zero-gradient step if
      # it was stepped earlier in the batch | zeros: ... earlier in the run (PyTorch < 2)
      zero_grad="set_to_none",
  ))

  c.loss = ml_collections.ConfigDict(dict(
      unimodal_weight=1.0,  # gamma of the loss (docs/methods.md); 0 disables the unimodal terms
  ))

  # The methods (asgml_jax/methods/): `stack` composes several, a
  # comma-separated list of method names (order free: the canonical order of
  # methods/stack.py applies); when it is empty, `name` picks one method or a
  # named stack (methods.NAMED_STACKS; the default is the empty one). Each
  # method's own group (method.<block>) comes from its module.
  c.method = ml_collections.ConfigDict(dict(
      name=method_registry.DEFAULT_NAME,
      stack="",
      # Which implementation each method follows:
      # design: this project's (documented in each method module);
      # seed_code: every difference of the seeds' PyTorch code (docs/methods.md, protocols), the
      #   options of `SEED_CODE_PRESET` forced whatever they are set to;
      # reference: each method of the stack as its public repository trains it
      #   (its variant's settings and its `reference` options forced).
      protocol="design",
      seed_code=False,   # the older switch for protocol=seed_code (kept for old runs)
      # True: the optimizer, learning-rate schedule, epochs and batch size the
      # stack's reference scripts train this dataset with (each method module's
      # `optimizers`, docs/methods.md), forced whatever optimizer.*, num_epochs
      # and batch_size say; refused where a reference names none.
      reference_optimizer=False,
      # Unimodal teachers of two-stage methods (UMT; asgml_jax/teachers.py):
      # the folder holding unimodal_<m>/seed_<s>/ runs; empty: the launcher's
      # default (<workdir>/teachers, or the sweep's folder: its unimodal_<m> rows).
      teachers=ml_collections.ConfigDict(dict(dir="")),
      **method_registry.blocks(),
  ))

  # Data parallelism (asgml_jax/parallel.py): "auto" shards each batch over every
  # device when there is more than one; "off" uses one device.
  c.parallel = ml_collections.ConfigDict(dict(data_parallel="auto"))
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


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys and values; returns the config unchanged or raises ConfigError."""
  _check_keys(config, base_config(), "")
  _one_of(config.dataset.name, tuple(DATASETS), "dataset.name")
  _one_of(config.model.fusion, tuple(FUSIONS), "model.fusion")
  _one_of(config.model.compute_dtype, COMPUTE_DTYPES, "model.compute_dtype")
  _one_of(config.method.protocol, PROTOCOLS, "method.protocol")
  _require(not (config.method.seed_code and config.method.protocol != "design"),
           "method.seed_code", "is the older name of method.protocol=seed_code; set only "
           "method.protocol")
  label = config.label
  _require(isinstance(label, str) and "/" not in label and label.strip() == label
           and label not in (".", ".."), "label",
           f"must be a name usable as a directory (no '/', no surrounding spaces), got {label!r}")
  seeds = tuple(config.sweep_seeds)
  _require(len(seeds) > 0 and all(isinstance(x, int) for x in seeds)
           and len(set(seeds)) == len(seeds), "sweep_seeds",
           f"must be distinct integers, got {seeds!r}")
  for key in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
              "checkpoint_keep", "model.feature_dim", "optimizer.lr_step_epochs"):
    _positive(config, key, integer=True)
  _positive(config, "optimizer.learning_rate")
  _require(0.0 <= config.optimizer.momentum < 1.0, "optimizer.momentum",
           f"must be in [0, 1), got {config.optimizer.momentum!r}")
  at_least(config, "optimizer.weight_decay", 0)
  _one_of(config.optimizer.zero_grad, tuple(ZERO_GRAD_SCOPES), "optimizer.zero_grad")
  _one_of(config.optimizer.kind, OPTIMIZER_KINDS, "optimizer.kind")
  _one_of(config.optimizer.schedule, optim.SCHEDULES, "optimizer.schedule")
  optim.piecewise_milestones(config.optimizer.lr_piecewise)   # ConfigError naming the key
  _require(config.optimizer.schedule == "piecewise" or not config.optimizer.lr_piecewise,
           "optimizer.lr_piecewise", "is read only with optimizer.schedule=piecewise (the "
           "schedule is step: StepLR(lr_step_epochs, lr_decay)); set both or neither")
  _one_of(config.method.reference_optimizer, (True, False), "method.reference_optimizer")
  _require(0.0 < config.optimizer.lr_decay <= 1.0, "optimizer.lr_decay",
           f"must be in (0, 1], got {config.optimizer.lr_decay!r}")
  at_least(config, "loss.unimodal_weight", 0)
  if config.model.fusion_dim is not None:
    _positive(config, "model.fusion_dim", integer=True)
  _one_of(config.model.unimodal_heads, ("split", "separate"), "model.unimodal_heads")
  _one_of(config.model.fusion_activation, ("relu", "none"), "model.fusion_activation")
  _one_of(config.model.logit_mixer, (True, False), "model.logit_mixer")
  _one_of(config.model.mid_fusion, ("none", "mmtm"), "model.mid_fusion")
  _one_of(config.model.mmtm_after, mmtm_positions, "model.mmtm_after")
  _positive(config, "model.mmtm_ratio", integer=True)
  _one_of(config.probes.kind, ("linear", "mlp_1layer"), "probes.kind")
  _one_of(config.probes.ema_init, ("first", "zero"), "probes.ema_init")
  for key in ("probes.hidden_dim", "probes.eval_freq", "probes.train_steps"):
    _positive(config, key, integer=True)
  _positive(config, "probes.learning_rate")
  _require(0 < config.probes.score_ema <= 1, "probes.score_ema",
           f"must be in (0, 1], got {config.probes.score_ema!r}")
  method_stack.validate(config)

  names = list(config.modalities.keys())
  _require(len(names) >= 1, "modalities", "no modality configured")
  for name in names:
    mod = config.modalities[name]
    key = f"modalities.{name}"
    _one_of(mod.encoder, tuple(ENCODERS), f"{key}.encoder")
    shape = tuple(mod.input_shape)
    _require(all(isinstance(s, int) and s > 0 for s in shape), f"{key}.input_shape",
             f"must be positive integers, got {shape!r}")
    kind = ENCODERS[mod.encoder]
    _require(len(shape) in kind.input_ranks, f"{key}.input_shape",
             f"the {mod.encoder} encoder takes {kind.takes}, got {shape!r}")
    if mod.encoder == "transformer":
      _one_of(mod.sequence_mask, ("last_column", "none"), f"{key}.sequence_mask")
      _require(mod.sequence_mask == "none" or shape[1] >= 2, f"{key}.input_shape",
               f"sequence_mask=last_column reads (L, D+1) with D >= 1, got {shape!r}")
    _one_of(mod.image_augment, ("none", "imagenet"), f"{key}.image_augment")
    _one_of(mod.input_adapter, ("none", "flatten", "add_channel"), f"{key}.input_adapter")
    _require(not (mod.image_augment == "imagenet" and (mod.input_adapter != "none"
                                                      or mod.standardize or mod.scale_uint8)),
             f"{key}.image_augment", "imagenet reads the stored uint8 frames itself; it takes no "
             "input_adapter, standardize or scale_uint8")
    if mod.image_augment == "imagenet":
      _require(len(shape) == 4 and shape[-1] == 3 and shape[1] == shape[2], f"{key}.input_shape",
               f"image_augment=imagenet makes square RGB frames (T, S, S, 3), got {shape!r}")
    _require(0.0 <= mod.dropout < 1.0, f"{key}.dropout", f"must be in [0, 1), got {mod.dropout!r}")
    _positive(config, f"{key}.cnn_width", integer=True)
    _positive(config, f"{key}.mlp_hidden_dim", integer=True)
    _validate_transformer(config, key, mod, shape)
    _validate_pretrained(config, key, mod, shape)
    _require(isinstance(mod.lr_scale, (int, float)) and mod.lr_scale >= 0, f"{key}.lr_scale",
             f"must be >= 0 (0 freezes the encoder), got {mod.lr_scale!r}")
  if config.model.mid_fusion == "mmtm":
    encoders = [config.modalities[n].encoder for n in names]
    _require(stage_count(encoders) is not None, "model.mid_fusion",
             "mmtm runs the encoders stage by stage in lockstep: it needs resnet18, small_cnn "
             f"or mlp encoders with the same number of stages, got {encoders}")
    _require(len(names) >= 2, "model.mid_fusion", "mmtm needs at least 2 modalities")
  cond = config.model.condition_modality
  if cond is not None:
    _one_of(cond, names, "model.condition_modality")
  if config.model.fusion in ("film", "gated"):
    _require(len(names) >= 2, "model.fusion", f"{config.model.fusion} needs at least 2 modalities")

  _validate_dataset(config)
  return config


def _validate_transformer(config, key: str, mod, shape: tuple) -> None:
  if mod.encoder not in ("vit", "ast", "transformer"):
    return
  for k in ("transformer_width", "transformer_depth", "transformer_heads"):
    _positive(config, f"{key}.{k}", integer=True)
  _require(mod.transformer_width % mod.transformer_heads == 0, f"{key}.transformer_heads",
           f"must divide transformer_width ({mod.transformer_width}), got "
           f"{mod.transformer_heads}")
  _one_of(mod.transformer_pooling, ("cls", "mean"), f"{key}.transformer_pooling")
  if mod.encoder == "transformer":
    return
  _positive(config, f"{key}.patch_size", integer=True)
  _require(isinstance(mod.patch_stride, int) and 0 <= mod.patch_stride, f"{key}.patch_stride",
           f"must be a non-negative integer (0: patch_size), got {mod.patch_stride!r}")
  height, width = (shape[-3], shape[-2]) if len(shape) >= 3 else (0, 0)
  _require(mod.patch_size <= min(height, width), f"{key}.patch_size",
           f"{mod.patch_size} does not fit the input's {height} x {width}")


def _validate_pretrained(config, key: str, mod, shape: tuple) -> None:
  if not mod.pretrained:
    return
  _require(mod.encoder == "resnet18", f"{key}.pretrained",
           f"pretrained weights load into the resnet18 encoder, not {mod.encoder}")
  _require(config.model.feature_dim == 512, "model.feature_dim",
           f"a pretrained ResNet-18 gives 512 features, got {config.model.feature_dim}")
  _require(shape[-1] in (1, 3), f"{key}.pretrained",
           f"pretrained ResNet-18 weights take 3 (RGB) or 1 input channel, input_shape is "
           f"{shape!r}")
  path = os.path.expanduser(mod.pretrained)
  _require(os.path.isfile(path), f"{key}.pretrained",
           f"no such file: {path} (a torchvision resnet18 state dict, .pth / .npz / "
           f".safetensors; nothing is downloaded)")


def _validate_dataset(config) -> None:
  ds = config.dataset
  _one_of(ds.placement, ("auto", "device", "host"), "dataset.placement")
  _one_of(config.parallel.data_parallel, ("auto", "off"), "parallel.data_parallel")
  _positive(config, "dataset.device_budget_gib")
  _require(0 < ds.validation_fraction < 1, "dataset.validation_fraction",
           f"must be in (0, 1), got {ds.validation_fraction!r}")
  entry = DATASETS[ds.name]
  if entry.from_raw:
    _require(bool(ds.raw_dir) or bool(ds.data_dir), "dataset.raw_dir",
             f"the {ds.name} dataset is built from raw files: set dataset.raw_dir "
             "(or dataset.data_dir to where it is already prepared)")
  if entry.check is not None:
    entry.check(config)


# docs/methods.md, protocols: every difference of the seeds' PyTorch code, as (key, value).
_GENERIC_SEED_CODE = (
    ("probes.ema_init", "zero"),
    ("probes.learning_rate", 1e-3),
    ("model.unimodal_heads", "separate"),
    ("loss.unimodal_weight", 1.0),
    # the seeds' model: concat -> Linear(512) -> Linear(C), no ReLU between
    ("model.fusion_dim", 512),
    ("model.fusion_activation", "none"),
)
SEED_CODE_PRESET = _GENERIC_SEED_CODE + method_stack.seed_code_settings()


PROTOCOLS = ("design", "seed_code", "reference")


def protocol_of(config) -> str:
  """The protocol a config asks for (`method.seed_code=True` is protocol seed_code)."""
  method = config["method"]
  if method.get("seed_code"):
    return "seed_code"
  return method.get("protocol", "design")


def effective_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run uses: its protocol's settings forced (for seed_code the
  seeds' settings, docs/methods.md, protocols; for reference each stacked
  method's reference settings), then, with `method.reference_optimizer`, the
  stack's reference optimizer for the dataset (after the protocol: which
  reference code a method follows may be one of its settings)."""
  protocol = protocol_of(config)
  if protocol == "design" and not config.method.reference_optimizer:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  if protocol == "seed_code":
    for key, value in SEED_CODE_PRESET:
      set_dotted(out, key, value)
  elif protocol == "reference":
    for key, value in method_stack.reference_settings(out):
      set_dotted(out, key, value)
  if out.method.reference_optimizer:
    for key, value in method_stack.reference_optimizer_settings(out):
      set_dotted(out, key, value)
  out.lock()
  return validate(out)   # a protocol's settings must make a runnable config too
