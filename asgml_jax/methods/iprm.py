"""IPRM, instantaneous probing and rebalancing (IJCAI 2025,
njustkmg/IJCAI25-IPRM): the modalities are fused by a geodesic mixup of
their normalised features, and each step first probes how much each modality
dominates the mixed prediction, then trains the mixup head on a mixture
rebalanced toward the other modality.

One step of the reference (`main_av.py` `train_epoch`; `main_trimodal.py`
`tri_cls` for three modalities), for each pair (i, j) of modalities:

    slerp(x, y, λx, λy) = sin(λx θ)/(sin θ + 1e-8) · x̂ + sin(λy θ)/(sin θ + 1e-8) · ŷ,
        x̂ = x/‖x‖, θ = arccos(clip(x̂·ŷ, −1, 1))
    probe (no gradient):   λ_t = α λ_{t−1} + (1 − α) λ̂_{t−1}   (λ_0 = λ̂_0 = ½)
                           p = head_ij(slerp(f_i, f_j, λ_t,i, λ_t,j))
                           KL_m = mean_batch KL(softmax(u_m) ‖ softmax(p))
                           λ̂_t,i = KL_j / (KL_i + KL_j),  λ̂_t,j = KL_i / (KL_i + KL_j)
    rebalance:             loss = Σ_m CE(u_m) + Σ_pairs CE(head_ij(slerp(f_i, f_j, λ̂_t)))

u_m = head_m(f_m) are separate Linear(D → C) heads (`model.unimodal_heads=separate`,
γ = 1); the mixup heads are this method's own layers
(params["method_layers"]["iprm"]). Prediction (`valid`):
Σ_m u_m + mean over pairs of head_ij(slerp(f_i, f_j, λ_t)), with the last step's
λ_t (not λ̂). For two modalities this is `main_av.py` exactly; N ≥ 3 is
`tri_cls` (a head per pair). The reference's three-modality script scores the
third modality with the second one's head (`out_m3 = model.head_m2(m3)`); here
each modality has its own. α = 0.8: the scripts require `--alpha` (no
default, main_av.py:46) and every command of the reference README passes
`--alpha 0.8`.
The model's concat fusion layer is built but unused (no loss reaches it).

The probe, next to ASGML's (`asgml_jax/probes.py`): ASGML's probes are
separate linear classifiers trained in their own jitted update on
`stop_gradient` features, so they measure each encoder's linear
separability and never touch the model. IPRM's probe trains nothing: it is
a no-gradient forward pass of the model's own (trained) mixup head, and it
measures how far each unimodal head's prediction is from the mixed one —
the modality closer to the mixture dominates it and gets less weight in
the next mixture. One reads representations, the other the fusion's
current bias; IPRM's acts on the very step it is measured in.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import cross_entropy, kl_divergence
from asgml_jax.methods.base import (Evaluation, Logging, Method, Optax, Plot, Protocols,
                                    ReferenceOptimizer, Requirement, Settings, Step,
                                    steplr_milestones)
from asgml_jax.models.encoders import dense_init


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=0.8,        # λ_t = α λ_{t−1} + (1 − α) λ̂_{t−1}
  ))


def check_block(config) -> None:
  cc.require(0.0 <= config.method.iprm.alpha <= 1.0, "method.iprm.alpha",
             f"must be in [0, 1], got {config.method.iprm.alpha}")


def preset(config) -> None:
  config.model.unimodal_heads = "separate"   # head_audio, head_video
  config.loss.unimodal_weight = 1.0          # loss_a + loss_v + loss_mm


def pairs(names) -> list[tuple[str, str]]:
  return list(itertools.combinations(sorted(names), 2))


def pair_key(pair) -> str:
  return f"{pair[0]}_and_{pair[1]}"


def slerp(x, y, lam_x, lam_y):
  """The reference's geodesic mixup of the L2-normalised rows of x and y."""
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  y = y / jnp.linalg.norm(y, axis=1, keepdims=True)
  theta = jnp.arccos(jnp.clip(jnp.sum(x * y, axis=1), -1.0, 1.0))[:, None]
  sin_theta = jnp.sin(theta) + 1e-8
  return jnp.sin(lam_x * theta) / sin_theta * x + jnp.sin(lam_y * theta) / sin_theta * y


class MixupHeads(nn.Module):
  """A Linear(D → C) head per pair of modalities, on their geodesic mixup."""
  names: tuple[str, ...]
  num_classes: int

  @nn.compact
  def __call__(self, features, lambdas=None):
    """{pair key: logits}; lambdas {pair key: (λ_i, λ_j)} (None: ½, ½ — at init)."""
    out = {}
    for pair in pairs(self.names):
      key = pair_key(pair)
      lam = (0.5, 0.5) if lambdas is None else (lambdas[key][0], lambdas[key][1])
      mixed = slerp(features[pair[0]].astype(jnp.float32),
                    features[pair[1]].astype(jnp.float32), *lam)
      out[key] = nn.Dense(self.num_classes, kernel_init=dense_init, name=key)(mixed)
    return out


