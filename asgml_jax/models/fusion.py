"""Late-fusion modules: concat, sum, FiLM, gated (the four of the OGM-GE
reference), generalised to N modalities.

Each module takes the per-modality features (a tuple in the fixed modality
order) and returns `(out_BxK, split_logits)`: `out` has K = `out_dim` columns
(class logits when the model has no `fusion_dim`), and `split_logits` is the
per-modality decomposition of `out` where the fusion is linear in each
modality (concat, sum), else None.

- concat: out = [f_1 … f_N] W + b, split_m = f_m W_m + b/N (OGM-GE), so
  Σ_m split_m = out exactly.
- sum: out = Σ_m (f_m W_m + b_m), split_m = f_m W_m + b_m (the reference keeps
  the full bias of each modality's layer).
- film: the condition modality c produces (γ_m, β_m) for every other modality m;
  out = fc_out([γ_m ⊙ f_m + β_m]_m). For N = 2 this is the reference FiLM with
  x_film=True (audio conditions visual).
- gated: gate = σ(fc_c(f_c)); out = fc_out([gate ⊙ fc_m(f_m)]_m). For N = 2
  this is the reference GatedFusion with x_gate=True.
- shared: one linear head for every modality (MLA's shared head, all features
  of one width): split_m = f_m W + b, out = mean_m split_m (MLA predicts with
  an entropy-weighted sum instead: its method module's evaluation hook).
- shared_boost: the shared head and a learned scale (ReconBoost's boost rate,
  initialised at 0.01): out = rate · Σ_m split_m.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from asgml_jax.models.encoders import dense_init


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=dense_init, dtype=dtype, name=name)


class ConcatFusion(nn.Module):
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray]):
    dims = [f.shape[-1] for f in feats]
    kernel = self.param("kernel", dense_init, (sum(dims), self.out_dim), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.out_dim,), jnp.float32)
    kernel, bias_c = kernel.astype(self.dtype), bias.astype(self.dtype)
    out = jnp.concatenate(feats, axis=-1).astype(self.dtype) @ kernel + bias_c
    split, offset = [], 0
    for f, d in zip(feats, dims):
      split.append(f.astype(self.dtype) @ kernel[offset:offset + d] + bias_c / len(feats))
      offset += d
    return out, tuple(split)


class SumFusion(nn.Module):
  out_dim: int
  names: Sequence[str]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray]):
    split = tuple(_dense(self.out_dim, self.dtype, f"fc_{n}")(f) for n, f in zip(self.names, feats))
    return sum(split[1:], split[0]), split


class FiLMFusion(nn.Module):
  out_dim: int
  names: Sequence[str]
  condition: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray]):
    by_name = dict(zip(self.names, feats))
    cond = by_name[self.condition]
    filmed = []
    for name in self.names:
      if name == self.condition:
        continue
      f = by_name[name]
      gamma_beta = _dense(2 * f.shape[-1], self.dtype, f"film_{name}")(cond)
      gamma, beta = jnp.split(gamma_beta, 2, axis=-1)
      filmed.append(gamma * f + beta)
    out = _dense(self.out_dim, self.dtype, "fc_out")(jnp.concatenate(filmed, axis=-1))
    return out, None


class GatedFusion(nn.Module):
  out_dim: int
  names: Sequence[str]
  condition: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray]):
    by_name = dict(zip(self.names, feats))
    width = by_name[self.condition].shape[-1]
    gate = nn.sigmoid(_dense(width, self.dtype, f"fc_{self.condition}")(by_name[self.condition]))
    gated = [gate * _dense(width, self.dtype, f"fc_{name}")(by_name[name])
             for name in self.names if name != self.condition]
    out = _dense(self.out_dim, self.dtype, "fc_out")(jnp.concatenate(gated, axis=-1))
    return out, None


class SharedFusion(nn.Module):
  out_dim: int
  dtype: Any = jnp.float32
  boost_rate_init: float | None = None   # shared_boost: out = rate · Σ_m split_m

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray]):
    widths = {f.shape[-1] for f in feats}
    if len(widths) != 1:
      raise ValueError(f"shared fusion needs features of one width, got {sorted(widths)}")
    kernel = self.param("kernel", dense_init, (widths.pop(), self.out_dim), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.out_dim,), jnp.float32)
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    split = tuple(f.astype(self.dtype) @ kernel + bias for f in feats)
    total = sum(split[1:], split[0])
    if self.boost_rate_init is None:
      return total / len(split), split
    rate = self.param("boost_rate", nn.initializers.constant(self.boost_rate_init), (),
                      jnp.float32)
    return rate.astype(self.dtype) * total, split


# Every fusion name, listed once: `model.fusion` is one of these;
# (out_dim, names, condition modality, dtype) -> the fusion layer.
FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "concat": lambda out, names, cond, dtype: ConcatFusion(out, dtype, name="fusion"),
    "sum": lambda out, names, cond, dtype: SumFusion(out, tuple(names), dtype, name="fusion"),
    "film": lambda out, names, cond, dtype: FiLMFusion(out, tuple(names), cond, dtype,
                                                       name="fusion"),
    "gated": lambda out, names, cond, dtype: GatedFusion(out, tuple(names), cond, dtype,
                                                         name="fusion"),
    "shared": lambda out, names, cond, dtype: SharedFusion(out, dtype, name="fusion"),
    "shared_boost": lambda out, names, cond, dtype: SharedFusion(out, dtype, 0.01,
                                                                 name="fusion"),
}


def make_fusion(kind: str, out_dim: int, names: Sequence[str], condition: str | None,
                dtype: Any) -> nn.Module:
  return FUSIONS[kind](out_dim, names, condition or names[0], dtype)
