"""LFM (Yang et al., NeurIPS 2024, "Facilitating Multimodal Classification via
Dynamically Learning Modality Gap"): the classification loss is mixed with
an alignment of the modalities' predictions, with a mixing weight learned
from a hypergradient once per epoch.

    loss = 2 · (α₀ · CE(fused) + α₁ · mean_{pairs j<k} A(z_j, z_k))
    A(z_j, z_k) = ½ (KL(m ‖ p_j) + KL(m ‖ p_k)),  p = softmax(z), m = ½ (p_j + p_k)

(z_m the unimodal split logits; each KL summed over classes and averaged over
the batch). `A` is what the reference's `Alignment` computes —
`F.kl_div(p.log(), m)` is KL(m ‖ p) — close to, but not, the Jensen–Shannon
divergence its name suggests; reproduced as written.

Before every epoch e (the first included), on the first quarter of the first
validation batch (`batch_size // 4` examples, the model in training mode):

    g   = mean of the first parameter's entries of H(α₀·CE + α₁·A) · ∇CE
    α₁ ← clip(α₁ − η_e · g, 0.05, 0.95),  α₀ = 1 − α₁,  η_e = η · 0.5^⌊e/20⌋

starting from α = (0.95, 0.05). "The first parameter" is the first tensor of
`model.parameters()` in the reference (its first encoder's stem weight: the
7×7 `conv1` of a ResNet-18); here the first weight of the first modality's
encoder, which each encoder kind names (`models.encoders.first_weight`: the
ResNet-18's `stem_conv`, a ViT's patch embedding, an MLP's first layer; the
params tree's sorted order would pick ResNet-18's `stage1_block1`). The
weights live in the optimizer state (so a resumed run continues them); the
BatchNorm statistics of that extra forward pass are not kept (the reference
lets it move its running statistics once per epoch).

Two public codes, `method.lfm.code`:
- "balancebenchmark" (the default): GeWu-Lab/BalanceBenchmark,
  balancemm/trainer/LFM_trainer.py (`Alignment`, `getAlpha_Learnable`,
  `training_step`; lr_alpha = 1e-4), as above: CE on the model's fused
  logits, α from (0.95, 0.05), the hypergradient on a quarter of the first
  validation batch in training mode.
- "neurips" (`method.protocol=reference`): the paper's repository,
  njustkmg/NeurIPS24-LFM `Crema_epoch_learnable.py`. Its model has no fusion
  layer: separate heads `cls_a`, `cls_v` (model/AudioVideo.py:54-55), the
  fused logits are their mean 0.5·o_a + 0.5·o_v for the loss (:115) and the
  prediction (:159), so here `model.fusion=sum` (a Linear head per modality)
  with the CE on (1/N) Σ_m u_m (the prediction reads the fusion's Σ_m u_m,
  whose argmax is the mean's); α starts at `cls_k = [0.05, 0.95]` (:250: CE weight 0.05);
  the hypergradient runs on the first half (:59) of 16 training rows held
  out from training (:217-228), here the first 8 validation rows (this
  library's validation split is itself held out of the training rows); and
  from the second epoch on it runs in inference mode, because `val()`
  (:136) leaves the model in `eval()` when `getAlpha_Learnable` is next
  called (:254). η is halved at every 20th epoch, as in both codes.
N modalities: every pair, as the reference (its repository has two).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from asgml_jax import augment
from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.models.encoders import first_weight
from asgml_jax.methods.base import (Epoch, Method, Optax, Protocols, ReferenceOptimizer,
                                    Requirement, Settings, Step, steplr_milestones)
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK

CODES = ("balancebenchmark", "neurips")
ALPHA_INIT = {"balancebenchmark": (0.95, 0.05), "neurips": (0.05, 0.95)}   # (CE, alignment)
NEURIPS_HYPER_ROWS = 8      # the first half of its 16 held-out rows


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr_alpha=1e-4,         # η, halved every 20 epochs
      code="balancebenchmark",   # balancebenchmark | neurips: which public code (docstring)
  ))


def check_block(config) -> None:
  cc.positive(config, "method.lfm.lr_alpha")
  cc.one_of(config.method.lfm.code, CODES, "method.lfm.code")


def check(config) -> None:
  cc.require(len(cc.modality_names(config)) >= 2, "modalities",
             "lfm aligns the modalities' predictions: it needs at least two")
  if config.method.lfm.code == "neurips":
    cc.require(config.model.fusion == "sum" and config.model.fusion_dim is None,
               "model.fusion", "lfm's NeurIPS code fuses by averaging separate per-modality "
               "heads: use model.fusion=sum with model.fusion_dim=None")


def _neurips(config) -> bool:
  return config.method.lfm.code == "neurips"


def fused_logits(outputs, names, neurips: bool):
  """The logits the CE term reads: the model's fused ones, or (NeurIPS code)
  the mean of the modalities' heads."""
  if neurips:
    return sum(outputs["unimodal_logits"][m] for m in names) / len(names)
  return outputs["logits"]


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0


