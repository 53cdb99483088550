"""Mid-fusion between the encoders: MMTM blocks (Joze et al., CVPR 2020) at
stage boundaries, as the greedy-learner method (Wu et al., ICML 2022) uses.

With `model.mid_fusion="mmtm"` the encoders run stage by stage
(`encoders.py`), every modality's stage k before any stage k+1, and after
each chosen stage an MMTM block rescales every modality's channels from all
modalities' pooled maps:

    s_m = mean of modality m's maps over time and space          (B, C_m)
    z = ReLU(W_sq [s_1 … s_N] + b_sq)         W_sq: Σ C_m -> 2·Σ C_m / ratio
    e_m = sigmoid(W_m z + b_m)                                   (B, C_m)
    maps_m <- maps_m · e_m          (broadcast over frames, height, width)

Parameters: params["mid_fusion"]["mmtm<k>"] = {"squeeze", "excite_<m>"}, k
the 1-based stage the block follows. Positions (`model.mmtm_after`): "all"
stages (BalanceBenchmark's BaseClassifierGreedyModel: after layer1..layer4
of its ResNet-18s) or "all_but_first" (the greedy paper's code,
nyukat/greedy_multimodal_learning src/model.py: after layer2..layer4).

A method may replace the excitations a block applies: `control(block name,
{m: e_m (B, C_m)}) -> ({m: scale broadcastable to (B, C_m)}, info)`, and
`info` is returned as outputs["mid_fusion"][block name] (Greedy's
curation steps apply a running average of e_m instead of e_m). Without a
control (evaluation) every block applies its own e_m.
"""

from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from asgml_jax.models.encoders import dense_init

POSITIONS = ("all", "all_but_first")


def block_stages(num_stages: int, after: str) -> tuple[int, ...]:
  """The 1-based stages an MMTM block follows."""
  first = 1 if after == "all" else 2
  return tuple(range(first, num_stages + 1))


def _per_example(maps, batch: int):
  """(B·T, ..., C) maps -> (B, T·..., C), T the frames folded into the batch."""
  return maps.reshape((batch, -1, maps.shape[-1]))


class MMTM(nn.Module):
  """One MMTM block over every modality's maps (channels last); the squeeze and
  excitation compute in float32 (small), the rescaled maps keep their dtype."""
  names: tuple[str, ...]
  ratio: int = 4

  @nn.compact
  def __call__(self, maps: Mapping[str, jnp.ndarray], batch: int,
               control: Callable | None = None, block: str = ""):
    squeezed = [jnp.mean(_per_example(maps[m], batch).astype(jnp.float32), axis=1)
                for m in self.names]
    total = sum(s.shape[-1] for s in squeezed)
    z = nn.relu(nn.Dense(int(2 * total / self.ratio), kernel_init=dense_init,
                         name="squeeze")(jnp.concatenate(squeezed, -1)))
    excitation = {m: nn.sigmoid(nn.Dense(s.shape[-1], kernel_init=dense_init,
                                         name=f"excite_{m}")(z))
                  for m, s in zip(self.names, squeezed)}
    info = None
    scales = excitation
    if control is not None:
      scales, info = control(block, excitation)
    out = {}
    for m in self.names:
      x = _per_example(maps[m], batch)
      scale = jnp.broadcast_to(scales[m], (batch, x.shape[-1]))[:, None, :]
      out[m] = (x * scale.astype(x.dtype)).reshape(maps[m].shape)
    return out, info


class MidFusion(nn.Module):
  """The model's MMTM blocks (params["mid_fusion"]["mmtm<k>"]); called once per
  block, after every modality's stage k, by `multimodal.MultimodalClassifier`."""
  names: tuple[str, ...]
  ratio: int = 4

  @nn.compact
  def __call__(self, maps, batch: int, stage: int, control=None):
    name = f"mmtm{stage}"
    return MMTM(self.names, self.ratio, name=name)(maps, batch, control, name)
