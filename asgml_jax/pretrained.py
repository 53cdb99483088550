"""Pretrained encoder weights from a file the user has (nothing is downloaded).

`modalities.<m>.pretrained=<path>` names a torchvision `resnet18` state dict
(`.pth` from `torch.save(model.state_dict())`, or the same names exported to
`.npz` / `.safetensors`; `asgml_jax/weight_files.py` reads all three without
torch). `resnet18_variables` converts it to this project's ResNet-18
(`models/encoders.py`), whose layers are torchvision's one for one:

    conv1 / bn1                   -> stem_conv / stem_bn
    layer{s}.{b}.conv{k} / bn{k}  -> stage{s}_block{b+1}/Conv_{k-1} / BatchNorm_{k-1}
    layer{s}.0.downsample.0 / .1  -> stage{s}_block1/downsample_conv / downsample_bn
    fc                            -> not used (the encoder ends at the pooled 512 features)

Conv kernels go from PyTorch's (out, in, kh, kw) to Flax's (kh, kw, in, out);
BatchNorm weight/bias are Flax's scale/bias and running_mean/var its
batch_stats mean/var (num_batches_tracked is not used: both sides use a fixed
momentum). Both pad explicitly (3 for the stem, 1 for the 3x3 convs and the
max pool), so the features equal torchvision's `avgpool` output in eval mode
(tests/test_pretrained.py checks 1e-4 against torchvision's own forward).

Input channels: torchvision's stem takes RGB. For a 1-channel input (a
spectrogram) the stem kernel is the mean of the three RGB kernels, as the
issue asks and as audio models commonly adapt ImageNet weights: a 1-channel
input x then gets the response torchvision gives the RGB image (x/3, x/3,
x/3). (Summing the kernels instead would match (x, x, x); the first BatchNorm
takes most of that scale out either way.) Other channel counts are refused.
"""

from __future__ import annotations

import functools

import numpy as np

from asgml_jax import weight_files
from data_prep.common import BadInputError

_BN_PARAMS = {"weight": "scale", "bias": "bias"}
_BN_STATS = {"running_mean": "mean", "running_var": "var"}


def _torchvision_names() -> dict[str, tuple[str, str]]:
  """torchvision layer prefix -> (flax module path, 'conv' | 'bn')."""
  names = {"conv1": ("stem_conv", "conv"), "bn1": ("stem_bn", "bn")}
  for stage in range(1, 5):
    for block in range(2):
      ours = f"stage{stage}_block{block + 1}"
      for k in (1, 2):
        names[f"layer{stage}.{block}.conv{k}"] = (f"{ours}/Conv_{k - 1}", "conv")
        names[f"layer{stage}.{block}.bn{k}"] = (f"{ours}/BatchNorm_{k - 1}", "bn")
      if stage > 1 and block == 0:
        names[f"layer{stage}.0.downsample.0"] = (f"{ours}/downsample_conv", "conv")
        names[f"layer{stage}.0.downsample.1"] = (f"{ours}/downsample_bn", "bn")
  return names


def _set(tree: dict, path: str, leaf: str, value: np.ndarray) -> None:
  for part in path.split("/"):
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def resnet18_variables(state_dict: dict[str, np.ndarray], in_channels: int,
                       path: str = "the state dict") -> tuple[dict, dict]:
  """(params, batch_stats) of `models.encoders.ResNet18` (feature_dim 512)."""
  names = _torchvision_names()
  expected = {f"{prefix}.{leaf}" for prefix, (_, kind) in names.items()
              for leaf in (("weight",) if kind == "conv"
                           else ("weight", "bias", "running_mean", "running_var"))}
  missing = sorted(expected - set(state_dict))
  if missing:
    raise BadInputError(f"{path}: not a torchvision resnet18 state dict ({len(missing)} "
                        f"tensors missing, e.g. {', '.join(missing[:3])})")
  params: dict = {}
  stats: dict = {}
  for prefix, (ours, kind) in names.items():
    if kind == "conv":
      kernel = np.asarray(state_dict[f"{prefix}.weight"], np.float32)
      if prefix == "conv1":
        kernel = _stem_for_channels(kernel, in_channels, path)
      _set(params, ours, "kernel", kernel.transpose(2, 3, 1, 0))
      continue
    for theirs, leaf in _BN_PARAMS.items():
      _set(params, ours, leaf, np.asarray(state_dict[f"{prefix}.{theirs}"], np.float32))
    for theirs, leaf in _BN_STATS.items():
      _set(stats, ours, leaf, np.asarray(state_dict[f"{prefix}.{theirs}"], np.float32))
  return params, stats


def _stem_for_channels(kernel: np.ndarray, in_channels: int, path: str) -> np.ndarray:
  if kernel.shape != (64, 3, 7, 7):
    raise BadInputError(f"{path}: conv1.weight is {kernel.shape}, a torchvision resnet18 "
                        f"has (64, 3, 7, 7)")
  if in_channels == 3:
    return kernel
  if in_channels == 1:
    return kernel.mean(axis=1, keepdims=True)
  raise BadInputError(f"{path}: pretrained ResNet-18 weights take 3 (RGB) or 1 channel "
                      f"(mean of the RGB kernels), the input has {in_channels}")


def _replace_subtree(tree: dict, new: dict, where: str) -> dict:
  """`tree` with every leaf of `new` put in its place; shapes must agree."""
  out = dict(tree)
  for key, value in new.items():
    if key not in tree:
      raise BadInputError(f"{where}: the encoder has no {key!r}")
    if isinstance(value, dict):
      out[key] = _replace_subtree(tree[key], value, f"{where}/{key}")
    else:
      if tuple(tree[key].shape) != tuple(value.shape):
        raise BadInputError(f"{where}/{key}: pretrained {value.shape} but the encoder "
                            f"has {tuple(tree[key].shape)}")
      out[key] = np.asarray(value, tree[key].dtype)
  return out


def pretrained_modalities(config) -> list[str]:
  """The modalities whose config names a `pretrained` file."""
  return [m for m in config.modalities if config.modalities[m].get("pretrained")]


def load_into(config, params: dict, batch_stats: dict) -> tuple[dict, dict]:
  """params / batch_stats with each modality's `pretrained` file loaded into its
  encoder (`params["encoders"][m]`); modalities without one keep theirs."""
  for name in pretrained_modalities(config):
    mod = config.modalities[name]
    enc_params, enc_stats = resnet18_variables(weight_files.read_state_dict(mod.pretrained),
                                               int(mod.input_shape[-1]), mod.pretrained)
    where = f"{mod.pretrained} -> modalities.{name}"
    params = _replace_subtree(params, {"encoders": {name: enc_params}}, where)
    batch_stats = _replace_subtree(batch_stats, {"encoders": {name: enc_stats}}, where)
  return params, batch_stats


def variables_replacement(config):
  """For `create_train_state`: the function that loads the config's pretrained
  encoders, or None when no modality names a file."""
  return functools.partial(load_into, config) if pretrained_modalities(config) else None
