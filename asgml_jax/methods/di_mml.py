"""DI-MML, detached and interactive multimodal learning (ACM MM 2024,
fanyunfeng-bit/DI-MML): each modality is trained as its own unimodal model
(no fused loss reaches the encoders), a classifier shared by the modalities
aligns their feature spaces, a contrastive term transfers each modality's
"own" feature dimensions to the other, and a fusion layer is trained last
on the frozen encoders.

The reference's two scripts, one run here (epochs counted over the whole run):

Stage 1 (`main_CFT.py` `train_epoch`), epochs [0, S):

    loss = Σ_m CE(u_m) + w · Σ_m CE(g(f_m)) + [epoch ≥ E] · L_con

u_m = head_m(f_m): each modality's own classifier (`model.unimodal_heads=separate`,
the reference's AClassifier/VClassifier `fc`); g: one Linear(D → C) shared by
the modalities (this method's layer, params["method_layers"]["di_mml"]),
w = `align_weight`. At the start of epoch E (`get_indices`) every training
example's features are computed in inference mode, and for each modality the
dimensions d where "the nearest class centroid along d is the true class" more
often than on average over all dimensions are its top dimensions T_m. With
O_m,n = T_m \\ T_n (the reference's `audio_only_indices` for m = audio):

    L_con = Σ_{m ≠ n} mean_i −log softmax_k( f_n,i[O_m,n] · sg(f_m,k[O_m,n]) / τ )_i

(`SupConLoss`: modality n's features on m's own dimensions are pulled toward
modality m's, the same example being the positive; τ = 50 in the reference's
runs). For two modalities this is the reference's v_loss + a_loss; N ≥ 3
sums the ordered pairs.

Stage 2 (`main_CFT_stage2.py`), epochs [S, num_epochs): the encoders (inference
mode) and every other layer are frozen, the concat fusion layer is trained on
CE(fusion(f_1, …, f_N)) alone (its updates are zero in stage 1, the others'
in stage 2: each stage's optimizer skips the other stage's parameters).

Prediction (`valid_combine_classifier`): with c_k = max softmax of the logits
of u_1 … u_N and the fusion, per example, w = softmax_k(c_k / τ₂) (τ₂ = 1) and
logits = Σ_k w_k · logits_k (also before stage 2, when the fusion layer is
still at its init).

Schedule: the reference trains 150 + 20 epochs and starts L_con at epoch 20;
here `fusion_epochs=-1` gives round(num_epochs · 20/170) fusion epochs and
`contrast_epoch=-1` round(S · 20/150). Each stage's optimizer steps only its
own parameters: stage 1 everything but the fusion layer, stage 2 the fusion
layer alone, which therefore starts stage 2 as from the fresh SGD the
reference's `main_CFT_stage2.py` builds (:284-285: over the fusion module,
momentum 0.9, weight decay 1e-4), with no momentum carried from stage 1. The
run keeps one learning-rate schedule (the reference restarts lr 1e-3 for
stage 2). BatchNorm running statistics
still follow the train-mode forward of the step in stage 2 (the reference's
encoders are in eval mode there); the features the fusion layer learns from are
inference-mode ones.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import (Epoch, Evaluation, Logging, Method, Optax, Plot, Protocols,
                                    ReferenceOptimizer, Requirement, Settings, Step,
                                    steplr_milestones)
from asgml_jax.models.encoders import dense_init


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      align_weight=1.0,         # w of the shared-classifier CE (`--weight`)
      temperature=50.0,         # τ of the contrastive term (run.sh: 50)
      fusion_temperature=1.0,   # τ₂ of the prediction's confidence weights (stage 2's 1)
      fusion_epochs=-1,         # stage 2 length; -1: round(num_epochs · 20/170)
      contrast_epoch=-1,        # first epoch with L_con; -1: round(stage-1 epochs · 20/150)
  ))


def check_block(config) -> None:
  d = config.method.di_mml
  cc.at_least(config, "method.di_mml.align_weight", 0)
  cc.positive(config, "method.di_mml.temperature")
  cc.positive(config, "method.di_mml.fusion_temperature")
  cc.require(d.fusion_epochs == -1 or 0 <= d.fusion_epochs <= config.num_epochs,
             "method.di_mml.fusion_epochs",
             f"must be -1 or in [0, num_epochs={config.num_epochs}], got {d.fusion_epochs}")
  cc.require(d.contrast_epoch >= -1, "method.di_mml.contrast_epoch",
             f"must be -1 or an epoch, got {d.contrast_epoch}")


def check(config) -> None:
  cc.require(config.model.fusion_dim is None, "model.fusion_dim",
             "di_mml's stage 2 trains the concat layer straight to the classes: use None")
  restarts_at_150 = config.method.di_mml.fusion_epochs in (-1, 20)
  cc.require(not config.method.reference_optimizer or restarts_at_150,
             "method.di_mml.fusion_epochs",
             "the reference optimizer restarts the learning rate where stage 2 starts, epoch 150 "
             "of 170 (main_CFT_stage2.py's fresh SGD): leave it at -1 or 20")


def preset(config) -> None:
  config.model.unimodal_heads = "separate"   # each unimodal model's own classifier
  config.loss.unimodal_weight = 0.0          # the fused-loss hook holds the whole loss


def schedule(config) -> tuple[int, int]:
  """(S, E): the first fusion-stage epoch and the first epoch with L_con."""
  d = config.method.di_mml
  fusion = round(config.num_epochs * 20 / 170) if d.fusion_epochs == -1 else d.fusion_epochs
  first_fusion = config.num_epochs - fusion
  contrast = round(first_fusion * 20 / 150) if d.contrast_epoch == -1 else d.contrast_epoch
  return first_fusion, contrast


class SharedClassifier(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, features):
    """{m: g(f_m)} (a dict of features) or g(x) (one array)."""
    dense = nn.Dense(self.num_classes, kernel_init=dense_init, name="shared")
    if isinstance(features, dict):
      return {m: dense(f.astype(jnp.float32)) for m, f in features.items()}
    return dense(features.astype(jnp.float32))


def layers(ctx):
  return SharedClassifier(ctx.num_classes)


def top_dimensions(features: np.ndarray, labels: np.ndarray, num_classes: int,
                   chunk: int = 1024) -> np.ndarray:
  """(D,) bool: dimensions where the nearest class centroid is the true class
  more often than on average over all dimensions (`get_indices`)."""
  features = np.asarray(features, np.float64)
  centroids = np.stack([features[labels == c].mean(0) for c in range(num_classes)])
  hits = np.zeros(features.shape[1])
  for start in range(0, len(features), chunk):
    f = features[start:start + chunk]
    nearest = np.argmin(np.abs(f[:, None, :] - centroids[None]), axis=1)    # (n, D)
    hits += np.sum(nearest == labels[start:start + chunk, None], axis=0)
  rate = hits / len(features)
  return rate > rate.mean()


def own_dimensions(top: dict, m: str, n: str):
  """O_m,n = T_m \\ T_n as a float mask."""
  return top[m] * (1.0 - top[n])


def exclusive_count(top: dict, m: str):
  """|T_m \\ ∪_{n ≠ m} T_n| (logged)."""
  mask = top[m]
  for n in top:
    if n != m:
      mask = mask * (1.0 - top[n])
  return mask.sum()


def contrastive_terms(features: dict, top: dict, temperature: float) -> dict:
  """{n: Σ_{m ≠ n} SupConLoss's term for modality n pulled toward m}."""
  terms = {}
  for n in features:
    terms[n] = jnp.zeros((), jnp.float32)
    for m in features:
      if m == n:
        continue
      mask = own_dimensions(top, m, n)
      x = features[n].astype(jnp.float32) * mask
      y = jax.lax.stop_gradient(features[m].astype(jnp.float32)) * mask
      logits = x @ y.T / temperature
      terms[n] = terms[n] + jnp.mean(-jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  return terms


def contrastive_loss(features: dict, top: dict, temperature: float):
  """L_con: the sum over ordered pairs (m, n), m ≠ n."""
  return sum(contrastive_terms(features, top, temperature).values())


class DIMMLState(NamedTuple):
  di_mml_top: dict          # {m: (D,) float 0/1}, T_m (all 0 before epoch E)


def hold_own_dimensions(names):
  """Holds T_m in the optimizer state (written by the epoch hook; the updates
  pass unchanged: which parameters a stage steps is the loss hook's
  `encoder_mask` / `shared_keep`)."""
  def init_fn(params):
    width = params["fusion"]["kernel"].shape[0] // len(names)   # D, every modality's
    dims = {m: jnp.zeros((width,), jnp.float32) for m in names}
    return DIMMLState(dims)

  def update_fn(updates, state, params=None, **extra):
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [hold_own_dimensions(ctx.names)]


def fused_loss(ctx):
  d = ctx.config.method.di_mml
  first_fusion, contrast_epoch = schedule(ctx.config)
  shared = layers(ctx)
  names, spe = ctx.names, ctx.steps_per_epoch

  def loss(step_ctx, variables, outputs):
    epoch = step_ctx.state.step // spe
    labels = step_ctx.labels
    params = variables["params"]
    top = optax.tree_utils.tree_get(step_ctx.state.opt_state, "di_mml_top")

    def detached(_):
      feats = outputs["features"]
      uni = sum(cross_entropy(outputs["unimodal_logits"][m], labels) for m in names)
      aligned = shared.apply({"params": params["method_layers"]["di_mml"]}, feats)
      align = {m: cross_entropy(aligned[m], labels) for m in names}
      con = {m: jnp.where(epoch >= contrast_epoch, v, 0.0)
             for m, v in contrastive_terms(feats, top, d.temperature).items()}
      return uni + d.align_weight * sum(align.values()) + sum(con.values()), (align, con)

    def fusion(_):
      frozen = jax.lax.stop_gradient(variables)
      feats = step_ctx.model.apply(frozen, {m: step_ctx.batch[m] for m in names},
                                   train=False)["features"]
      x = jnp.concatenate([feats[m] for m in names], axis=1)
      logits = x @ params["fusion"]["kernel"] + params["fusion"]["bias"]
      zeros = {m: jnp.zeros((), jnp.float32) for m in names}
      return cross_entropy(logits, labels), (zeros, dict(zeros))

    fusion_stage = epoch >= first_fusion
    total, (align, con) = jax.lax.cond(fusion_stage, fusion, detached, None)
    # Each stage's optimizer holds only its own parameters (the reference builds
    # a fresh SGD over the fusion module for stage 2): the other stage's are
    # skipped by the optimizer, no weight decay and no momentum, so the fusion
    # layer starts stage 2 with an empty momentum buffer.
    stepped = {"encoder_mask": {m: ~fusion_stage for m in names},
               "shared_keep": {k: jax.tree.map(lambda _, on=(fusion_stage if k == "fusion"
                                                             else ~fusion_stage): on, v)
                               for k, v in params.items() if k != "encoders"}}
    metrics = {**{f"di_mml/align_{m}": v for m, v in align.items()},
               **{f"di_mml/contrast_{m}": v for m, v in con.items()},
               **{f"di_mml/own_dims_{m}": exclusive_count(top, m) for m in names},
               "di_mml/fusion_stage": fusion_stage.astype(jnp.float32)}
    return total, {"metrics": metrics, "tx_args": stepped}
  return loss


def prediction(unimodal_logits: dict, fused_logits, temperature: float):
  """Σ_k w_k logits_k, w = softmax_k(max softmax(logits_k) / τ₂) per example."""
  heads = [unimodal_logits[m] for m in sorted(unimodal_logits)] + [fused_logits]
  confidence = jnp.stack([jnp.max(jax.nn.softmax(h, -1), -1) for h in heads])   # (K, B)
  w = jax.nn.softmax(confidence / temperature, axis=0)
  return sum(w[k][:, None] * h for k, h in enumerate(heads))


def eval_logits(ctx):
  temperature = ctx.config.method.di_mml.fusion_temperature

  def replace(state, batch, outputs):
    return {**outputs, "logits": prediction(outputs["unimodal_logits"], outputs["logits"],
                                            temperature)}
  return replace


class OwnDimensions:
  """The epoch hook: T_m from the training set's features at the start of epoch E."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.contrast_epoch = schedule(ctx.config)[1]

  def _top(self, state) -> dict:
    ctx = self.ctx
    data, names = ctx.data, ctx.names
    feats, labels = ctx.split_features(state.variables(), data.train, data.num_train)
    top = {m: top_dimensions(feats[m], labels, ctx.num_classes) for m in names}
    top = {m: top[m].astype(np.float32) for m in names}
    ctx.log("di_mml: own feature dimensions "
            + ", ".join(f"{m} {int(exclusive_count(top, m))} of {int(top[m].sum())} top"
                        for m in names))
    return {"di_mml_top": top}

  def prepare(self, state, data_key) -> dict:
    return self._top(state) if self.contrast_epoch == 0 else {}

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    return self._top(state) if next_epoch == self.contrast_epoch else {}


# fanyunfeng-bit/DI-MML README.md:23-28 (CREMAD, AVE): stage 1 main_CFT.py:26-34 (batch
# 16, 150 epochs, lr 1e-3, StepLR(70, 0.1)), :250-251, :103 (stepped after each epoch);
# stage 2 main_CFT_stage2.py:27-35 (batch 16, 20 epochs, lr 1e-3, StepLR(70, 0.1)) with a
# fresh SGD and scheduler (:284-286): one run of 150 + 20 epochs whose lr is back at 1e-3
# when stage 2 starts (1e-3 · 0.1 · 0.1 · 100).
_DI_MML_OPTIMIZER = ReferenceOptimizer(
    source="fanyunfeng-bit/DI-MML README.md:23-28, main_CFT.py:26-34,103,250-251, "
           "main_CFT_stage2.py:27-35,120,284-286",
    kind="sgd", learning_rate=1e-3, weight_decay=1e-4, num_epochs=170, batch_size=16,
    lr_milestones=steplr_milestones(70, 0.1, 150) + ((150, 100.0),))
OPTIMIZERS = {"cremad": _DI_MML_OPTIMIZER, "ave": _DI_MML_OPTIMIZER}


DI_MML = Method(
    name="di_mml",
    summary="DI-MML: unimodal models trained apart (own heads, a shared aligning classifier, "
            "contrast on each modality's own feature dimensions), then a fusion layer on the "
            "frozen encoders",
    settings=Settings(
        block="di_mml", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.unimodal_heads", "separate",
                              "di_mml's unimodal models each have their own Linear(D -> C) head"),
                  Requirement("model.fusion", "concat",
                              "di_mml's stage 2 trains the concat fusion layer")), preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 0.0),)),
    optax=Optax(stage="post", transform=transform),
    step=Step(fused_loss=fused_loss, layers=layers),
    evaluation=Evaluation(eval_logits=eval_logits),
    epoch=Epoch(hook=OwnDimensions),
    logging=Logging(plots=(Plot("di_mml/own_dims", "DI-MML: own feature dimensions"),
                           Plot("di_mml/contrast", "DI-MML: contrastive loss"),
                           Plot("di_mml/align", "DI-MML: shared-classifier CE"))))