def alignment(z_p, z_q):
  """The reference's `Alignment`: ½ (KL(m ‖ p) + KL(m ‖ q)), batch mean."""
  log_p, log_q = jax.nn.log_softmax(z_p, -1), jax.nn.log_softmax(z_q, -1)
  m = 0.5 * jnp.exp(log_p) + 0.5 * jnp.exp(log_q)
  log_m = jnp.log(m)
  batch = z_p.shape[0]
  return 0.5 * (jnp.sum(m * (log_m - log_p)) + jnp.sum(m * (log_m - log_q))) / batch


def mean_alignment(unimodal_logits, names):
  pairs = list(itertools.combinations(names, 2))
  return sum(alignment(unimodal_logits[j].astype(jnp.float32),
                       unimodal_logits[k].astype(jnp.float32)) for j, k in pairs) / len(pairs)


def lfm_loss(fused_logits, unimodal_logits, labels, names, alpha):
  align = mean_alignment(unimodal_logits, names)
  return 2.0 * (alpha[0] * cross_entropy(fused_logits, labels) + alpha[1] * align), align


class AlphaState(NamedTuple):
  lfm_alpha: jnp.ndarray      # (α₀, α₁)


def hold_alpha(init=ALPHA_INIT["balancebenchmark"]):
  def init_fn(params):
    return AlphaState(jnp.asarray(init, jnp.float32))

  def update_fn(updates, state, params=None, **extra):
    return updates, state
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [hold_alpha(ALPHA_INIT[ctx.config.method.lfm.code])]


def fused_loss(ctx):
  names, neurips = ctx.names, _neurips(ctx.config)

  def loss(step_ctx, variables, outputs):
    alpha = optax.tree_utils.tree_get(step_ctx.state.opt_state, "lfm_alpha")
    value, align = lfm_loss(fused_logits(outputs, names, neurips), outputs["unimodal_logits"],
                            step_ctx.labels, names, alpha)
    return value, {"metrics": {"lfm/alignment": align, "lfm/alpha_align": alpha[1]}}
  return loss


def make_alpha_gradient(model, names, frame_sizes, first_encoder: str, neurips: bool = False):
  """Jitted (params, batch_stats, batch, alpha, key, train) -> the reference's
  alpha_grad. `first_encoder`: the encoder kind of modality names[0], whose
  first weight (`models.encoders.first_weight`) is the reference's
  `parameters()[0]`; `train` (static): the model in training mode (batch
  statistics, dropout) or inference mode."""
  first = names[0]

  def losses(params, batch_stats, batch, key, train):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    if train:
      out, _ = model.apply(variables, {m: batch[m] for m in names}, train=True,
                           mutable=["batch_stats"], rngs={"dropout": key})
    else:
      out = model.apply(variables, {m: batch[m] for m in names}, train=False)
    return (cross_entropy(fused_logits(out, names, neurips), batch["label"]),
            mean_alignment(out["unimodal_logits"], names))

  def gradient(params, batch_stats, batch, alpha, key, train):
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    cls = lambda p: losses(p, batch_stats, batch, key, train)[0]
    def total(p):
      c, a = losses(p, batch_stats, batch, key, train)
      return alpha[0] * c + alpha[1] * a
    g_cls = jax.grad(cls)(params)
    _, hvp = jax.jvp(jax.grad(total), (params,), (g_cls,))
    return jnp.mean(first_weight(hvp["encoders"][first], first_encoder))

  return jax.jit(gradient, static_argnums=5)


