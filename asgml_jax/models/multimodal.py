"""The N-modality late-fusion classifier.

Parameter tree (the contract every per-modality intervention relies on):

    {"encoders": {<modality>: ...}, "fusion": ..., "heads": ..., "logit_mixer": ...,
     "mid_fusion": ..., "method_layers": {<method>: ...}}

`heads` holds the classifier after a `fusion_dim` layer and the per-modality
unimodal heads, and exists only when the model needs one of them: for concat
or sum fusion straight to classes, the unimodal logits are read off the fusion
layer itself (split weight, docs/methods.md, model and loss), so there is nothing to put in `heads`
(unless `unimodal_heads="separate"`, the seeds' code). `logit_mixer` (only
with `logit_mixer=True`, AMCo) is a Linear(C -> C) on the fused logits.
`mid_fusion` (only with `mid_fusion="mmtm"`, Greedy) holds the MMTM blocks
between the encoders' stages (`mid_fusion.py`). `method_layers` holds the
layers a method brings (`Step.layers`, e.g. IPRM's mixup heads): the model
only creates them (one call on the features at init); the method's hooks use them.

Outputs a dict: `logits` (B, C) fused, `unimodal_logits` {m: (B, C)} and
`features` {m: (B, D)}, all float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from asgml_jax.config_checks import modality_names
from asgml_jax.models.encoders import dense_init, make_encoder, stage_count
from asgml_jax.models.fusion import make_fusion
from asgml_jax.models.mid_fusion import MidFusion, block_stages


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """What a modality's encoder is (hashable, so the model stays a static value)."""
  name: str
  encoder: str
  cnn_width: int = 32
  mlp_hidden_dim: int = 256
  dropout: float = 0.1
  patch_size: int = 16
  patch_stride: int = 16
  transformer_width: int = 192
  transformer_depth: int = 4
  transformer_heads: int = 3
  transformer_pooling: str = "cls"
  sequence_mask: str = "last_column"


class Encoders(nn.Module):
  specs: tuple[EncoderSpec, ...]
  feature_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, jnp.ndarray], train: bool, stage: int | None = None,
               frames: Mapping[str, int] | None = None):
    """Every encoder on its input, or (mid fusion) only their stage `stage`."""
    if stage is None:
      return {s.name: make_encoder(s, self.feature_dim, self.dtype, s.name)(inputs[s.name], train)
              for s in self.specs}
    return {s.name: make_encoder(s, self.feature_dim, self.dtype, s.name)(
        inputs[s.name], train, stage=stage, frames=frames[s.name]) for s in self.specs}


class Heads(nn.Module):
  """Classifier after the fusion layer (optional) and per-modality heads (optional)."""
  num_classes: int
  with_classifier: bool
  unimodal_names: tuple[str, ...]
  stop_gradient: bool
  dtype: Any = jnp.float32
  hidden_activation: str = "relu"   # between the fusion_dim layer and the classifier

  @nn.compact
  def __call__(self, fused_hidden, feats: Mapping[str, jnp.ndarray]):
    logits = None
    if self.with_classifier:
      logits = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                        name="classifier")(nn.relu(fused_hidden)
                                           if self.hidden_activation == "relu" else fused_hidden)
    unimodal = {}
    for name in self.unimodal_names:
      f = jax.lax.stop_gradient(feats[name]) if self.stop_gradient else feats[name]
      unimodal[name] = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                                name=f"unimodal_{name}")(f)
    return logits, unimodal


