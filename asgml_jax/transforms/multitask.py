"""The multi-task baselines (PCGrad, DWA, GradNorm) as optax transformations.

The tasks are the model's losses (docs/methods.md, model and loss): the fused CE and each modality's
unimodal CE, in the order ("fused", *modalities). Each transformation
replaces the incoming summed gradient by its own combination of the per-task
gradients (`loss_grads`, unweighted) that `steps.train_step` computes with
`per_loss_grads=True`; everything after it (weight decay, momentum, lr) is
the run's base optimizer. Formulas: docs/methods.md, the baselines,
from the papers.

- PCGrad (Yu et al., 2020): g_i' = g_i, then for j ≠ i in a random order,
  if g_i'·g_j < 0: g_i' −= (g_i'·g_j)/‖g_j‖²·g_j (against the *original*
  g_j, as the paper's code does); update Σ_i g_i'. Task i's gradient is
  `task_weights[i]`·∇L_i, the weights of the run's loss (1 and γ).
- DWA (Liu et al., 2019): w_k = K·softmax_k(r_k / T), r_k = L̄_k(e−1) / L̄_k(e−2)
  on epoch-mean losses, w = 1 for the first two epochs; update Σ_k w_k ∇L_k.
- GradNorm (Chen et al., 2018): G_i = w_i‖∇_W L_i‖ on the layer W every task
  shares; r_i = (L_i/L_i(0)) / mean_j(L_j/L_j(0)); L_grad = Σ_i |G_i − Ḡ·r_i^α|
  with the target held constant, so ∂L_grad/∂w_i = sign(G_i − Ḡ r_i^α)·‖∇_W L_i‖;
  w ← w − lr_w·∂, then renormalised to Σ w = K. The step's update uses the
  weights before this change. Guard (not in the paper): weights are floored
  at 1e-3 before the renormalisation, so a large lr_w cannot flip a task's sign.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from asgml_jax.losses import FUSED_TASK


def task_names(params) -> tuple[str, ...]:
  return (FUSED_TASK,) + tuple(sorted(params["encoders"]))


def _weighted_sum(loss_grads: dict, tasks: Sequence[str], weights: jnp.ndarray, like):
  out = jax.tree.map(lambda *g: sum(w * x.astype(jnp.float32) for w, x in zip(weights, g)),
                     *[loss_grads[t] for t in tasks])
  return jax.tree.map(lambda o, x: o.astype(x.dtype), out, like)


# ---------------------------------------------------------------- PCGrad

class PCGradState(NamedTuple):
  key: jnp.ndarray
  conflicts: dict   # per task: how many of the others it was projected off, last step


def project_conflicting(flat_grads: jnp.ndarray, orders: jnp.ndarray) -> tuple[jnp.ndarray,
                                                                               jnp.ndarray]:
  """PCGrad on (T, P) task gradients; orders[i] lists the other tasks in the
  order task i is projected against them. Returns ((T, P) projected, (T,) conflicts)."""
  num_tasks = flat_grads.shape[0]
  sq_norms = jnp.sum(jnp.square(flat_grads), axis=1)
  projected, conflicts = [], []
  for i in range(num_tasks):
    g = flat_grads[i]
    count = jnp.zeros((), jnp.int32)
    for position in range(num_tasks - 1):
      j = orders[i, position]
      g_j = flat_grads[j]
      dot = jnp.vdot(g, g_j)
      conflict = (dot < 0) & (sq_norms[j] > 0)
      g = jnp.where(conflict, g - dot / jnp.where(sq_norms[j] > 0, sq_norms[j], 1.0) * g_j, g)
      count = count + conflict.astype(jnp.int32)
    projected.append(g)
    conflicts.append(count)
  return jnp.stack(projected), jnp.stack(conflicts)


def random_orders(key: jnp.ndarray, num_tasks: int) -> jnp.ndarray:
  """(T, T−1): for each task i, the other tasks in a random order."""
  rows = []
  for i in range(num_tasks):
    others = jnp.array([j for j in range(num_tasks) if j != i], jnp.int32)
    rows.append(jax.random.permutation(jax.random.fold_in(key, i), others))
  return jnp.stack(rows)


def pcgrad(seed: int = 0) -> optax.GradientTransformationExtraArgs:
  def init_fn(params):
    return PCGradState(key=jax.random.PRNGKey(seed),
                       conflicts={t: jnp.zeros((), jnp.float32) for t in task_names(params)})

  def update_fn(updates, state, params=None, *, loss_grads, task_weights, **extra_args):
    del params, extra_args
    tasks = task_names(updates)
    flats, unravels = zip(*[ravel_pytree(jax.tree.map(lambda x: x.astype(jnp.float32),
                                                      loss_grads[t])) for t in tasks])
    weights = jnp.stack([task_weights[t] for t in tasks]).astype(jnp.float32)
    key, order_key = jax.random.split(state.key)
    projected, conflicts = project_conflicting(weights[:, None] * jnp.stack(flats),
                                               random_orders(order_key, len(tasks)))
    total = unravels[0](projected.sum(axis=0))
    total = jax.tree.map(lambda o, x: o.astype(x.dtype), total, updates)
    return total, PCGradState(key, {t: conflicts[i].astype(jnp.float32)
                                    for i, t in enumerate(tasks)})

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------- DWA

class DWAState(NamedTuple):
  epoch: jnp.ndarray        # int32, the epoch being accumulated
  loss_sum: jnp.ndarray     # (K,) sum of this epoch's losses
  count: jnp.ndarray        # steps in it
  last: jnp.ndarray         # (K,) mean losses of epoch e−1
  before_last: jnp.ndarray  # (K,) of epoch e−2
  task_weights: dict        # this step's w_k, for logging


def dwa_weights(last: jnp.ndarray, before_last: jnp.ndarray, epoch, temperature: float):
  """K·softmax(r/T) with r = L̄(e−1)/L̄(e−2); ones while epoch < 2."""
  ratios = last / jnp.where(before_last > 0, before_last, 1.0)
  weights = last.shape[0] * jax.nn.softmax(ratios / temperature)
  return jnp.where(epoch >= 2, weights, jnp.ones_like(weights))


def dwa(steps_per_epoch: int, temperature: float = 2.0) -> optax.GradientTransformationExtraArgs:
  def init_fn(params):
    k = len(task_names(params))
    zeros = jnp.zeros((k,), jnp.float32)
    return DWAState(epoch=jnp.zeros((), jnp.int32), loss_sum=zeros,
                    count=jnp.zeros((), jnp.int32), last=zeros, before_last=zeros,
                    task_weights={t: jnp.ones((), jnp.float32) for t in task_names(params)})

  def update_fn(updates, state, params=None, *, loss_grads, task_losses, step, **extra_args):
    del params, extra_args
    tasks = task_names(updates)
    epoch = (step // steps_per_epoch).astype(jnp.int32)
    new_epoch = epoch != state.epoch
    # Entering a new epoch: the finished epoch's mean becomes L̄(e−1).
    finished = state.loss_sum / jnp.maximum(state.count, 1)
    last = jnp.where(new_epoch, finished, state.last)
    before_last = jnp.where(new_epoch, state.last, state.before_last)
    loss_sum = jnp.where(new_epoch, 0.0, state.loss_sum)
    count = jnp.where(new_epoch, 0, state.count)
    weights = dwa_weights(last, before_last, epoch, temperature)
    losses = jnp.stack([task_losses[t] for t in tasks]).astype(jnp.float32)
    new_state = DWAState(epoch=epoch, loss_sum=loss_sum + losses, count=count + 1, last=last,
                         before_last=before_last,
                         task_weights={t: weights[i] for i, t in enumerate(tasks)})
    return _weighted_sum(loss_grads, tasks, weights, updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------- GradNorm

class GradNormState(NamedTuple):
  weights: jnp.ndarray        # (K,) w_i, Σ = K
  initial_losses: jnp.ndarray  # (K,) L_i(0); zeros until the first step records them
  started: jnp.ndarray         # bool
  task_weights: dict           # the weights this step used, for logging


def gradnorm_weight_step(weights, layer_grad_norms, losses, initial_losses, alpha: float,
                         lr: float):
  """One GradNorm update of the task weights (see the module docstring)."""
  num = weights.shape[0]
  g = weights * layer_grad_norms
  rates = losses / jnp.maximum(initial_losses, 1e-12)
  inverse_rate = rates / jnp.mean(rates)
  target = jnp.mean(g) * inverse_rate ** alpha
  grad_w = jnp.sign(g - target) * layer_grad_norms
  new = jnp.maximum(weights - lr * grad_w, 1e-3)
  return new * num / new.sum()


def gradnorm(alpha: float = 1.5, lr: float = 0.025,
             layer: str = "fusion") -> optax.GradientTransformationExtraArgs:
  """layer: the params subtree every task's gradient reaches ("fusion" with
  split unimodal heads; "encoders" where the heads are separate)."""

  def init_fn(params):
    k = len(task_names(params))
    return GradNormState(weights=jnp.ones((k,), jnp.float32),
                         initial_losses=jnp.ones((k,), jnp.float32),
                         started=jnp.zeros((), bool),
                         task_weights={t: jnp.ones((), jnp.float32) for t in task_names(params)})

  def update_fn(updates, state, params=None, *, loss_grads, task_losses, **extra_args):
    del params, extra_args
    tasks = task_names(updates)
    losses = jnp.stack([task_losses[t] for t in tasks]).astype(jnp.float32)
    initial = jnp.where(state.started, state.initial_losses, losses)
    norms = jnp.stack([optax.global_norm(loss_grads[t][layer]) for t in tasks])
    total = _weighted_sum(loss_grads, tasks, state.weights, updates)
    new_weights = gradnorm_weight_step(state.weights, norms, losses, initial, alpha, lr)
    return total, GradNormState(weights=new_weights, initial_losses=initial,
                                started=jnp.ones((), bool),
                                task_weights={t: state.weights[i] for i, t in enumerate(tasks)})

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