def next_alpha(alpha, grad: float, epoch: int, lr_alpha: float) -> np.ndarray:
  """α₁ ← clip(α₁ − η_e·g, 0.05, 0.95), η_e = η·0.5^⌊e/20⌋; α₀ = 1 − α₁."""
  lr = lr_alpha * 0.5 ** (epoch // 20)
  a1 = float(np.clip(float(alpha[1]) - lr * grad, 0.05, 0.95))
  return np.asarray([1.0 - a1, a1], np.float32)


class LearnedAlpha:
  """The epoch hook: α for the next epoch from the hypergradient on a validation batch."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.neurips = _neurips(ctx.config)
    self.grad_fn = make_alpha_gradient(ctx.model, ctx.names, ctx.frame_sizes,
                                       ctx.config.modalities[ctx.names[0]].encoder,
                                       self.neurips)
    if "validation" not in ctx.data.eval_splits:
      raise cc.ConfigError("method lfm learns its weight on validation data: dataset "
                           f"{ctx.config.dataset.name} has no validation split")
    size = ctx.data.eval_sizes["validation"]
    rows = (min(NEURIPS_HYPER_ROWS, size) if self.neurips
            else max(1, min(ctx.config.batch_size, size) // 4))
    arrays = ctx.data.eval_splits["validation"]
    self.batch = jax.tree.map(lambda x: jnp.asarray(x[:rows]), arrays)

  def _alpha(self, state, epoch: int) -> dict:
    alpha = optax.tree_utils.tree_get(state.opt_state, "lfm_alpha")
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 0x1F3), epoch)
    train = epoch == 0 or not self.neurips    # NeurIPS code: eval() after the first val()
    grad = float(self.grad_fn(state.params, state.batch_stats, self.batch, alpha, key, train))
    return {"lfm_alpha": next_alpha(np.asarray(alpha), grad, epoch,
                                    self.ctx.config.method.lfm.lr_alpha)}

  def prepare(self, state, data_key) -> dict:
    return self._alpha(state, 0)

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    return self._alpha(state, next_epoch)


# njustkmg/NeurIPS24-LFM data/crema.json:16-35 (200 epochs, batch 64, SGD momentum 0.9, lr
# 1e-2, weight decay 1e-4, StepLR `patience` 70), Crema_epoch_learnable.py:242-248
# (StepLR(70, 0.1)), :252-255 (`scheduler.step()` before each epoch's batches: the decays
# come at epochs 69 and 139). `code=balancebenchmark` trains with BalanceBenchmark's.
NEURIPS_OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="njustkmg/NeurIPS24-LFM data/crema.json:16-35, Crema_epoch_learnable.py:242-255",
    kind="sgd", learning_rate=1e-2, weight_decay=1e-4, num_epochs=200, batch_size=64,
    lr_milestones=steplr_milestones(70, 0.1, 200, stepped_before_epoch=True))}


def optimizers(config):
  """The optimizer of the reference code the run follows (`method.lfm.code`)."""
  return NEURIPS_OPTIMIZERS if config.method.lfm.code == "neurips" else BALANCEBENCHMARK


LFM = Method(
    name="lfm", summary="LFM: CE mixed with a prediction alignment, the mix learned per epoch",
    settings=Settings(
        block="lfm", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.unimodal_heads", "split",
                              "lfm aligns the unimodal logits of the fusion layer's split heads"),),
        preset=preset),
    protocols=Protocols(
        optimizers=optimizers,
        reference=(("loss.unimodal_weight", 0.0), ("method.lfm.code", "neurips"),
                   ("model.fusion", "sum"))),
    optax=Optax(stage="post", transform=transform),
    step=Step(fused_loss=fused_loss),
    epoch=Epoch(hook=LearnedAlpha))
