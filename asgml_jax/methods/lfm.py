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
`model.parameters()` in the reference (its first encoder's stem weight); here
the first kernel (rank >= 2) of the first modality's encoder in the parameter
tree's order (`first_kernel`: the stem of the project's CNNs and MLPs). The
weights live in the optimizer state (so a resumed run continues them); the
BatchNorm statistics of that extra forward pass are not kept (the reference
lets it move its running statistics once per epoch).

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/LFM_trainer.py
(`Alignment`, `getAlpha_Learnable`, `training_step`; lr_alpha = 1e-4). The
NeurIPS repository (njustkmg/NeurIPS24-LFM) is not available here; this
follows BalanceBenchmark's port. N modalities: every pair, as the reference.
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
from asgml_jax.methods.base import Epoch, Method, Optax, Protocols, Requirement, Settings, Step

ALPHA_INIT = (0.95, 0.05)


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr_alpha=1e-4,         # η, halved every 20 epochs
  ))


def check_block(config) -> None:
  cc.positive(config, "method.lfm.lr_alpha")


def check(config) -> None:
  cc.require(len(cc.modality_names(config)) >= 2, "modalities",
             "lfm aligns the modalities' predictions: it needs at least two")


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


def hold_alpha():
  def init_fn(params):
    return AlphaState(jnp.asarray(ALPHA_INIT, jnp.float32))

  def update_fn(updates, state, params=None, **extra):
    return updates, state
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [hold_alpha()]


def fused_loss(ctx):
  names = ctx.names

  def loss(step_ctx, variables, outputs):
    alpha = optax.tree_utils.tree_get(step_ctx.state.opt_state, "lfm_alpha")
    value, align = lfm_loss(outputs["logits"], outputs["unimodal_logits"], step_ctx.labels,
                            names, alpha)
    return value, {"metrics": {"lfm/alignment": align, "lfm/alpha_align": alpha[1]}}
  return loss


def first_kernel(tree):
  """The first array of rank >= 2 of a params tree, in the tree's (sorted) order:
  the stem of the project's CNNs, the first layer of its MLPs."""
  return next(leaf for leaf in jax.tree.leaves(tree) if jnp.ndim(leaf) >= 2)


def make_alpha_gradient(model, names, frame_sizes):
  """Jitted (params, batch_stats, batch, alpha, key) -> the reference's alpha_grad."""
  first = names[0]

  def losses(params, batch_stats, batch, key):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    out, _ = model.apply(variables, {m: batch[m] for m in names}, train=True,
                         mutable=["batch_stats"], rngs={"dropout": key})
    return (cross_entropy(out["logits"], batch["label"]),
            mean_alignment(out["unimodal_logits"], names))

  def gradient(params, batch_stats, batch, alpha, key):
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    cls = lambda p: losses(p, batch_stats, batch, key)[0]
    def total(p):
      c, a = losses(p, batch_stats, batch, key)
      return alpha[0] * c + alpha[1] * a
    g_cls = jax.grad(cls)(params)
    _, hvp = jax.jvp(jax.grad(total), (params,), (g_cls,))
    return jnp.mean(first_kernel(hvp["encoders"][first]))

  return jax.jit(gradient)


def next_alpha(alpha, grad: float, epoch: int, lr_alpha: float) -> np.ndarray:
  """α₁ ← clip(α₁ − η_e·g, 0.05, 0.95), η_e = η·0.5^⌊e/20⌋; α₀ = 1 − α₁."""
  lr = lr_alpha * 0.5 ** (epoch // 20)
  a1 = float(np.clip(float(alpha[1]) - lr * grad, 0.05, 0.95))
  return np.asarray([1.0 - a1, a1], np.float32)


class LearnedAlpha:
  """The epoch hook: α for the next epoch from the hypergradient on a validation batch."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.grad_fn = make_alpha_gradient(ctx.model, ctx.names, ctx.frame_sizes)
    if "validation" not in ctx.data.eval_splits:
      raise cc.ConfigError("method lfm learns its weight on validation data: dataset "
                           f"{ctx.config.dataset.name} has no validation split")
    rows = max(1, min(ctx.config.batch_size, ctx.data.eval_sizes["validation"]) // 4)
    arrays = ctx.data.eval_splits["validation"]
    self.batch = jax.tree.map(lambda x: jnp.asarray(x[:rows]), arrays)

  def _alpha(self, state, epoch: int) -> dict:
    alpha = optax.tree_utils.tree_get(state.opt_state, "lfm_alpha")
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 0x1F3), epoch)
    grad = float(self.grad_fn(state.params, state.batch_stats, self.batch, alpha, key))
    return {"lfm_alpha": next_alpha(np.asarray(alpha), grad, epoch,
                                    self.ctx.config.method.lfm.lr_alpha)}

  def prepare(self, state, data_key) -> dict:
    return self._alpha(state, 0)

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    return self._alpha(state, next_epoch)


LFM = Method(
    name="lfm", summary="LFM: CE mixed with a prediction alignment, the mix learned per epoch",
    settings=Settings(
        block="lfm", defaults=defaults, check_block=check_block, check=check,
        requires=(Requirement("model.unimodal_heads", "split",
                              "lfm aligns the unimodal logits of the fusion layer's split heads"),),
        preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 0.0),)),
    optax=Optax(stage="post", transform=transform),
    step=Step(fused_loss=fused_loss),
    epoch=Epoch(hook=LearnedAlpha))
