"""Greedy: balancing the conditional learning speeds of a mid-fusion model
(Wu, Jastrzębski, Cho & Geras, "Characterizing and overcoming the greedy
nature of learning in multi-modal deep neural networks", ICML 2022).

The model has MMTM blocks between the encoders' stages (`model.mid_fusion=
"mmtm"`, `asgml_jax/models/mid_fusion.py`): each modality's "main" path is its
encoder, its "bypass" path the MMTM parameters that bring the other
modalities' information in (its own excitation layer `excite_<m>` and the
shared squeeze layer of every block). After each step's backward pass, for
each modality m (ratios of sums of squares over the path's parameters, the
raw gradient before weight decay and momentum):

    M_bypass_m += ‖∇θ_bypass_m‖² / ‖θ_bypass_m‖²
    M_main_m   += ‖∇θ_main_m‖²   / ‖θ_main_m‖²
    BDR_m = log10(M_bypass_m / M_main_m)

and when BDR_0 − BDR_1 exceeds α in magnitude, the next `window_size` steps
are *curation* steps for the modality with the larger BDR: in every MMTM block
its excitation is replaced by the running average of its excitations (over
the run's training batches, this one included, no gradient), which cuts the
other modalities' per-example information out of its path. M is not
accumulated during a curation window; after it, the test runs again. N
modalities: the test is max_m BDR_m − min_m BDR_m > α and the curated
modality the argmax (for N = 2 exactly the reference's sign rule).

Reference: GeWu-Lab/BalanceBenchmark, balancemm/trainer/Greedy_trainer.py
(`train_loop`: the curation state machine; `compute_learning_speed`: M and
BDR) and balancemm/models/avclassify_model.py (`BaseClassifierGreedyModel`:
MMTM after each of the ResNet-18's four stages, CE of the concat fusion as
the only loss; `MMTM`). α = 0.001, window 5, from the first step.
Cross-checked with the paper's code, nyukat/greedy_multimodal_learning
(src/callbacks.py `Bias_Mitigation_Strong`, src/balanced_mmtm.py, src/model.py).
Where they differ or cannot run:
- BalanceBenchmark's `MMTM.forward` empties `running_avg_weight` at its
  start and then reads it (`KeyError` on the first forward pass), so its
  Greedy cannot run; the running average here is the paper code's (kept
  across steps).
- The paper's code averages modality 1's running excitation from modality
  0's excitations (`running_avg_weight_skeleton` is updated from `vis_out`;
  it only runs because its two widths are equal), and both codes also
  update the averages during validation and test passes. Neither is
  reproduced: the average is each modality's own, over training batches.
- The paper's code has blocks after stages 2–4 only (`model.mmtm_after=
  all_but_first`), α = 0.01, starts after the first epoch (`start_epoch=1`),
  trains Σ_m CE of per-branch heads and predicts with their mean; its
  evaluation passes also use the last training step's curation mode. Here
  evaluation applies each example's own excitations (the model as trained
  outside curation windows).
- "Main" is encoder m's parameters (BalanceBenchmark); the paper's code also
  counts branch m's own classifier, which the concat fusion here shares.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (Logging, Method, Optax, Protocols, Requirement, Settings,
                                    Signal, Step)
from asgml_jax.methods.reference_optimizers import BALANCEBENCHMARK


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=0.001,          # α: |BDR_0 − BDR_1| that starts a curation window
      window_size=5,        # curation steps per window
      start_epoch=0,        # 0-based epoch from which windows may start (the paper's code: 1)
  ))


def check_block(config) -> None:
  g = config.method.greedy
  cc.positive(config, "method.greedy.alpha")
  cc.positive(config, "method.greedy.window_size", integer=True)
  cc.require(isinstance(g.start_epoch, int) and g.start_epoch >= 0, "method.greedy.start_epoch",
             f"must be an integer >= 0, got {g.start_epoch!r}")


def preset(config) -> None:
  config.model.mid_fusion = "mmtm"
  config.model.mmtm_after = "all"
  config.loss.unimodal_weight = 0.0         # BalanceBenchmark: CE(fused) only


def _sum_sq(tree) -> jnp.ndarray:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def path_sizes(tree, names) -> tuple[dict, dict]:
  """({m: ‖main_m‖²}, {m: ‖bypass_m‖²}) of a params-shaped tree (params or grads):
  main = encoder m; bypass = every block's `excite_<m>` and shared `squeeze`."""
  main = {m: _sum_sq(tree["encoders"][m]) for m in names}
  blocks = tree["mid_fusion"].values()
  bypass = {m: sum(_sum_sq(b[f"excite_{m}"]) + _sum_sq(b["squeeze"]) for b in blocks)
            for m in names}
  return main, bypass


