"""AUG, sustained boosting with adaptive classifier assignment (NeurIPS 2025,
njustkmg/NeurIPS25-AUG): the modalities share one classifier; each has an
embedding into it, and during training the modality that classifies worse
is given extra learners (boosting rounds on its residual), one at each check.

The reference (`train_CREMAD.py` `train_audio_video`, model/AudioVideo.py
`AVGBShareClassifier.classfier`, `add_layer`), per modality m with features f:

    out_m = fc(relu(E_m f)) + Σ_{k < n_m} fc(relu(A_m,k f))     (fc shared, 256 hidden)
    o_m = out_m without its newest learner, r_m = fc(relu(A_m,n_m−1 f))
    loss_m = CE(out_m)                                                     if n_m = 0
           = CE(out_m) + CE(o_m) + CE(r_m) − ½ · CE_soft(r_m, y ⊙ sg(softmax(o_m)))  otherwise

(the last term with one-hot y is ½·mean_i p_i(y_i)·log q_i(y_i): the newest
learner's CE weighted by 1 − ½·p(y) of what came before it — the boosting
of the residual). Each batch: both encoders' features from one forward pass,
then one optimizer step per modality in turn on loss_m (encoder m, E_m, its
active learners (below) and fc; the rest are skipped: no momentum, no weight
decay),
the second modality's head seeing fc after the first step. score_m sums
softmax(out_m)(y) over the epoch's training examples. After epoch 0 and
every num_epochs/10 epochs (the epoch count in `check_epochs`), with
ratio = score_a / score_v: ratio > λ + 0.01 gives the visual modality a new
learner, ratio < λ − 0.01 the audio one (λ = 1, `--lam`). N ≥ 3: the modality
with the lowest score gets one when max/min > λ + 0.01 (for N = 2 the
reference's rule, with the sorted first modality as "a"). Prediction:
Σ_m w_m out_m, w = `merge_weights`; by default the reference's
`--merge_alpha 0.4` (audio 0.4, visual 0.6) when the modalities are audio and
visual, otherwise 1/N each.

The reference never trains its learners: its SGD optimizer is built once
from `model.parameters()` before the epoch loop (train_CREMAD.py:201), and
`add_layer` (model/AudioVideo.py:67-74) appends a new `nn.Linear` that is
never handed to it, so every learner keeps its initial values while it
contributes to the loss and the prediction. `train_learners=True` (the
default) trains them, as the paper's boosting describes;
`train_learners=False` (`method.protocol=reference`) keeps them at their
initial values, as the code runs.

In JAX the learners are preallocated: as many slots per modality as there
are check epochs before the last epoch (a learner added after the last epoch
would never train), all in this method's layers
(params["method_layers"]["aug"]); n_m lives in the optimizer state and a slot
is skipped by the optimizer until it is switched on, so it joins with the
parameters it was initialised with (the reference draws them when adding).
The reference runs PyTorch 1.11, where `optimizer.zero_grad()` leaves zero
gradients (not None) on the first modality's parameters, so the second
modality's step still applies momentum and weight decay to them (`del p.grad`
at the end of the batch makes them None again for the next batch's first
step). By default a parameter without a gradient is left alone (PyTorch ≥
2.0); `method.protocol=reference` sets `optimizer.zero_grad=zeros_per_batch`
(asgml_jax/transforms/zero_grad.py, as for MLA): the parameters of the
batch's earlier turns get a zero-gradient step (momentum and weight decay)
in each later turn. The KS script's confidence network `w_network` is a
separate variant of the method, not in the CREMA-D script, and not ported.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from asgml_jax import config_checks as cc
from asgml_jax.losses import batch_scores, cross_entropy
from asgml_jax.methods.base import (Epoch, Evaluation, Logging, Method, Optax, Plot, Protocols,
                                    ReferenceOptimizer, Settings, Signal, Step, SubStepResult,
                                    steplr_milestones)
from asgml_jax.methods.common import forward_with_vjp
from asgml_jax.models.encoders import dense_init


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      hidden=256,            # width of the embeddings and learners into the shared classifier
      residual_weight=0.5,   # the ½ of the boosting term
      lam=1.0,               # λ of the score-ratio rule
      checks=10,             # learners are assigned after epoch 0 and every num_epochs/checks
      merge_weights="",      # "<m>=<w>,..." of the prediction; empty: 1/N each
      # True: the boosting learners train from when they are assigned | False: they
      # stay at their initial values, as the reference's optimizer never receives them
      train_learners=True,
  ))


REFERENCE_MERGE = {"audio": 0.4, "visual": 0.6}   # --merge_alpha 0.4 (train_CREMAD.py:166)


def _merge(config) -> dict:
  """{m: w_m} of the prediction: every modality named in merge_weights; empty:
  the reference's default for audio + visual (merge_alpha = 0.4 on audio,
  train_CREMAD.py:128, :166), 1/N each for any other set of modalities."""
  names = cc.modality_names(config)
  text = config.method.aug.merge_weights
  if not text.strip():
    if set(names) == set(REFERENCE_MERGE):
      return dict(REFERENCE_MERGE)
    return {m: 1.0 / len(names) for m in names}
  weights = cc.parse_named_floats(text, names, math.nan)
  missing = [m for m, w in weights.items() if math.isnan(w)]
  if missing:
    raise ValueError(f"name every modality (missing: {', '.join(missing)})")
  return weights


def check_block(config) -> None:
  cc.positive(config, "method.aug.hidden")
  cc.at_least(config, "method.aug.residual_weight", 0)
  cc.positive(config, "method.aug.lam")
  cc.positive(config, "method.aug.checks")
  try:
    _merge(config)
  except ValueError as err:
    raise cc.ConfigError(f"config.method.aug.merge_weights: {err}") from None


def drop_modality(config, name: str) -> None:
  a = config.method.aug
  a.merge_weights = ",".join(item for item in cc.names_list(a.merge_weights)
                             if item.partition("=")[0].strip() != name)


def check_epochs(num_epochs: int, checks: int) -> list[int]:
  """The epochs after which a learner may be assigned (the last epoch excluded:
  its learner would never train): epoch 0 and every (e + 1) % period == 0."""
  period = num_epochs // checks if num_epochs > checks else 1
  return [e for e in range(num_epochs - 1) if e == 0 or (e + 1) % period == 0]


def _slots(config) -> int:
  return len(check_epochs(config.num_epochs, config.method.aug.checks))


class AUGHeads(nn.Module):
  """Per modality an embedding and `slots` learners into one shared classifier."""
  names: tuple[str, ...]
  num_classes: int
  hidden: int
  slots: int

  @nn.compact
  def __call__(self, features, counts=None):
    """{m: (out_m, o_m, r_m)} for the modalities in `features`; counts {m: n_m} (None: 0)."""
    fc = nn.Dense(self.num_classes, kernel_init=dense_init, name="fc_out")
    dense = lambda name: nn.Dense(self.hidden, kernel_init=dense_init, name=name)
    out = {}
    for m in self.names:
      if m not in features:
        continue
      f = features[m].astype(jnp.float32)
      total = fc(nn.relu(dense(f"embedding_{m}")(f)))
      n = 0 if counts is None else counts[m]
      newest = jnp.zeros_like(total)
      for k in range(self.slots):
        term = fc(nn.relu(dense(f"learner_{m}_{k}")(f)))
        total = total + jnp.where(k < n, term, 0.0)
        newest = newest + jnp.where(k == n - 1, term, 0.0)
      out[m] = (total, total - newest, newest)
    return out


def layers(ctx):
  return AUGHeads(ctx.names, ctx.num_classes, ctx.config.method.aug.hidden, _slots(ctx.config))


def modality_loss(out, previous, newest, count, labels, residual_weight: float):
  """loss_m of the module docstring."""
  p = jnp.take_along_axis(jax.nn.softmax(jax.lax.stop_gradient(previous), -1),
                          labels[:, None], 1)[:, 0]
  log_q = jnp.take_along_axis(jax.nn.log_softmax(newest, -1), labels[:, None], 1)[:, 0]
  boost = (cross_entropy(previous, labels) + cross_entropy(newest, labels)
           - residual_weight * jnp.mean(-p * log_q))
  return cross_entropy(out, labels) + jnp.where(count >= 1, boost, 0.0)


class AUGState(NamedTuple):
  aug_layers: dict       # {m: n_m (int32)}
  aug_score: dict        # {m: Σ of the epoch's true-class probabilities so far}


def keep_learners(names) -> optax.GradientTransformationExtraArgs:
  """Holds n_m and accumulates the epoch's scores (the sub-steps hand them over)."""
  def init_fn(params):
    return AUGState({m: jnp.zeros((), jnp.int32) for m in names},
                    {m: jnp.zeros((), jnp.float32) for m in names})

  def update_fn(updates, state, params=None, *, aug_scores=None, **extra):
    if aug_scores is None:
      return updates, state
    scores = {m: state.aug_score[m] + aug_scores[m] for m in names}
    return updates, state._replace(aug_score=scores)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [keep_learners(ctx.names)]


