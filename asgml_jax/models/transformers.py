"""Transformer encoders: `vit` (frames), `ast` (spectrograms), `transformer` (sequences).

All three are pre-LayerNorm Transformer encoders (ViT, Dosovitskiy et al.
2021): tokens + learned position embeddings, `depth` blocks of
x + MHA(LN(x)) and x + MLP(LN(x)) (MLP: width -> 4·width -> width, GELU),
a final LayerNorm, then the CLS token's output (`pooling="cls"`) or the mean
of the real tokens (`"mean"`), and a linear map to `feature_dim` when the
width differs from it. Dropout (`modalities.<m>.dropout`) after the
attention and inside the MLP, as in ViT. Init: truncated-normal(0.02) for
the Dense layers, position embeddings and CLS token (ViT/timm), zero biases.

- `vit`: an image (H, W, C) or clip (T, H, W, C) cut into non-overlapping
  patch x patch squares by a strided convolution (the ViT patch embedding);
  a clip's frames are encoded one by one and their features averaged, as the
  convolutional encoders do.
- `ast`: the same network over a spectrogram (time, frequency, 1), with
  patches that may overlap (`patch_stride` < `patch_size`; AST uses 16 and
  10). AST's extra distillation token (from DeiT) and its ImageNet-ViT
  initialisation are not reproduced: it starts from scratch, with one CLS token.
- `transformer`: a sequence of feature vectors (L, D), such as MMSA's
  unaligned text/audio/vision features, projected to the width per step.
  With `sequence_mask="last_column"` the input is (L, D+1) and its last
  column marks real steps (1) against padding (0): padded steps are masked
  out of attention and of the mean; `"none"`: every step is real.

OGM-GE's `leaves="conv"` modulates 4-D gradients only: in `vit` and `ast`
that is the patch embedding alone (the attention and MLP kernels are 2-D and
3-D); `transformer` has none, so `leaves=conv` is refused for it
(`methods/ogm_ge.py`). `all` modulates every leaf; `min_2d` every kernel, the
position and CLS embeddings and the attention's query/key/value biases
(Flax keeps them as heads x head_dim), not the other biases or LayerNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_init = nn.initializers.truncated_normal(0.02)


class EncoderBlock(nn.Module):
  width: int
  heads: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, train: bool):
    y = nn.LayerNorm(dtype=self.dtype, name="ln_attention")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                        kernel_init=_init, deterministic=True,
                                        name="attention")(y, y, mask=attention_mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
    y = nn.gelu(nn.Dense(4 * self.width, kernel_init=_init, dtype=self.dtype, name="mlp_in")(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(self.width, kernel_init=_init, dtype=self.dtype, name="mlp_out")(y)
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class TokenEncoder(nn.Module):
  """Tokens (B, L, width) + a (B, L) real-token mask -> features (B, feature_dim)."""
  feature_dim: int
  width: int
  depth: int
  heads: int
  pooling: str = "cls"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, real, train: bool):
    b, length, _ = tokens.shape
    tokens = tokens + self.param("position", _init, (1, length, self.width)).astype(tokens.dtype)
    if self.pooling == "cls":
      cls = self.param("cls", _init, (1, 1, self.width)).astype(tokens.dtype)
      tokens = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), tokens], axis=1)
      real = jnp.concatenate([jnp.ones((b, 1), real.dtype), real], axis=1)
    mask = nn.make_attention_mask(real > 0, real > 0)
    x = tokens
    for i in range(self.depth):
      x = EncoderBlock(self.width, self.heads, self.dropout, self.dtype, name=f"block{i + 1}")(
          x, mask, train)
    x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x).astype(jnp.float32)
    if self.pooling == "cls":
      pooled = x[:, 0]
    else:
      weights = real.astype(jnp.float32)[..., None]
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    if self.width != self.feature_dim:
      pooled = nn.Dense(self.feature_dim, kernel_init=_init, dtype=self.dtype,
                        name="proj")(pooled.astype(self.dtype))
    return pooled.astype(jnp.float32)


class PatchTransformer(nn.Module):
  """`vit` / `ast`: images, clips or spectrograms cut into patches."""
  feature_dim: int
  patch_size: int = 16
  patch_stride: int = 16
  width: int = 192
  depth: int = 4
  heads: int = 3
  pooling: str = "cls"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    frames = 1
    if x.ndim == 5:
      frames = x.shape[1]
      x = x.reshape((x.shape[0] * frames,) + x.shape[2:])
    p, s = self.patch_size, self.patch_stride
    patches = nn.Conv(self.width, (p, p), (s, s), padding="VALID", kernel_init=_init,
                      dtype=self.dtype, name="patch_embed")(x.astype(self.dtype))
    n, h, w, _ = patches.shape
    tokens = patches.reshape((n, h * w, self.width))
    feats = TokenEncoder(self.feature_dim, self.width, self.depth, self.heads, self.pooling,
                         self.dropout, self.dtype, name="encoder")(
                             tokens, jnp.ones((n, h * w), jnp.float32), train)
    return feats.reshape((n // frames, frames, -1)).mean(axis=1)


class SequenceTransformer(nn.Module):
  """`transformer`: (B, L, D) feature sequences, optionally with a mask column."""
  feature_dim: int
  width: int = 128
  depth: int = 2
  heads: int = 4
  pooling: str = "mean"
  dropout: float = 0.0
  mask_in_last_column: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.mask_in_last_column:
      x, real = x[..., :-1], x[..., -1]
    else:
      real = jnp.ones(x.shape[:2], jnp.float32)
    tokens = nn.Dense(self.width, kernel_init=_init, dtype=self.dtype,
                      name="embed")(x.astype(self.dtype))
    return TokenEncoder(self.feature_dim, self.width, self.depth, self.heads, self.pooling,
                        self.dropout, self.dtype, name="encoder")(tokens, real, train)
