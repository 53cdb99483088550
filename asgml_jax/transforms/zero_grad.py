"""What PyTorch before 2.0 does to a parameter that has no gradient this step.

`optimizer.zero_grad()` in PyTorch < 2.0 fills every existing `.grad` with
zeros instead of setting it to None (`set_to_none=False` was the default
until 2.0). A parameter that received a gradient once therefore keeps a
zero tensor, and every later `optimizer.step()` applies weight decay and a
momentum step to it, although no loss reached it; from 2.0 on it is skipped.
Methods that step different parameters in different updates (MLA's and
AUG's per-modality turns, ReconBoost's per-modality stages) differ between
the two versions, and their public code pins the older one.

`zeroed_gradient_steps(schedule, scope)` wraps the update schedule
(`transforms/schedule.py`, which skips what the extra args `encoder_mask`
and `shared_keep` leave out) so that a parameter group that was stepped
before is stepped again with a zero gradient:

- scope "batch": since the start of the train step (the reference deletes
  every `.grad` at the end of each batch, `del p.grad`: MLA's `main.py`,
  AUG's `train_CREMAD.py`), so later turns of a batch step the groups of
  earlier turns;
- scope "run": since the start of the run (nothing deletes them:
  BalanceBenchmark's `ReconBoost_trainer.py` under its torch 1.12.1).

Groups are an encoder (all its parameters) and each shared leaf, the
granularity of the masks. The wrapped schedule sees the widened masks and a
zero gradient for each group that is stepped only because it was before.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCOPES = ("batch", "run")
# `optimizer.zero_grad` -> the scope (None: PyTorch >= 2.0, nothing to wrap)
ZERO_GRAD_SCOPES = {"set_to_none": None, "zeros_per_batch": "batch", "zeros": "run"}


class ZeroGradState(NamedTuple):
  zero_grad_inner: Any          # the wrapped schedule's state
  zero_grad_encoders: dict      # {m: bool}: encoder m holds a (zero) gradient
  zero_grad_shared: Any         # bools shaped like the shared parameters
  zero_grad_step: jnp.ndarray   # the train step these flags belong to (scope "batch")


def _shared(tree: dict) -> dict:
  return {k: v for k, v in tree.items() if k != "encoders"}


def zeroed_gradient_steps(schedule: optax.GradientTransformationExtraArgs,
                          scope: str) -> optax.GradientTransformationExtraArgs:
  """`schedule` with PyTorch < 2.0's zero_grad semantics over `scope`."""
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r}; choose one of {SCOPES}")
  schedule = optax.with_extra_args_support(schedule)

  def init_fn(params):
    return ZeroGradState(
        zero_grad_inner=schedule.init(params),
        zero_grad_encoders={m: jnp.bool_(False) for m in params["encoders"]},
        zero_grad_shared=jax.tree.map(lambda _: jnp.bool_(False), _shared(params)),
        zero_grad_step=jnp.asarray(-1, jnp.int32))

  def update_fn(updates, state, params=None, **extra):
    names = sorted(updates["encoders"])
    step = jnp.asarray(extra.get("step", 0), jnp.int32)
    held_enc, held_shared = state.zero_grad_encoders, state.zero_grad_shared
    if scope == "batch":
      fresh = step != state.zero_grad_step
      held_enc = {m: held_enc[m] & ~fresh for m in names}
      held_shared = jax.tree.map(lambda h: h & ~fresh, held_shared)
    has_grad_enc = extra.get("encoder_mask") or {m: jnp.bool_(True) for m in names}
    has_grad_shared = extra.get("shared_keep")
    if has_grad_shared is None:
      has_grad_shared = jax.tree.map(lambda _: jnp.bool_(True), _shared(updates))
    stepped_enc = {m: jnp.asarray(has_grad_enc[m]) | held_enc[m] for m in names}
    stepped_shared = jax.tree.map(lambda g, h: jnp.asarray(g) | h, has_grad_shared, held_shared)
    # a group stepped only because it held a gradient before steps on zeros
    encoders = {m: jax.tree.map(lambda u, g=jnp.asarray(has_grad_enc[m]):
                                jnp.where(g, u, jnp.zeros_like(u)), updates["encoders"][m])
                for m in names}
    shared = jax.tree.map(lambda u, g: jnp.where(g, u, jnp.zeros_like(u)), _shared(updates),
                          has_grad_shared)
    out, inner = schedule.update({**shared, "encoders": encoders}, state.zero_grad_inner, params,
                                 **{**extra, "encoder_mask": stepped_enc,
                                    "shared_keep": stepped_shared})
    return out, ZeroGradState(inner, stepped_enc, stepped_shared, step)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
