"""Pure, module-level train and eval steps.

`train_step` is the whole of one optimisation step as a function of pytrees:
forward, the loss (docs/methods.md), gradients, per-modality signals, and an explicit
`tx.update(grads, opt_state, params, **extra_args)` (Flax's
`TrainState.apply_gradients` cannot pass extra args, so it is not used).
Static things (model, tx, loss weight) are bound with functools.partial before
jit, so the step compiles once.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from asgml_jax.losses import FUSED_TASK
from asgml_jax.methods.base import StepContext, StepParts, SubStepContext, merge_extras
from asgml_jax.probes import ProbeConfig, maybe_refresh, probe_logits, utilization_gap
from asgml_jax.state import TrainState
from asgml_jax.tasks import CLASSIFICATION, Task
from asgml_jax.transforms.schedule import update_gates


def multimodal_loss(outputs: Mapping[str, Any], batch: Mapping[str, jnp.ndarray],
                    unimodal_weight: float, update_gates: Mapping[str, jnp.ndarray],
                    fused: jnp.ndarray | None = None,
                    unimodal_logits: Mapping[str, jnp.ndarray] | None = None,
                    task: Task = CLASSIFICATION):
  """L = ℓ(fused) + γ·Σ_m gate_m·ℓ(unimodal_m), ℓ the task's head loss
  (classification: cross-entropy, docs/methods.md, model and loss).

  `update_gates[m]` is 1 when modality m's encoder updates this step (always,
  for joint training); a skipped modality's unimodal term is switched off.
  `fused`: a method's own fused loss, in place of CE(fused); `unimodal_logits`:
  a method's own logits for the unimodal terms (default: the model's).
  Returns the loss, the fused loss and the unimodal loss per modality
  (ungated, for logging).
  """
  if fused is None:
    fused = task.head_loss(outputs["logits"], batch)
  if unimodal_logits is None:
    unimodal_logits = outputs["unimodal_logits"]
  unimodal = {m: task.head_loss(z, batch) for m, z in unimodal_logits.items()}
  total = fused + unimodal_weight * sum(update_gates[m] * u for m, u in unimodal.items())
  return total, fused, unimodal


def _inputs(batch: Mapping[str, jnp.ndarray], names) -> dict:
  return {m: batch[m] for m in names}


def _first_nonfinite(loss, grads, encoder_norms: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """Code of the first non-finite quantity: 0 loss, 1+i encoder i (sorted), N+1 the
  rest; −1 none. Encoder norms come from the step, which logs them anyway."""
  rest = {k: v for k, v in grads.items() if k != "encoders"}
  checks = [jnp.isfinite(loss)]
  checks += [jnp.isfinite(encoder_norms[m]) for m in sorted(encoder_norms)]
  checks.append(jnp.isfinite(optax.global_norm(rest)) if rest else jnp.bool_(True))
  bad = ~jnp.stack(checks)
  return jnp.where(bad.any(), jnp.argmax(bad), -1).astype(jnp.int32)


def per_loss_gradients(losses_fn, params, num_losses: int):
  """One forward pass, one backward pass per loss: ([grads of loss k], losses, aux).

  `losses_fn(params) -> (losses (K,), aux)`. The multi-task methods
  (MMPareto, PCGrad, DWA, GradNorm) need each loss's gradient separately;
  `jax.vjp` shares the forward pass and its residuals between them.
  """
  losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
  eye = jnp.eye(num_losses, dtype=losses.dtype)
  return [vjp_fn(eye[k])[0] for k in range(num_losses)], losses, aux


def encoder_grad_norms(grads) -> dict:
  return {m: optax.global_norm(g) for m, g in grads["encoders"].items()}


def _tx_args(step, outputs, batch, task, probe_state, grad_norms, unimodal) -> dict:
  """The signals every transformation receives as extra args of `tx.update`."""
  return dict(
      step=step, ogm_scores=task.modality_scores(outputs["unimodal_logits"], batch),
      probe_scores=probe_state.score, probe_refreshes=probe_state.refreshes,
      encoder_grad_norms=grad_norms,
      mid_fusion=jax.lax.stop_gradient(outputs.get("mid_fusion", {})),
      unimodal_losses=unimodal, features=jax.lax.stop_gradient(outputs["features"]),
      labels=batch["label"], unimodal_logits=jax.lax.stop_gradient(outputs["unimodal_logits"]))


def train_step(state: TrainState, batch: Mapping[str, jnp.ndarray], *, model, tx,
               unimodal_weight: float, lr_fn, probe_cfg: ProbeConfig,
               parts: StepParts | None = None) -> tuple[TrainState, dict]:
  """One optimisation step; returns the new state and scalar metrics.

  Order: forward/backward with the unimodal terms gated by the schedule's
  predicted flags; probe refresh on stop-gradient features (every
  `eval_freq` steps); `tx.update` with this step's signals as extra args.

  parts: the step-side parts of the run's method stack (`parts.hooks`, the
  stack's `Step` records assembled; None: plain joint training):
  - a feature gate between encoders and fusion, a method's own fused loss in
    place of CE(fused), loss terms added to the total, a γ schedule;
  - per_loss_grads: also hand `tx.update` the gradient of every unweighted
    loss (`loss_grads` {"fused" | m: grads}) and the losses (`task_losses`),
    from one forward and 1 + N backward passes; `grads` is then their weighted
    sum (weights 1 and γ·gate_m), the same total as one backward pass. The
    "fused" task is the fused loss plus every loss term.
  - sub_steps: a method that makes its own updates within the step (MLA: one
    per modality); it gets the forward pass, the probe refresh and `tx.update`
    with the usual signals, and returns the new params and states.
  Loss hooks may return metrics (logged) and tx args (handed to `tx.update`).

  A non-finite loss or gradient leaves the state untouched and records the step
  and the culprit in `state.health`; once recorded, every later step is a no-op
  too, so the host can stop with a precise error and nothing corrupt is saved.
  """
  parts = parts or StepParts()
  hooks, task = parts.hooks, parts.task or CLASSIFICATION
  names = model.modality_names
  labels = batch["label"]
  dropout_key = jax.random.fold_in(state.rng, state.step)
  gates = update_gates(state.opt_state, names)
  if hooks.unimodal_weight is not None:
    unimodal_weight = hooks.unimodal_weight(state.step, unimodal_weight)
  ctx = StepContext(model=model, batch=batch, labels=labels, names=names, state=state,
                    dropout_key=dropout_key)
  feature_gate = hooks.feature_gate(ctx) if hooks.feature_gate is not None else None
  mid_fusion_control = (hooks.mid_fusion_control(ctx) if hooks.mid_fusion_control is not None
                        else None)

  def forward(params):
    """Outputs, new batch stats, the fused loss (with the terms) and the hooks' extras."""
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    outputs, new_vars = model.apply(variables, _inputs(batch, names), train=True,
                                    mutable=["batch_stats"], rngs={"dropout": dropout_key},
                                    feature_gate=feature_gate,
                                    mid_fusion_control=mid_fusion_control)
    extras = {}
    fused = None
    if hooks.fused_loss is not None:
      fused, more = hooks.fused_loss(ctx, variables, outputs)
      merge_extras(extras, more)
    return outputs, new_vars.get("batch_stats", {}), fused, extras

  def add_terms(total, params, outputs, extras):
    for term in hooks.loss_term:
      value, more = term(ctx, params, outputs)
      total = total + value
      merge_extras(extras, more)
    return total

  def unimodal_logits(params, outputs):
    if hooks.unimodal_logits is None:
      return outputs["unimodal_logits"]
    return hooks.unimodal_logits(ctx, params, outputs)

  def loss_fn(params):
    outputs, new_batch_stats, fused, extras = forward(params)
    total, fused, unimodal = multimodal_loss(outputs, batch, unimodal_weight, gates, fused,
                                             unimodal_logits(params, outputs), task)
    total = add_terms(total, params, outputs, extras)
    return total, (outputs, new_batch_stats, fused, unimodal, extras)

  extra = {}
  if parts.per_loss_grads:
    def losses_fn(params):
      outputs, new_batch_stats, fused, extras = forward(params)
      if fused is None:
        fused = task.head_loss(outputs["logits"], batch)
      fused = add_terms(fused, params, outputs, extras)
      logits = unimodal_logits(params, outputs)
      losses = jnp.stack([fused] + [task.head_loss(logits[m], batch) for m in names])
      return losses, (outputs, new_batch_stats, extras)

    tasks = (FUSED_TASK,) + tuple(names)
    task_grads, task_losses, (outputs, new_batch_stats, hook_extras) = per_loss_gradients(
        losses_fn, state.params, len(tasks))
    weights = jnp.stack([jnp.float32(1.0)] + [unimodal_weight * gates[m] for m in names])
    loss = jnp.dot(weights, task_losses)
    grads = jax.tree.map(lambda *g: sum(w * x for w, x in zip(weights, g)), *task_grads)
    fused_loss = task_losses[0]
    unimodal = {m: task_losses[1 + i] for i, m in enumerate(names)}
    extra = {"loss_grads": dict(zip(tasks, task_grads)),
             "task_losses": dict(zip(tasks, task_losses)),
             "task_weights": dict(zip(tasks, weights))}
  elif hooks.sub_steps is None:
    (loss, (outputs, new_batch_stats, fused_loss, unimodal, hook_extras)), grads = (
        jax.value_and_grad(loss_fn, has_aux=True)(state.params))

  def refresh_probes(outputs):
    return maybe_refresh(probe_cfg, state.probe_state, state.step, outputs["features"],
                         task.probe_labels(batch))

  def update(grads, opt_state, params, outputs, unimodal, probe_state, grad_norms=None, **more):
    norms = encoder_grad_norms(grads) if grad_norms is None else grad_norms
    return tx.update(grads, opt_state, params,
                     **_tx_args(state.step, outputs, batch, task, probe_state, norms, unimodal),
                     **more)

  if hooks.sub_steps is not None:
    def forward_only(params):
      outputs, new_batch_stats, _, _ = forward(params)
      return outputs, new_batch_stats
    result = hooks.sub_steps(SubStepContext(
        step=ctx, params=state.params, opt_state=state.opt_state, forward=forward_only,
        refresh_probes=refresh_probes, update=update))
    new_params, new_batch_stats, new_opt_state = (result.params, result.batch_stats,
                                                  result.opt_state)
    probe_state, loss, fused_loss, unimodal = (result.probe_state, result.loss,
                                               result.fused_loss, result.unimodal)
    outputs, grads, hook_extras = result.outputs, result.grads, result.extras
    grad_norms = encoder_grad_norms(grads)
  else:
    extra.update(hook_extras.get("tx_args", {}))
    probe_state = refresh_probes(outputs)
    grad_norms = encoder_grad_norms(grads)
    updates, new_opt_state = update(grads, state.opt_state, state.params, outputs, unimodal,
                                    probe_state, grad_norms=grad_norms, **extra)
    new_params = optax.apply_updates(state.params, updates)

  culprit = _first_nonfinite(loss, grads, grad_norms)
  already_bad = state.health[0] >= 0
  keep_old = already_bad | (culprit >= 0)
  pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(keep_old, o, n), new, old)
  health = jnp.where(already_bad, state.health,
                     jnp.where(culprit >= 0, jnp.stack([state.step, culprit]), state.health))
  new_state = state.replace(
      step=state.step + 1,
      params=pick(new_params, state.params),
      batch_stats=pick(new_batch_stats, state.batch_stats),
      opt_state=pick(new_opt_state, state.opt_state),
      probe_state=pick(probe_state, state.probe_state),
      health=health.astype(jnp.int32))

  metrics = {"loss": loss, "fused_loss": fused_loss, "lr": lr_fn(state.step),
             **task.train_metrics(outputs, batch)}
  for m in names:
    metrics[f"unimodal_loss_{m}"] = unimodal[m]
    metrics[f"grad_norm_{m}"] = grad_norms[m]
    metrics[f"probe/acc_{m}"] = probe_state.accuracy[m]
    metrics[f"probe/score_{m}"] = probe_state.score[m]
  metrics["probe/utilization_gap"] = utilization_gap(probe_state.accuracy)
  metrics.update(hook_extras.get("metrics", {}))
  metrics.update(state_signals(new_opt_state, parts.signals))
  return new_state, metrics


def state_signals(opt_state, signals) -> dict:
  """The per-modality signals the transformations keep in their states, for logging."""
  out = {}
  for signal in signals:
    values = optax.tree_utils.tree_get(opt_state, signal.field)
    if values is not None:
      out.update({f"{signal.prefix}_{m}": jnp.asarray(v, jnp.float32) for m, v in values.items()})
  return out


def eval_step(state: TrainState, batch: Mapping[str, jnp.ndarray], *, model,
              probe_cfg: ProbeConfig, eval_logits=None) -> dict:
  """Logits of every head and probe in inference mode (running BatchNorm statistics).

  eval_logits: a method's `(state, batch, outputs) -> outputs` hook when its
  predictions are other logits than the model's heads (MMCosine's cosine
  logits); the probes always read the plain features."""
  variables = state.variables()
  outputs = model.apply(variables, _inputs(batch, model.modality_names), train=False)
  if eval_logits is not None:
    outputs = eval_logits(state, batch, outputs)
  probes = probe_logits(probe_cfg, state.probe_state, outputs["features"])
  return {"logits": outputs["logits"],
          **{f"logits_{m}": z for m, z in outputs["unimodal_logits"].items()},
          **{f"probe_{m}": z for m, z in probes.items()}}