def _shared_keep(params, m: str, counts: dict, train_learners: bool = True):
  """Which non-encoder parameters modality m's turn steps: fc_out, its
  embedding and (with `train_learners`) its active learners; everything else
  (other modalities' heads, unused model layers) is skipped."""
  def stepped_layer(name: str):
    if name in ("fc_out", f"embedding_{m}"):
      return jnp.bool_(True)
    kind, _, k = name.rpartition("_")             # learner_<m>_<k>: on while k < n_m
    if train_learners and kind == f"learner_{m}":
      return counts[m] > int(k)
    return jnp.bool_(False)

  keep = jax.tree.map(lambda _: jnp.bool_(False),
                      {k: v for k, v in params.items() if k != "encoders"})
  own = {name: jax.tree.map(lambda _, on=stepped_layer(name): on, sub)
         for name, sub in keep["method_layers"]["aug"].items()}
  return {**keep, "method_layers": {**keep["method_layers"], "aug": own}}


def sub_steps(ctx):
  heads = layers(ctx)
  names = ctx.names
  residual_weight = ctx.config.method.aug.residual_weight
  train_learners = bool(ctx.config.method.aug.train_learners)

  def run(sub):
    labels = sub.step.labels
    (outputs, new_batch_stats), vjp_fn = forward_with_vjp(sub.forward, sub.params)
    probe_state = sub.refresh_probes(outputs)
    feats = outputs["features"]
    counts = optax.tree_utils.tree_get(sub.opt_state, "aug_layers")
    params, opt_state = sub.params, sub.opt_state
    total_grads = jax.tree.map(jnp.zeros_like, params)
    losses, scores = {}, {}
    for m in names:
      def turn_loss(head_params, f):
        out, previous, newest = heads.apply({"params": head_params}, {m: f}, counts)[m]
        return modality_loss(out, previous, newest, counts[m], labels, residual_weight), out
      (loss, out), (g_head, g_feat) = jax.value_and_grad(turn_loss, argnums=(0, 1),
                                                         has_aux=True)(
          params["method_layers"]["aug"], feats[m])
      cotangent = {n: (g_feat if n == m else jnp.zeros_like(feats[n])) for n in names}
      grads = vjp_fn(cotangent)[0]
      grads = {**grads, "method_layers": {**grads["method_layers"], "aug": g_head}}
      losses[m] = loss
      # the reference's tmp_a / tmp_v: Σ_i softmax(out_m)_i(y_i)
      scores[m] = jax.lax.stop_gradient(batch_scores({m: out}, labels)[m])
      so_far = {n: losses.get(n, jnp.float32(0.0)) for n in names}
      # the turn steps modality m's parameters (under optimizer.zero_grad=
      # zeros_per_batch the optimizer also steps those of the batch's earlier turns)
      updates, opt_state = sub.update(
          grads, opt_state, params, outputs, so_far, probe_state,
          encoder_mask={n: jnp.bool_(n == m) for n in names},
          shared_keep=_shared_keep(params, m, counts, train_learners),
          aug_scores={n: (scores[m] if n == m else jnp.float32(0.0)) for n in names})
      params = optax.apply_updates(params, updates)
      total_grads = jax.tree.map(jnp.add, total_grads, grads)
    return SubStepResult(
        params=params, batch_stats=new_batch_stats, opt_state=opt_state,
        probe_state=probe_state, loss=sum(losses.values()) / len(names),
        fused_loss=cross_entropy(outputs["logits"], labels), unimodal=losses, outputs=outputs,
        grads=total_grads,
        extras={"metrics": {f"aug/turn_loss_{m}": v for m, v in losses.items()}})
  return run