class MultimodalClassifier(nn.Module):
  specs: tuple[EncoderSpec, ...]
  num_classes: int
  feature_dim: int = 512
  fusion: str = "concat"
  fusion_dim: int | None = None
  # after the fusion_dim layer: "relu" (design) | "none" (the seeds' CREMA-D model)
  fusion_activation: str = "relu"
  condition_modality: str | None = None
  unimodal_head_stop_gradient: bool = False
  # "split": unimodal logits from the fusion layer where it is linear per
  # modality (OGM-GE); "separate": always Linear(D -> C) heads (seeds' code).
  unimodal_heads: str = "split"
  logit_mixer: bool = False
  # "none" | "mmtm": MMTM blocks between the encoders' stages (mid_fusion.py)
  mid_fusion: str = "none"
  mmtm_after: str = "all"
  mmtm_ratio: int = 4
  # ((method name, Flax module), ...): created under params["method_layers"]
  method_layers: tuple = ()
  dtype: Any = jnp.float32

  @property
  def modality_names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.specs)

  @nn.compact
  def __call__(self, inputs: Mapping[str, jnp.ndarray], train: bool = False, feature_gate=None,
               mid_fusion_control=None):
    """mid_fusion_control: a method's hook on the MMTM blocks' excitations
    (`mid_fusion.py`); what it returns is outputs["mid_fusion"].

    feature_gate: optional `(features, unimodal_logits) -> (gated features, info)`
    applied between the encoders and the fusion (OPM's feature dropping). The
    fused logits then come from the gated features, a second pass through the
    same fusion parameters; unimodal logits and features stay ungated, and
    `info` is returned as outputs["gate"]."""
    names = self.modality_names
    encoders = Encoders(self.specs, self.feature_dim, self.dtype, name="encoders")
    mid_info = None
    if self.mid_fusion == "none":
      feats = encoders(inputs, train)
    else:
      feats, mid_info = self._staged(encoders, inputs, train, mid_fusion_control)
    out_dim = self.fusion_dim or self.num_classes
    fusion = make_fusion(self.fusion, out_dim, names, self.condition_modality, self.dtype)
    out, split = fusion(tuple(feats[n] for n in names))
    if self.unimodal_heads == "separate":
      split = None
    needs_heads = self.fusion_dim is not None or split is None
    heads = (Heads(self.num_classes, self.fusion_dim is not None, names,
                   self.unimodal_head_stop_gradient, self.dtype, self.fusion_activation,
                   name="heads")
             if needs_heads else None)
    if needs_heads:
      logits, unimodal = heads(out, feats)
      logits = out if logits is None else logits
    else:
      logits, unimodal = out, dict(zip(names, split))
    as_f32 = lambda x: x.astype(jnp.float32)
    outputs = {"unimodal_logits": {n: as_f32(unimodal[n]) for n in names},
               "features": {n: as_f32(feats[n]) for n in names}}
    if feature_gate is not None:
      gated, outputs["gate"] = feature_gate(feats, outputs["unimodal_logits"])
      out, _ = fusion(tuple(gated[n] for n in names))
      logits = out
      if self.fusion_dim is not None:
        logits, _ = heads(out, feats)
    if self.logit_mixer:
      logits = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                        name="logit_mixer")(logits)
    outputs["logits"] = as_f32(logits)
    if mid_info:
      outputs["mid_fusion"] = mid_info
    if self.method_layers and self.is_initializing():
      MethodLayers(self.method_layers, name="method_layers")(outputs["features"])
    return outputs

  def _staged(self, encoders, inputs, train, control):
    """The encoders stage by stage in lockstep, an MMTM block after the chosen stages."""
    names = self.modality_names
    num_stages = stage_count([s.encoder for s in self.specs])   # validated: not None
    blocks = block_stages(num_stages, self.mmtm_after)
    mid = MidFusion(names, self.mmtm_ratio, name="mid_fusion")
    batch = inputs[names[0]].shape[0]
    frames = {m: (inputs[m].shape[1] if inputs[m].ndim == 5 else 1) for m in names}
    maps, infos = dict(inputs), {}
    for k in range(num_stages):
      maps = encoders(maps, train, stage=k, frames=frames)
      if k + 1 in blocks:
        maps, info = mid(maps, batch, k + 1, control)
        if info is not None:
          infos[f"mmtm{k + 1}"] = info
    return encoders(maps, train, stage=num_stages, frames=frames), infos


class MethodLayers(nn.Module):
  """The methods' own layers, each under its method's name (created at init only)."""
  layers: tuple

  @nn.compact
  def __call__(self, features: Mapping[str, jnp.ndarray]):
    for name, layer in self.layers:
      layer.clone(parent=self, name=name)(features)


def encoder_spec(name: str, mod) -> EncoderSpec:
  """The `EncoderSpec` of one modality's (validated) config block."""
  return EncoderSpec(
      name=name, encoder=mod.encoder, cnn_width=mod.cnn_width,
      mlp_hidden_dim=mod.mlp_hidden_dim, dropout=mod.dropout, patch_size=mod.patch_size,
      patch_stride=mod.patch_stride or mod.patch_size, transformer_width=mod.transformer_width,
      transformer_depth=mod.transformer_depth, transformer_heads=mod.transformer_heads,
      transformer_pooling=mod.transformer_pooling, sequence_mask=mod.sequence_mask)


def resolve_compute_dtype(name: str) -> str:
  """"auto" -> "bfloat16" on accelerators (the seeds' AMP), "float32" on the CPU."""
  if name != "auto":
    return name
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def model_from_config(config, num_classes: int, method_layers: tuple = ()) -> MultimodalClassifier:
  """Builds the classifier a (validated) config describes; method_layers:
  ((method name, Flax module), ...) created under params["method_layers"]
  (the plan passes its stack's `Step.layers`)."""
  specs = tuple(encoder_spec(n, config.modalities[n]) for n in modality_names(config))
  return MultimodalClassifier(
      specs=specs, num_classes=num_classes, feature_dim=config.model.feature_dim,
      fusion=config.model.fusion, fusion_dim=config.model.fusion_dim,
      fusion_activation=config.model.fusion_activation,
      condition_modality=config.model.condition_modality,
      unimodal_head_stop_gradient=config.model.unimodal_head_stop_gradient,
      unimodal_heads=config.model.unimodal_heads, logit_mixer=config.model.logit_mixer,
      mid_fusion=config.model.mid_fusion, mmtm_after=config.model.mmtm_after,
      mmtm_ratio=config.model.mmtm_ratio, method_layers=tuple(method_layers),
      dtype=jnp.dtype(resolve_compute_dtype(config.model.compute_dtype)))