def layers(ctx):
  return MixupHeads(ctx.names, ctx.num_classes)


class IPRMState(NamedTuple):
  iprm_lambda: dict       # {pair key: (λ_i, λ_j)} of the last step's probe
  iprm_lambda_hat: dict   # {pair key: (λ̂_i, λ̂_j)} it produced


def keep_lambdas(names) -> optax.GradientTransformationExtraArgs:
  """Remembers the probe's λ and λ̂ (handed over by the loss); passes updates."""
  half = lambda: jnp.full((2,), 0.5, jnp.float32)

  def init_fn(params):
    keys = [pair_key(p) for p in pairs(names)]
    return IPRMState({k: half() for k in keys}, {k: half() for k in keys})

  def update_fn(updates, state, params=None, *, iprm_lambda, iprm_lambda_hat, **extra):
    return updates, IPRMState(iprm_lambda, iprm_lambda_hat)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [keep_lambdas(ctx.names)]


def fused_loss(ctx):
  heads = layers(ctx)
  alpha = ctx.config.method.iprm.alpha

  def loss(step_ctx, variables, outputs):
    state = step_ctx.state.opt_state
    lam_prev = optax.tree_utils.tree_get(state, "iprm_lambda")
    hat_prev = optax.tree_utils.tree_get(state, "iprm_lambda_hat")
    own = {"params": variables["params"]["method_layers"]["iprm"]}
    feats, uni = outputs["features"], outputs["unimodal_logits"]
    lam = {k: alpha * lam_prev[k] + (1 - alpha) * hat_prev[k] for k in lam_prev}
    # probe: no gradient anywhere
    probe = heads.apply(jax.lax.stop_gradient(own), jax.lax.stop_gradient(feats), lam)
    lam_hat, metrics = {}, {}
    for pair in pairs(ctx.names):
      k = pair_key(pair)
      kl_i = kl_divergence(jax.lax.stop_gradient(uni[pair[0]]), probe[k])
      kl_j = kl_divergence(jax.lax.stop_gradient(uni[pair[1]]), probe[k])
      lam_hat[k] = jnp.stack([kl_j, kl_i]) / (kl_i + kl_j)
      metrics[f"iprm/kl_{pair[0]}_vs_{pair[1]}"] = kl_i
      metrics[f"iprm/kl_{pair[1]}_vs_{pair[0]}"] = kl_j
    for m in ctx.names:        # logged: m's weight λ̂ averaged over its pairs
      mine = [lam_hat[pair_key(p)][p.index(m)] for p in pairs(ctx.names) if m in p]
      metrics[f"iprm/lambda_hat_{m}"] = sum(mine) / len(mine)
    # rebalance
    mixed = heads.apply(own, feats, lam_hat)
    total = sum(cross_entropy(mixed[k], step_ctx.labels) for k in mixed)
    return total, {"metrics": metrics,
                   "tx_args": {"iprm_lambda": lam, "iprm_lambda_hat": lam_hat}}
  return loss


def prediction(heads, params, features, unimodal_logits, lambdas):
  """Σ_m u_m + mean over pairs of the mixup head on slerp(·, λ) (`valid`)."""
  mixed = heads.apply({"params": params["method_layers"]["iprm"]}, features, lambdas)
  return sum(unimodal_logits.values()) + sum(mixed.values()) / len(mixed)


def eval_logits(ctx):
  heads = layers(ctx)

  def replace(state, batch, outputs):
    lam = optax.tree_utils.tree_get(state.opt_state, "iprm_lambda")
    return {**outputs, "logits": prediction(heads, state.params, outputs["features"],
                                            outputs["unimodal_logits"], lam)}
  return replace


# njustkmg/IJCAI25-IPRM README.md:8 (CREMAD, batch 64, 100 epochs), main_av.py:30-36 (sgd,
# lr 0.01, StepLR(70, 0.1)), :240 (SGD momentum 0.9, weight decay 1e-4), :245, :155
# (stepped after each epoch).
OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="njustkmg/IJCAI25-IPRM README.md:8, main_av.py:30-36,155,240,245",
    kind="sgd", learning_rate=1e-2, weight_decay=1e-4, num_epochs=100, batch_size=64,
    lr_milestones=steplr_milestones(70, 0.1, 100))}


IPRM = Method(
    name="iprm",
    summary="IPRM: geodesic mixup of the modalities' features, each step probed (KL of each "
            "unimodal head to the mixed prediction) and rebalanced toward the less dominant",
    settings=Settings(
        block="iprm", defaults=defaults, check_block=check_block,
        requires=(Requirement("model.unimodal_heads", "separate",
                              "iprm's unimodal heads are Linear(D -> C) per modality"),),
        preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 1.0),)),
    optax=Optax(stage="post", transform=transform),
    step=Step(fused_loss=fused_loss, layers=layers),
    evaluation=Evaluation(eval_logits=eval_logits),
    logging=Logging(plots=(Plot("iprm/lambda_hat", "IPRM: modality's mixup weight λ̂"),)))