class GreedyState(NamedTuple):
  greedy_speed_main: dict      # {m: M_main_m}
  greedy_speed_bypass: dict    # {m: M_bypass_m}
  greedy_bdr: dict             # {m: BDR_m} at the last test
  greedy_curated: dict         # {m: 1.0 if the next step curates m}
  greedy_window_step: jnp.ndarray
  greedy_average: dict         # {block: {m: running mean excitation (C_m,)}}
  greedy_average_count: jnp.ndarray


def conditional_speed(alpha: float, window_size: int, start_step: int):
  """Observes the raw gradient (passes it on unchanged) and decides the next
  step's curation, as `Greedy_trainer.train_loop` after `training_step`."""
  def init_fn(params):
    names = sorted(params["encoders"])
    zero = {m: jnp.float32(0.0) for m in names}
    average = {b: {m: jnp.zeros(block[f"excite_{m}"]["bias"].shape, jnp.float32) for m in names}
               for b, block in params["mid_fusion"].items()}
    return GreedyState(dict(zero), dict(zero), dict(zero), dict(zero), jnp.int32(0), average,
                       jnp.float32(0.0))

  def update_fn(updates, state, params=None, *, step=None, mid_fusion=None, **extra):
    names = sorted(updates["encoders"])
    average, count = state.greedy_average, state.greedy_average_count
    if mid_fusion:   # the step's new averages, {block: {m: (C_m,)}} as the control made them
      average, count = mid_fusion, count + 1.0
    grad_main, grad_bypass = path_sizes(updates, names)
    weight_main, weight_bypass = path_sizes(params, names)
    curating = sum(state.greedy_curated.values()) > 0
    unlocked = step >= start_step
    accumulate = jnp.logical_not(unlocked & curating)
    speed_main = {m: state.greedy_speed_main[m]
                  + jnp.where(accumulate, grad_main[m] / weight_main[m], 0.0) for m in names}
    speed_bypass = {m: state.greedy_speed_bypass[m]
                    + jnp.where(accumulate, grad_bypass[m] / weight_bypass[m], 0.0)
                    for m in names}
    bdr = {m: jnp.log10(speed_bypass[m] / speed_main[m]) for m in names}
    values = jnp.stack([bdr[m] for m in names])
    start = unlocked & ~curating & (jnp.max(values) - jnp.min(values) > alpha)
    top = jnp.argmax(values)
    window = jnp.where(curating, state.greedy_window_step + 1, 0)
    keep = unlocked & curating & (window < window_size)
    curated = {m: jnp.where(start, (top == i).astype(jnp.float32),
                            jnp.where(keep, state.greedy_curated[m], 0.0))
               for i, m in enumerate(names)}
    bdr = {m: jnp.where(accumulate, bdr[m], state.greedy_bdr[m]) for m in names}
    return updates, GreedyState(speed_main, speed_bypass, bdr, curated,
                                window.astype(jnp.int32), average, count)
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  g = ctx.config.method.greedy
  return [conditional_speed(g.alpha, g.window_size, g.start_epoch * ctx.steps_per_epoch)]


def mid_fusion_control(ctx):
  """The train step's MMTM hook: the curated modality's excitation becomes the
  running average (this batch included); every block reports its averages."""
  names = ctx.names

  def control_for(step_ctx):
    opt_state = step_ctx.state.opt_state
    curated = optax.tree_utils.tree_get(opt_state, "greedy_curated")
    average = optax.tree_utils.tree_get(opt_state, "greedy_average")
    count = optax.tree_utils.tree_get(opt_state, "greedy_average_count")

    def control(block, excitation):
      new_average, scales = {}, {}
      for m in names:
        batch_mean = jax.lax.stop_gradient(jnp.mean(excitation[m], axis=0))
        new_average[m] = (batch_mean + average[block][m] * count) / (count + 1.0)
        scales[m] = jnp.where(curated[m] > 0, new_average[m][None, :], excitation[m])
      return scales, new_average
    return control
  return control_for


GREEDY = Method(
    name="greedy",
    summary="Greedy: MMTM mid-fusion; curation windows when the modalities' conditional "
            "learning speeds drift apart",
    settings=Settings(
        block="greedy", defaults=defaults, check_block=check_block,
        requires=(Requirement("model.mid_fusion", "mmtm",
                              "greedy measures the learning speed of the MMTM bypass paths"),),
        preset=preset),
    protocols=Protocols(
        optimizers=BALANCEBENCHMARK,
        reference=(("model.mid_fusion", "mmtm"), ("model.mmtm_after", "all"),
                   ("loss.unimodal_weight", 0.0))),
    optax=Optax(stage="edit", rank=1, transform=transform),
    step=Step(mid_fusion_control=mid_fusion_control),
    logging=Logging(signals=(Signal("greedy_curated", "greedy/curated",
                                    "Greedy: curated (excitation = average)"),
                             Signal("greedy_bdr", "greedy/bdr", "Greedy: BDR"))))
