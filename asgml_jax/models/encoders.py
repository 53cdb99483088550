"""Per-modality encoders: ResNet-18, a small CNN, a 2-layer MLP (Transformers:
`transformers.py`).

Every encoder maps one modality's batch to features (B, feature_dim).
Convolutional encoders accept (B, H, W, C) or (B, T, H, W, C): T frames are
folded into the batch, run through the network, and averaged over time and
space after the last stage, as the OGM-GE reference does for visual clips.

Initialisation follows the OGM-GE reference: Conv kaiming-normal (fan_out,
ReLU gain, untruncated), Linear xavier-normal with zero bias, BatchNorm (1, 0).
BatchNorm uses PyTorch's momentum 0.1 (Flax momentum 0.9) and eps 1e-5.
Max pooling is `pooling.max_pool` (same values as `nn.max_pool`; its gradient
is elementwise instead of XLA:CPU's argmax + scatter, see that module).

Stages (mid-fusion, `model.mid_fusion="mmtm"`): the ResNet-18, the small CNN
and the MLP can also run one stage at a time, `encoder(x, train, stage=k)`,
with the same parameters as the whole network: stage 0 takes the input,
stages 1..S-1 the previous stage's maps (frames folded into the batch), and
stage S (`stage_count`) turns the last maps into the features. A model runs
every modality's stage k before any stage k+1, so blocks between the
encoders (MMTM, Greedy) see all modalities at the same depth.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from asgml_jax.models.pooling import max_pool
from asgml_jax.models.transformers import PatchTransformer, SequenceTransformer

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def _batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def _fold_frames(x):
  """(B, T, H, W, C) -> (B*T, H, W, C), remembering T (1 for plain images)."""
  if x.ndim == 5:
    b, t = x.shape[:2]
    return x.reshape((b * t,) + x.shape[2:]), t
  return x, 1


def _pool_over_time_and_space(maps_NxHxWxD, frames: int):
  n, h, w, d = maps_NxHxWxD.shape
  maps = maps_NxHxWxD.reshape((n // frames, frames * h * w, d))
  return jnp.mean(maps.astype(jnp.float32), axis=1)


class BasicBlock(nn.Module):
  """ResNet basic block (two 3x3 convs) with a 1x1 projection when needed."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = nn.Conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)),
                use_bias=False, kernel_init=conv_init, dtype=self.dtype)(x)
    y = nn.relu(_batch_norm(train, self.dtype)(y))
    y = nn.Conv(self.features, (3, 3), 1, padding=((1, 1), (1, 1)),
                use_bias=False, kernel_init=conv_init, dtype=self.dtype)(y)
    y = _batch_norm(train, self.dtype)(y)
    if self.strides != 1 or residual.shape[-1] != self.features:
      residual = nn.Conv(self.features, (1, 1), self.strides, use_bias=False,
                         kernel_init=conv_init, dtype=self.dtype, name="downsample_conv")(residual)
      residual = _batch_norm(train, self.dtype, name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet18(nn.Module):
  """ResNet-18 from scratch; any input channel count; features of width 512.

  `feature_dim` other than 512 adds no projection: the reference's features are
  the last stage's 512 channels, so the width of the stages is scaled instead
  (feature_dim / 8 channels in the stem), which keeps the architecture's shape.
  """
  feature_dim: int = 512
  dtype: Any = jnp.float32
  stages = 4            # residual stages (the stem runs with the first); mid fusion

  @nn.compact
  def __call__(self, x, train: bool = False, stage: int | None = None, frames: int = 1):
    width = self.feature_dim // 8
    run = range(self.stages + 1) if stage is None else (stage,)
    for k in run:
      if k == 0:
        x, frames = _fold_frames(x)
        x = nn.Conv(width, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False,
                    kernel_init=conv_init, dtype=self.dtype,
                    name="stem_conv")(x.astype(self.dtype))
        x = nn.relu(_batch_norm(train, self.dtype, name="stem_bn")(x))
        x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
      if k < self.stages:
        for block in range(2):
          strides = 2 if (k > 0 and block == 0) else 1
          x = BasicBlock(width * 2 ** k, strides, self.dtype,
                         name=f"stage{k + 1}_block{block + 1}")(x, train)
      else:
        x = _pool_over_time_and_space(x, frames)
    return x


class SmallCNN(nn.Module):
  """Three conv-BN-ReLU stages (width, 2·width, 4·width) and a linear map to
  `feature_dim`: the encoder for small images and spectrograms on a CPU."""
  feature_dim: int = 512
  width: int = 32
  dtype: Any = jnp.float32

  stages = 3

  @nn.compact
  def __call__(self, x, train: bool = False, stage: int | None = None, frames: int = 1):
    run = range(self.stages + 1) if stage is None else (stage,)
    for k in run:
      if k == 0:
        x, frames = _fold_frames(x)
        x = x.astype(self.dtype)
      if k < self.stages:
        x = nn.Conv(self.width * 2 ** k, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=conv_init, dtype=self.dtype, name=f"conv{k + 1}")(x)
        x = nn.relu(_batch_norm(train, self.dtype, name=f"bn{k + 1}")(x))
        if k < self.stages - 1:
          x = max_pool(x, (2, 2), (2, 2))
      else:
        pooled = _pool_over_time_and_space(x, frames)
        out = nn.Dense(self.feature_dim, kernel_init=dense_init, dtype=self.dtype,
                       name="proj")(pooled)
        x = nn.relu(out).astype(jnp.float32)
    return x


class MLPEncoder(nn.Module):
  """Linear -> ReLU -> Dropout -> Linear -> ReLU, for pre-extracted features."""
  feature_dim: int = 512
  hidden_dim: int = 256
  dropout: float = 0.1
  dtype: Any = jnp.float32

  stages = 2

  @nn.compact
  def __call__(self, x, train: bool = False, stage: int | None = None, frames: int = 1):
    run = range(self.stages + 1) if stage is None else (stage,)
    for k in run:
      if k == 0:
        x = nn.Dense(self.hidden_dim, kernel_init=dense_init, dtype=self.dtype, name="fc1")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
      elif k == 1:
        x = nn.Dense(self.feature_dim, kernel_init=dense_init, dtype=self.dtype, name="fc2")(x)
        x = nn.relu(x)
      else:
        x = x.astype(jnp.float32)
    return x


STAGED = {"resnet18": ResNet18, "small_cnn": SmallCNN, "mlp": MLPEncoder}


def stage_count(kinds) -> int | None:
  """The number of stages every encoder kind of `kinds` has, or None when one
  does not run in stages or they disagree (mid fusion runs them in lockstep)."""
  counts = {STAGED[k].stages if k in STAGED else None for k in kinds}
  return counts.pop() if len(counts) == 1 else None


class EncoderKind(NamedTuple):
  """One encoder name: how it is built from an `EncoderSpec`, the example
  shapes it takes (ranks without the batch axis; the schema checks them), and
  the path of its first weight in its params: the tensor PyTorch's
  `module.parameters()` yields first for the same network (its first-built
  layer: a ResNet's stem convolution, a ViT's patch embedding). A params tree
  is a dict whose leaves JAX visits in sorted key order, so "first" cannot be
  read off the tree (`stage1_block1` sorts before `stem_conv`)."""
  build: Callable[[Any, int, Any, str], nn.Module]   # (spec, feature_dim, dtype, name)
  input_ranks: tuple[int, ...]
  takes: str                                         # the shape, in words
  first_weight: tuple[str, ...]


def _patch_transformer(spec, feature_dim, dtype, name):
  return PatchTransformer(
      feature_dim=feature_dim, patch_size=spec.patch_size, patch_stride=spec.patch_stride,
      width=spec.transformer_width, depth=spec.transformer_depth,
      heads=spec.transformer_heads, pooling=spec.transformer_pooling, dropout=spec.dropout,
      dtype=dtype, name=name)


_IMAGES = ((3, 4), "(H, W, C) or (T, H, W, C)")
# Every encoder name, listed once: `modalities.<m>.encoder` is one of these.
ENCODERS: dict[str, EncoderKind] = {
    "resnet18": EncoderKind(
        lambda spec, d, dtype, name: ResNet18(feature_dim=d, dtype=dtype, name=name), *_IMAGES,
        ("stem_conv", "kernel")),
    "small_cnn": EncoderKind(
        lambda spec, d, dtype, name: SmallCNN(feature_dim=d, width=spec.cnn_width, dtype=dtype,
                                              name=name), *_IMAGES, ("conv1", "kernel")),
    "mlp": EncoderKind(
        lambda spec, d, dtype, name: MLPEncoder(feature_dim=d, hidden_dim=spec.mlp_hidden_dim,
                                                dropout=spec.dropout, dtype=dtype, name=name),
        (1,), "feature vectors (D,)", ("fc1", "kernel")),
    "vit": EncoderKind(_patch_transformer, *_IMAGES, ("patch_embed", "kernel")),
    "ast": EncoderKind(_patch_transformer, *_IMAGES, ("patch_embed", "kernel")),
    "transformer": EncoderKind(
        lambda spec, d, dtype, name: SequenceTransformer(
            feature_dim=d, width=spec.transformer_width, depth=spec.transformer_depth,
            heads=spec.transformer_heads, pooling=spec.transformer_pooling, dropout=spec.dropout,
            mask_in_last_column=spec.sequence_mask == "last_column", dtype=dtype, name=name),
        (2,), "sequences (L, D)", ("embed", "kernel")),
}


def first_weight(encoder_params, encoder: str):
  """The encoder's first weight (`EncoderKind.first_weight`) in its params."""
  node = encoder_params
  for key in ENCODERS[encoder].first_weight:
    node = node[key]
  return node


def make_encoder(spec, feature_dim: int, dtype: Any, name: str) -> nn.Module:
  """The encoder an `EncoderSpec` names."""
  return ENCODERS[spec.encoder].build(spec, feature_dim, dtype, name)
