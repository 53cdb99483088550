"""AGM (Li et al., ICCV 2023): Shapley outputs from zero-input passes, the
gradient of each modality's output scaled by c_m.

AGM owns the fused loss: CE(Σ_m Shapley output m), the extra forward passes
with the other inputs zeroed, and the gradient scaling (`scale_gradient`) all
happen in the loss hook. The transformation `asgml_jax.transforms.agm` (stage
`edit`, it leaves gradients alone) keeps the running scores S̄_m and the last
coefficients, read by the next step's loss hook; the reference's conditional
clip follows it. Its variant trains on that loss alone (γ = 0).

Reference: Lingy12/AGM_ICCV2023, run/CREMAD_main.py (`train`),
model/CREMAD_net.py (`GradMod`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy
from asgml_jax.methods.base import Logging, Method, Optax, Protocols, Settings, Signal, Step
from asgml_jax.transforms import agm as agm_lib
from asgml_jax.transforms.agm import agm, conditional_clip


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=1.0,             # c_m = exp(alpha·min(opt_m − ratio_m, cap))
      modulation_starts=0,   # epochs, inclusive
      modulation_ends=20,    # epochs, inclusive
      clip_norm=1.0,         # the gradient norm is clipped here when a fusion-weight
      clip_threshold=1.0,    # gradient element leaves [−clip_threshold, clip_threshold]
  ))


def check_block(config) -> None:
  a = config.method.agm
  cc.at_least(config, "method.agm.alpha", 0)
  cc.positive(config, "method.agm.clip_norm")
  cc.positive(config, "method.agm.clip_threshold")
  cc.require(0 <= a.modulation_starts <= a.modulation_ends, "method.agm.modulation_ends",
             "need 0 <= modulation_starts <= modulation_ends")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0         # AGM's loss is CE(Σ_m Shapley output m) alone


def transform(ctx):
  a = ctx.config.method.agm
  return [agm(), conditional_clip(a.clip_norm, a.clip_threshold)]


def fused_loss(ctx):
  a = ctx.config.method.agm
  cfg = agm_lib.AGMConfig(alpha=a.alpha, modulation_starts=a.modulation_starts,
                          modulation_ends=a.modulation_ends,
                          steps_per_epoch=ctx.steps_per_epoch)

  def loss(step_ctx, variables, outputs):
    names, batch, state = step_ctx.names, step_ctx.batch, step_ctx.state
    full = frozenset(names)

    def coalition_logits(subset):
      if subset == full:
        return outputs["logits"]
      inputs = {m: batch[m] if m in subset else jnp.zeros_like(batch[m]) for m in names}
      # inference mode, as the reference's `self.net.eval()`: running BatchNorm
      # statistics, no dropout; still differentiated
      return step_ctx.model.apply(variables, inputs, train=False)["logits"]

    phi = agm_lib.shapley_outputs(coalition_logits, names)
    scores = agm_lib.agm_scores(jax.lax.stop_gradient(phi), step_ctx.labels)
    coefficients = agm_lib.agm_coefficients(
        scores, agm_lib.agm_running_scores(state.opt_state, scores), cfg.alpha,
        agm_lib.modulation_active(cfg, state.step),
        previous=optax.tree_utils.tree_get(state.opt_state, "agm_coefficients"))
    logits = sum(agm_lib.scale_gradient(phi[m], coefficients[m]) for m in names)
    return cross_entropy(logits, step_ctx.labels), {
        "metrics": {f"agm/score_{m}": v for m, v in scores.items()},
        "tx_args": {"agm_scores": scores, "agm_coefficients": coefficients}}
  return loss


AGM = Method(
    name="agm", summary="AGM: Shapley outputs, each modality's gradient scaled by c_m",
    settings=Settings(block="agm", defaults=defaults, check_block=check_block, preset=preset),
    protocols=Protocols(reference=(("loss.unimodal_weight", 0.0),)),
    optax=Optax(stage="edit", rank=30, transform=transform),
    step=Step(fused_loss=fused_loss),
    logging=Logging(signals=(Signal("agm_coefficients", "agm/coeff", "AGM coefficient"),
                             Signal("agm_running_score", "agm/running_score"))))
