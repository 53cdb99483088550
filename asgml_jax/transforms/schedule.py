"""When (and with which gradient) each encoder updates: joint, frequency,
staleness, adaptive (docs/methods.md), wrapped around the inner optimizer.

The inner optimizer (weight decay + SGD momentum + lr) keeps a separate state
per encoder and one for the shared part (fusion, heads). A *skipped* encoder
gets a zero update and its inner state is not advanced — no momentum, no
weight decay — as PyTorch SGD does for a parameter whose `.grad` is None
(`optax.conditionally_mask` in spirit, per modality). Fusion and heads update
every step.

- joint: every encoder updates every step (the baseline's wrapper: it only
  records the signals below).
- frequency (k): throttled encoders update when t mod k == 0. The throttled
  set is named in the config, or chosen every step by the probes (`"probe"`:
  the highest utilization score; the control condition throttles the lowest).
- staleness (τ_m): encoder m applies g_m(t − τ_m) every step from a ring
  buffer of its last τ_m gradients (a pytree with a leading time axis, read
  before the current gradient is written into the same slot, so exactly τ_m
  copies are held); for t < τ_m there is no stale gradient yet: skip.
  The seeds' code (`staleness_seed_code`) keeps a list of gradients and, once
  it holds τ_m, applies its τ_m-th newest, g(t − τ_m + 1) — from t = τ_m − 1 on
  — scaled by 1/(1 + 0.1·τ_m); before that the fresh, unscaled gradient.
- adaptive (seed v1): τ_m from the normalised gradient-norm and loss-descent
  signals, clipped, κ-constrained, warmed up, λ-compensated (see
  `AdaptiveConfig`); update when t mod round(τ_m) == 0.

The gradient this transformation sees is what the interventions before it in
the chain made of it (OGM-GE, boost), so a stale gradient carries the
modulation of the step it was computed at.

`next_gates` predicts the update flags of the next step, read by the train
step to gate the unimodal loss terms (docs/methods.md, model and loss). For adaptive, the next τ is
not known before the next gradient; the prediction uses the current τ.

Extra args read: `step` (global step); `encoder_mask` ({m: bool}, optional:
encoders outside it are skipped this update, e.g. in MLA's per-modality sub-steps);
`shared_keep` (a tree of bools shaped like the shared parameters, optional:
the False ones are skipped the same way); frequency with probes and adaptive
also `probe_scores`, `probe_refreshes`; adaptive `encoder_grad_norms`
(raw, before any intervention) and `unimodal_losses`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

MODES = ("joint", "frequency", "staleness", "adaptive")


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig:
  """The defaults of docs/methods.md (ASGML's interventions); the `seed_code`-style
  fields reproduce the seeds' code (docs/methods.md, protocols)."""
  tau_base: float = 2.0
  tau_max: float = 8.0
  beta: float = 0.5
  lam: float = 0.1
  window: int = 10
  kappa: float = 3.0
  warmup_steps: int = 0
  source: str = "dual"              # dual | probe | both
  threshold_delta: float = 0.0      # probe/both: adapt only while the gap exceeds it
  update_ratio_min: float = 0.0     # probe/both: floor on the dominant's update rate
  compensation: str = "multiply"    # multiply: g·(1+λτ) | divide: g/(1+λτ) | none (seeds' code)
  kappa_mode: str = "relative"      # relative: τ ≤ κ·min τ | absolute: τ ≤ κ (seeds' code)
  signals: str = "design"           # design | seed_code (EMA grad norms, |ΔL| over window − 1
                                    # steps, τ at refreshes)
  grad_norm_ema: float = 0.1
  off_steps: str = "skip"           # skip (no update) | soft_mask: g × soft_mask_scale with
  soft_mask_scale: float = 0.1      # momentum and weight decay acting (seeds' code)


class ModalityScheduleState(NamedTuple):
  count: jnp.ndarray        # int32, steps seen
  inner: dict               # {"encoders": {m: inner state}, "shared": inner state}
  buffers: dict             # staleness: {m: gradient pytree with a leading τ_m axis}
  loss_history: jnp.ndarray # adaptive: (window + 1, N) ring of unimodal losses
  grad_norm_ema: jnp.ndarray  # adaptive, seeds' signals: (N,) EMA of raw grad norms
  seen_refreshes: jnp.ndarray
  tau: dict                 # {m: current τ_m} (k for throttled under frequency)
  flags: dict               # {m: 1.0 if m updated at the last step}
  next_gates: dict          # {m: predicted flag of the next step}
  update_ratio: dict        # {m: running fraction of steps m updated}
  grad_norms_in: dict       # {m: norm of the gradient reaching the schedule}


def _ratio(values: jnp.ndarray, eps: float) -> jnp.ndarray:
  """values / mean(values), 1 where the mean is ~0 (guarded denominator)."""
  mean = values.mean()
  return jnp.where(jnp.abs(mean) < eps, jnp.ones_like(values), values / jnp.where(
      jnp.abs(mean) < eps, 1.0, mean))


def adaptive_tau(cfg: AdaptiveConfig, step, grad_norms: jnp.ndarray, loss_drop: jnp.ndarray,
                 have_window, probe_scores: jnp.ndarray | None) -> jnp.ndarray:
  """τ_m (docs/methods.md) from the signals of one step
  (arrays over modalities, sorted)."""
  g_signal = _ratio(grad_norms, 1e-12)
  d_signal = jnp.where(have_window, _ratio(loss_drop, 1e-8), jnp.ones_like(loss_drop))
  if cfg.source == "probe":
    score = _ratio(probe_scores, 1e-8)
  else:
    score = cfg.beta * g_signal + (1 - cfg.beta) * d_signal
  tau = jnp.clip(cfg.tau_base * score, 1.0, cfg.tau_max)
  if cfg.kappa_mode == "relative":
    tau = jnp.minimum(tau, cfg.kappa * tau.min())
  else:
    tau = jnp.minimum(tau, cfg.kappa)
  if cfg.source in ("probe", "both"):
    gap = probe_scores.max() - probe_scores.min()
    tau = jnp.where(gap > cfg.threshold_delta, tau, jnp.ones_like(tau))
    if cfg.update_ratio_min > 0:
      dominant = jnp.arange(tau.shape[0]) == jnp.argmax(probe_scores)
      tau = jnp.where(dominant, jnp.minimum(tau, 1.0 / cfg.update_ratio_min), tau)
  if cfg.warmup_steps > 0:
    ramp = jnp.minimum(step / cfg.warmup_steps, 1.0)
    tau = 1.0 + (tau - 1.0) * ramp
  return tau


def _tree_select(keep, new, old):
  return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def modality_schedule(inner: optax.GradientTransformation, mode: str = "joint", *,
                      frequency_ratio: int = 2, throttled: tuple[str, ...] | str = (),
                      soft_mask_scale: float | None = None,
                      staleness: Mapping[str, int] | None = None,
                      staleness_seed_code: bool = False,
                      adaptive: AdaptiveConfig | None = None,
                      ) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so each encoder updates on its own schedule (see module doc).

  `throttled`: names of the frequency-throttled modalities, or "probe_max" /
  "probe_min" to pick the modality with the highest / lowest probe score.
  `soft_mask_scale` (seeds' code): instead of skipping, multiply the throttled
  gradient by this and let momentum and weight decay act.
  `staleness_seed_code` (seeds' code): apply g(t − τ + 1), and the fresh
  gradient while t < τ, instead of skipping.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; choose one of {MODES}")
  inner = optax.with_extra_args_support(inner)
  adaptive = adaptive or AdaptiveConfig()
  staleness = dict(staleness or {})

  def _taus(names):
    if mode == "staleness":
      return {m: int(staleness.get(m, 0)) for m in names}
    return {m: 0 for m in names}

  def _delays(names):
    """Ring-buffer length per modality: τ (design) or τ − 1 (seeds' code)."""
    return {m: max(tau - 1 if staleness_seed_code else tau, 0) for m, tau in _taus(names).items()}

  def init_fn(params):
    names = sorted(params["encoders"])
    shared = {k: v for k, v in params.items() if k != "encoders"}
    taus, delays = _taus(names), _delays(names)
    buffers = {m: jax.tree.map(lambda p, d=delays[m]: jnp.zeros((d,) + p.shape, p.dtype),
                               params["encoders"][m]) for m in names if delays[m] > 0}
    ones = {m: jnp.ones((), jnp.float32) for m in names}
    if mode == "staleness" and not staleness_seed_code:
      first_gates = {m: jnp.float32(taus[m] == 0) for m in names}
    else:
      first_gates = dict(ones)
    return ModalityScheduleState(
        count=jnp.zeros((), jnp.int32),
        inner={"encoders": {m: inner.init(params["encoders"][m]) for m in names},
               "shared": inner.init(shared)},
        buffers=buffers,
        loss_history=jnp.zeros((adaptive.window + 1, len(names)), jnp.float32),
        grad_norm_ema=jnp.zeros((len(names),), jnp.float32),
        seen_refreshes=jnp.zeros((), jnp.int32),
        tau={m: jnp.float32(max(taus[m], 1)) for m in names},
        flags=dict(ones), next_gates=first_gates, update_ratio=dict(ones),
        grad_norms_in={m: jnp.zeros((), jnp.float32) for m in names})

  def _throttled_mask(names, extra):
    if isinstance(throttled, str) and throttled in ("probe_max", "probe_min"):
      scores = jnp.stack([extra["probe_scores"][m] for m in names])
      pick = jnp.argmax(scores) if throttled == "probe_max" else jnp.argmin(scores)
      return {m: jnp.arange(len(names))[i] == pick for i, m in enumerate(names)}
    return {m: jnp.bool_(m in throttled) for m in names}

  def _decide(grads, state, extra):
    """(grads to apply, logical update flags, inner-advance flags, τ, next gates, state parts)."""
    t = extra["step"]
    names = sorted(grads)
    true = {m: jnp.bool_(True) for m in names}
    parts = {}
    if mode == "joint":
      return grads, true, true, dict(state.tau), {m: jnp.float32(1) for m in names}, parts
    if mode == "frequency":
      mask = _throttled_mask(names, extra)
      on, on_next = (t % frequency_ratio) == 0, ((t + 1) % frequency_ratio) == 0
      flags = {m: jnp.where(mask[m], on, True) for m in names}
      nxt = {m: jnp.where(mask[m], on_next, True).astype(jnp.float32) for m in names}
      tau = {m: jnp.where(mask[m], float(frequency_ratio), 1.0) for m in names}
      if soft_mask_scale is None:
        return grads, flags, flags, tau, nxt, parts
      soft = {m: jax.tree.map(lambda g, f=flags[m]: jnp.where(f, g, g * soft_mask_scale),
                              grads[m]) for m in names}
      return soft, flags, true, tau, nxt, parts
    if mode == "staleness":
      taus, delays = _taus(names), _delays(names)
      apply, flags, nxt, buffers = {}, {}, {}, {}
      for m in names:
        tau, delay = taus[m], delays[m]
        if delay == 0:
          # τ = 1 in the seeds' code: the newest list entry, scaled 1/(1 + 0.1)
          scale = 1.0 / (1.0 + 0.1 * tau) if staleness_seed_code and tau > 0 else None
          apply[m] = (grads[m] if scale is None else
                      jax.tree.map(lambda g, s=scale: g * jnp.asarray(s, g.dtype), grads[m]))
          flags[m], nxt[m] = jnp.bool_(True), jnp.float32(1)
          continue
        slot = t % delay
        stale = jax.tree.map(lambda b: b[slot], state.buffers[m])
        valid = t >= (tau - 1 if staleness_seed_code else tau)
        buffers[m] = jax.tree.map(lambda b, g: b.at[slot].set(g), state.buffers[m], grads[m])
        if staleness_seed_code:
          scaled = jax.tree.map(lambda g: g * jnp.asarray(1.0 / (1.0 + 0.1 * tau), g.dtype), stale)
          apply[m] = _tree_select(valid, scaled, grads[m])
          flags[m], nxt[m] = jnp.bool_(True), jnp.float32(1)
        else:
          apply[m], flags[m] = stale, valid
          nxt[m] = (t + 1 >= tau).astype(jnp.float32)
      parts["buffers"] = buffers
      tau_log = {m: jnp.float32(taus[m]) for m in names}
      return apply, flags, flags, tau_log, nxt, parts
    # adaptive
    cfg = adaptive
    raw_norms = jnp.stack([extra["encoder_grad_norms"][m] for m in names]).astype(jnp.float32)
    losses = jnp.stack([extra["unimodal_losses"][m] for m in names]).astype(jnp.float32)
    probe = (jnp.stack([extra["probe_scores"][m] for m in names]).astype(jnp.float32)
             if cfg.source in ("probe", "both") else None)
    # the loss descent over `span` steps: the window (design), or the seeds'
    # 9 deltas of a 10-entry window (window − 1)
    span = cfg.window - 1 if cfg.signals == "seed_code" else cfg.window
    hist_len = span + 1
    oldest = state.loss_history[(t + 1) % hist_len]      # u(t − span)
    history = state.loss_history.at[t % hist_len].set(losses)
    have_window = t >= span
    if cfg.signals == "seed_code":
      ema = jnp.where(state.count == 0, raw_norms,
                      (1 - cfg.grad_norm_ema) * state.grad_norm_ema + cfg.grad_norm_ema * raw_norms)
      norms, drop = ema, jnp.abs(oldest - losses)
    else:
      ema, norms, drop = state.grad_norm_ema, raw_norms, oldest - losses
    new_tau = adaptive_tau(cfg, t, norms, drop, have_window, probe)
    if cfg.signals == "seed_code":
      fresh = extra["probe_refreshes"] > state.seen_refreshes
      prev = jnp.stack([state.tau[m] for m in names])
      new_tau = jnp.where(fresh | (state.count == 0), new_tau, prev)
      parts["seen_refreshes"] = jnp.maximum(state.seen_refreshes, extra["probe_refreshes"])
    period = jnp.maximum(jnp.round(new_tau), 1.0).astype(jnp.int32)
    flags = {m: (t % period[i]) == 0 for i, m in enumerate(names)}
    nxt = {m: (((t + 1) % period[i]) == 0).astype(jnp.float32) for i, m in enumerate(names)}
    comp = 1.0 + cfg.lam * new_tau
    factor = {"multiply": comp, "divide": 1.0 / comp,
              "none": jnp.ones_like(comp)}[cfg.compensation]
    apply = {m: jax.tree.map(lambda g, f=factor[i]: g * f.astype(g.dtype), grads[m])
             for i, m in enumerate(names)}
    parts.update(loss_history=history, grad_norm_ema=ema)
    tau_out = {m: new_tau[i] for i, m in enumerate(names)}
    if cfg.off_steps == "soft_mask":
      true = {m: jnp.bool_(True) for m in names}
      apply = {m: jax.tree.map(lambda g, f=flags[m]: jnp.where(f, g, g * cfg.soft_mask_scale),
                               apply[m]) for m in names}
      return apply, flags, true, tau_out, nxt, parts
    return apply, flags, flags, tau_out, nxt, parts

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise ValueError("modality_schedule needs params (weight decay and per-group state)")
    grads = updates["encoders"]
    names = sorted(grads)
    apply, flags, advance, tau, nxt, parts = _decide(grads, state, extra)
    encoder_mask = extra.get("encoder_mask")
    if encoder_mask is not None:
      # A method's sub-step that trains only some encoders (MLA): the others
      # are skipped as above, whatever the schedule decided.
      flags = {m: flags[m] & encoder_mask[m] for m in names}
      advance = {m: advance[m] & encoder_mask[m] for m in names}
    out_enc, inner_enc = {}, {}
    for m in names:
      u, s = inner.update(apply[m], state.inner["encoders"][m], params["encoders"][m], **extra)
      out_enc[m] = jax.tree.map(lambda x, a=advance[m]: jnp.where(a, x, jnp.zeros_like(x)), u)
      inner_enc[m] = _tree_select(advance[m], s, state.inner["encoders"][m])
    shared_updates = {k: v for k, v in updates.items() if k != "encoders"}
    shared_params = {k: v for k, v in params.items() if k != "encoders"}
    shared_out, shared_state = inner.update(shared_updates, state.inner["shared"], shared_params,
                                            **extra)
    shared_keep = extra.get("shared_keep")
    if shared_keep is not None:
      # A method that leaves some shared parameters out of an update (ReconBoost's
      # boost rate in its per-modality stage): skipped like an encoder.
      state_keep = optax.tree_utils.tree_map_params(
          inner, lambda _, keep: keep, shared_state, shared_keep,
          transform_non_params=lambda _: jnp.bool_(True))
      shared_state = jax.tree.map(lambda k, n, o: jnp.where(k, n, o), state_keep, shared_state,
                                  state.inner["shared"])
      shared_out = jax.tree.map(lambda u, k: jnp.where(k, u, jnp.zeros_like(u)), shared_out,
                                shared_keep)
    count = state.count + 1
    flag_f = {m: flags[m].astype(jnp.float32) for m in names}
    ratio = {m: (state.update_ratio[m] * state.count.astype(jnp.float32) + flag_f[m])
             / count.astype(jnp.float32) for m in names}
    new_state = state._replace(
        count=count, inner={"encoders": inner_enc, "shared": shared_state},
        tau={m: jnp.asarray(tau[m], jnp.float32) for m in names}, flags=flag_f,
        next_gates={m: jnp.asarray(nxt[m], jnp.float32) for m in names}, update_ratio=ratio,
        grad_norms_in={m: optax.global_norm(grads[m]) for m in names}, **parts)
    return {**shared_out, "encoders": out_enc}, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def update_gates(opt_state: Any, names) -> dict:
  """The flags the schedule predicted for this step (1.0 when there is no schedule)."""
  gates = optax.tree_utils.tree_get(opt_state, "next_gates")
  if gates is None:
    return {m: jnp.float32(1.0) for m in names}
  return gates
