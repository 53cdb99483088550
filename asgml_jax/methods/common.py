"""What several methods share, so that no method imports another's internals.

- `forward_with_vjp`: one forward pass and the VJP of its features, for the
  methods that make one update per modality within a step (MLA, AUG).
- The held teachers of the two-stage methods (UMT, UME, G2D): the unimodal
  teachers' variables kept in the optimizer state (so a resumed student keeps
  the teachers it began with) and their frozen forward passes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def forward_with_vjp(forward, params):
  """(outputs, batch stats) of one forward pass, and the VJP of the features
  with respect to the parameters."""
  def features(p):
    outputs, new_batch_stats = forward(p)
    return outputs["features"], (outputs, new_batch_stats)
  _, vjp_fn, (outputs, new_batch_stats) = jax.vjp(features, params, has_aux=True)
  return (outputs, new_batch_stats), vjp_fn


# ------------------------------------------------------------------ held teachers

TEACHERS_FIELD = "umt_teachers"


class TeachersState(NamedTuple):
  umt_teachers: dict    # {m: {"params", "batch_stats"}} of modality m's teacher, frozen


def hold_teachers(teachers: dict):
  """Keeps the teachers' variables in the optimizer state; passes updates."""
  def init_fn(params):
    return TeachersState(jax.tree.map(jnp.asarray, teachers))

  def update_fn(updates, state, params=None, **extra):
    return updates, state
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def held_teachers(ctx) -> list:
  """[`hold_teachers`] with every modality's teacher read through `ctx.teachers`
  (best-by-validation checkpoints of the `unimodal_<m>` runs)."""
  if ctx.num_classes is None or ctx.teachers is None:
    raise ValueError("make_optimizer: a stack with unimodal teachers needs num_classes and "
                     "the plan's teachers")
  return [hold_teachers({m: ctx.teachers.load(m) for m in ctx.names})]


def teacher_models(ctx) -> dict:
  """{m: modality m's teacher model}."""
  return {m: ctx.teachers.model(m) for m in ctx.names}


def held_variables(opt_state) -> dict:
  """{m: teacher variables} held in the optimizer state."""
  return optax.tree_utils.tree_get(opt_state, TEACHERS_FIELD)


def _apply_variables(variables: dict) -> dict:
  """A held teacher's variables for `apply` (no empty batch_stats collection)."""
  return {k: v for k, v in variables.items() if k == "params" or v}


def teacher_features(model, variables, batch, modality, mode, key):
  """The teacher's features of `modality` (no gradient); mode "train" runs it
  with BatchNorm batch statistics and dropout (BalanceBenchmark's UMT)."""
  inputs = {modality: batch[modality]}
  variables = _apply_variables(variables)
  if mode == "train":
    out, _ = model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                         rngs={"dropout": key})
  else:
    out = model.apply(variables, inputs, train=False)
  return jax.lax.stop_gradient(out["features"][modality])


def teacher_outputs(model, variables, batch, modality):
  """(features, logits) of the teacher in inference mode, no gradient."""
  out = model.apply(_apply_variables(variables), {modality: batch[modality]}, train=False)
  return (jax.lax.stop_gradient(out["features"][modality]),
          jax.lax.stop_gradient(out["logits"]))


def teacher_logits(model, variables, batch, modality):
  """The teacher's class logits in inference mode."""
  return teacher_outputs(model, variables, batch, modality)[1]