def eval_logits(ctx):
  heads = layers(ctx)
  weights = _merge(ctx.config)

  def replace(state, batch, outputs):
    counts = optax.tree_utils.tree_get(state.opt_state, "aug_layers")
    out = heads.apply({"params": state.params["method_layers"]["aug"]}, outputs["features"],
                      counts)
    unimodal = {m: o[0] for m, o in out.items()}
    return {**outputs, "logits": sum(weights[m] * unimodal[m] for m in unimodal),
            "unimodal_logits": unimodal}
  return replace


def assign(scores: dict, lam: float) -> str | None:
  """The modality that gets a learner (None: none), from the epoch's scores."""
  names = sorted(scores)
  if len(names) == 2:
    ratio = scores[names[0]] / scores[names[1]]
    if ratio > lam + 0.01:
      return names[1]
    if ratio < lam - 0.01:
      return names[0]
    return None
  weakest = min(names, key=lambda m: scores[m])
  return weakest if max(scores.values()) / scores[weakest] > lam + 0.01 else None


class Learners:
  """The epoch hook: assigns a learner at the check epochs, resets the scores."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.names = ctx.names
    cfg = ctx.config.method.aug
    self.checks = set(check_epochs(ctx.config.num_epochs, cfg.checks))
    self.lam = cfg.lam

  def prepare(self, state, data_key) -> dict:
    return {}

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    epoch = next_epoch - 1
    counts = {m: int(v) for m, v in
              optax.tree_utils.tree_get(state.opt_state, "aug_layers").items()}
    scores = {m: float(v) for m, v in
              optax.tree_utils.tree_get(state.opt_state, "aug_score").items()}
    fields = {"aug_score": {m: np.float32(0.0) for m in self.names}}
    if epoch in self.checks:
      chosen = assign(scores, self.lam)
      if chosen is not None:
        counts[chosen] += 1
      self.ctx.log(f"aug after epoch {epoch + 1}: scores "
                   + ", ".join(f"{m} {scores[m]:.1f}" for m in self.names)
                   + f" -> {'a learner for ' + chosen if chosen else 'no learner'}; learners "
                   + ", ".join(f"{m} {counts[m]}" for m in self.names))
      fields["aug_layers"] = {m: np.int32(counts[m]) for m in self.names}
    return fields


# njustkmg/NeurIPS25-AUG data/crema.json:16-35 (200 epochs, batch 64, SGD momentum 0.9, lr
# 1e-2, weight decay 1e-4, StepLR `patience` 70), train_CREMAD.py:201-202 (StepLR(70,
# 0.1)), :210-212 (`scheduler.step()` before each epoch's batches: the decays come one
# epoch early, at epochs 69 and 139).
OPTIMIZERS = {"cremad": ReferenceOptimizer(
    source="njustkmg/NeurIPS25-AUG data/crema.json:16-35, train_CREMAD.py:201-202,210-212",
    kind="sgd", learning_rate=1e-2, weight_decay=1e-4, num_epochs=200, batch_size=64,
    lr_milestones=steplr_milestones(70, 0.1, 200, stepped_before_epoch=True))}


AUG = Method(
    name="aug",
    summary="AUG: a classifier shared by the modalities, each step one update per modality, "
            "and boosting learners assigned to the modality that classifies worse",
    settings=Settings(block="aug", defaults=defaults, check_block=check_block,
                      drop_modality=drop_modality),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("optimizer.zero_grad", "zeros_per_batch"),
                   ("method.aug.train_learners", False))),
    optax=Optax(stage="post", transform=transform),
    step=Step(sub_steps=sub_steps, layers=layers),
    evaluation=Evaluation(eval_logits=eval_logits),
    epoch=Epoch(hook=Learners),
    logging=Logging(
        signals=(Signal("aug_layers", "aug/learners", "AUG: boosting learners per modality"),),
        plots=(Plot("aug/turn_loss", "AUG: each modality's turn loss"),)))
