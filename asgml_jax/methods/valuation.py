"""Modality valuation and re-sampling (Wei, Feng, Sun & Hu, "Enhancing
multimodal cooperation via sample-level modality valuation", CVPR 2024).

Before each epoch from `start_epoch` on, every training example's modality
contributions are valued on the current model (inference mode) as Shapley
values of the "prediction is right" game over the modalities, an absent
modality's features set to zero before the fusion:

    v(S) = 1[argmax fused(features of S, others 0) = y],  v(∅) = 0,  v(M) · w
    φ_m = Σ_{S ⊆ M∖{m}} |S|!(N−|S|−1)!/N! · (v(S ∪ {m}) − v(S))

and the epoch's training rows are re-sampled so that low-contribution
modalities get extra training on their own: an extra copy of an example
"keeps only m" (the other modalities' features are zeroed, the fused CE is
trained on it).

- `level=sample` (sample_level.py): for each example and modality, copies by
  φ_m: 1 for 0.4 < φ_m < 1, 2 for −0.1 < φ_m < 0.4, 3 for φ_m < −0.1.
- `level=modality` (modality_level.py): from the mean φ_m over `part_ratio`
  of the rows (drawn with replacement), gap_m = 1 − mean φ_m; d = 2/3 · α ·
  Σ_{m<m'} |gap_m − gap_m'| / (N − 1); int(d·L) rows drawn with replacement
  each get one copy keeping only the modality with the largest gap.

The loss is CE(fused) alone (γ = 0, both references).

**Epoch length** (`epoch_length`). The references train each epoch on the
whole re-sampled set, L originals + E copies (sample_level.py:141-151 builds a
new DataLoader over it, :164 iterates all of it), so the number of steps
changes every epoch:
- `pool` (what `method.protocol=reference` sets): the same, each entry of the
  pool once per epoch in random order, the last partial batch dropped (as
  every epoch here). The loop's epoch is then max_rows // batch_size steps,
  max_rows the largest pool the level can build (sample level L·(1 + 3N);
  modality level L·(1 + d_max), d_max = 2/3·α·N/2·(1 + max(1, v(all))), the
  largest d its gaps allow), and the steps past this epoch's pool are skipped
  (not dispatched; the learning-rate schedule and checkpoints still count
  whole epochs). Before `start_epoch` an epoch is the L originals.
- `fixed` (the default): an epoch is the usual L // batch_size steps, drawn
  without replacement from that (L + E)-entry pool: the mix of originals and
  copies is the reference's in expectation at the training set's epoch
  length, so a run's step count and its comparison with other methods at
  equal steps do not depend on the contributions.
The draw is a function of (seed, epoch), kept in the optimizer state, so a
resumed run and a sweep's seeds see what an uninterrupted run would.

Reference: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, code/
sample_level.py (`execute_modulation`: contributions after each epoch from
`warmup − 1` on), code/modality_level.py, code/datasets/dataloader.py
(`AV_KS_Dataset_sample_level`, `_modality_level`: the copies and their
`drop`), code/models/models.py (`drop`, `exec_drop`: the absent modality's
features are zeroed); BalanceBenchmark balancemm/trainer/Sample_trainer.py,
balancemm/evaluation/modalitys.py (`Calculate_Shapley_Sample`: the N-modality
Shapley value) and balancemm/datasets/__init__.py. Where they differ:
- The paper's code scores the full coalition 2 instead of 1 (`value_all =
  2.0`), so its φ lies in [−0.5, 1.5]: `full_weight=2` (what
  `method.protocol=reference` sets); BalanceBenchmark uses 1 (the default).
- BalanceBenchmark cannot run as written: `Calculate_Shapley_Sample` reads
  `model.pridiction` (no such attribute), and its result cache is never
  cleared between batches, so every batch would reuse the first batch's
  predictions. It zeroes absent modalities' *inputs*; the paper's code (and
  this module) their features.
- Modality level: the paper's code adds one copy per drawn row (dropping
  the stronger modality), BalanceBenchmark one per modality per drawn row,
  and its d counts each pair twice; here the paper's rule, extended to N as
  "keep only the modality with the largest gap" with the pairs counted once.
- Level: BalanceBenchmark's trainer config (configs/trainer_config.yaml,
  `Sample: method: 'Modality-level'`) selects the modality level; the
  default here is the sample level, the paper's titular method and its
  code's `sample_level.py`; `level=modality` is BalanceBenchmark's choice.
`start_epoch` (BalanceBenchmark's `modulation_starts` = 1; the paper's
`warmup` = 5 of 60 epochs) is the first epoch trained on re-sampled rows.
N modalities: Shapley over all subsets (2^N inference passes of the fusion).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from asgml_jax import augment
from asgml_jax import config_checks as cc
from asgml_jax.methods.base import (PAD_ENTRY, ROW_CODE, Epoch, Logging, Method, Optax,
                                    Protocols, ReferenceOptimizer, Settings, Signal, Step,
                                    steplr_milestones)

LEVELS = ("sample", "modality")
EPOCH_LENGTHS = ("fixed", "pool")
_DRAW_SALT = 0x5A3D


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      level="sample",       # sample | modality
      start_epoch=1,        # first re-sampled epoch (0-based)
      full_weight=1.0,      # v(all modalities): 1 (Shapley, BalanceBenchmark) | 2 (paper's code)
      alpha=1.0,            # modality level: scale of the re-sampled share d
      part_ratio=0.2,       # modality level: share of rows the mean contributions come from
      # fixed: epochs of the training set's length drawn from the pool | pool:
      # each epoch trains the whole re-sampled pool (the references)
      epoch_length="fixed",
  ))


def check_block(config) -> None:
  v = config.method.valuation
  cc.one_of(v.level, LEVELS, "method.valuation.level")
  cc.one_of(v.epoch_length, EPOCH_LENGTHS, "method.valuation.epoch_length")
  cc.require(isinstance(v.start_epoch, int) and v.start_epoch >= 0,
             "method.valuation.start_epoch", f"must be an integer >= 0, got {v.start_epoch!r}")
  cc.positive(config, "method.valuation.full_weight")
  cc.positive(config, "method.valuation.alpha")
  cc.in_range(config, "method.valuation.part_ratio", 0, 1)


def check(config) -> None:
  cc.require(len(cc.modality_names(config)) >= 2, "modalities",
             "valuation values each modality against the others: it needs at least 2")


def preset(config) -> None:
  config.loss.unimodal_weight = 0.0


# ------------------------------------------------------------------ the values


def shapley_values(correct: dict, names, full_weight: float = 1.0) -> dict:
  """{m: φ_m (L,)} from correct[frozenset S] = (L,) 0/1 for every non-empty S."""
  n = len(names)
  def value(subset):
    if not subset:
      return 0.0
    v = np.asarray(correct[frozenset(subset)], np.float64)
    return v * full_weight if len(subset) == n else v
  out = {}
  for m in names:
    others = [x for x in names if x != m]
    phi = np.zeros(len(correct[frozenset(names)]), np.float64)
    for size in range(n):
      weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
      for subset in combinations(others, size):
        phi = phi + weight * (value(subset + (m,)) - value(subset))
    out[m] = phi
  return out


def sample_copies(phi) -> np.ndarray:
  """Extra copies per example for one modality's φ (sample level)."""
  phi = np.asarray(phi)
  return np.where((phi > 0.4) & (phi < 1.0), 1,
                  np.where((phi > -0.1) & (phi < 0.4), 2, np.where(phi < -0.1, 3, 0)))


def modality_share(phi: dict, names, alpha: float, part_ratio: float, rng) -> tuple:
  """(d, the weakest modality) of the modality level."""
  length = len(phi[names[0]])
  num = int(length * part_ratio)
  choice = rng.choice(length, num)
  mean = {m: float(np.mean(phi[m][choice])) for m in names}
  gap = {m: 1.0 - mean[m] for m in names}
  d = sum(abs(gap[a] - gap[b]) for a, b in combinations(names, 2)) / (len(names) - 1)
  return d / 3 * 2 * alpha, max(names, key=lambda m: gap[m])


def pool(phi: dict, names, level: str, alpha: float, part_ratio: float, rng) -> np.ndarray:
  """The re-sampled training set as coded rows: row + L·code, code 0 = every
  modality kept, 1 + i = only names[i] kept (the originals first)."""
  length = len(phi[names[0]])
  rows = [np.arange(length)]
  if level == "sample":
    for i, m in enumerate(names):
      copies = sample_copies(phi[m])
      rows.append(np.repeat(np.arange(length), copies) + length * (1 + i))
  else:
    d, weakest = modality_share(phi, names, alpha, part_ratio, rng)
    drawn = rng.choice(length, int(d * length))
    rows.append(drawn + length * (1 + names.index(weakest)))
  return np.concatenate(rows).astype(np.int64)


def epoch_draw(coded_pool: np.ndarray, size: int, rng) -> np.ndarray:
  """`size` entries of the pool without replacement, in random order."""
  return rng.permutation(coded_pool)[:size]


def max_rows(config, num_train: int) -> int:
  """The most entries one epoch holds: the training set for `fixed`; for
  `pool` the largest pool the level can build (see the module docstring)."""
  v = config.method.valuation
  if v.epoch_length == "fixed":
    return num_train
  n = len(cc.modality_names(config))
  if v.level == "sample":
    return num_train * (1 + 3 * n)
  d_max = 2 / 3 * v.alpha * n / 2 * (1 + max(1.0, v.full_weight))
  return num_train + int(d_max * num_train)


def whole_pool_order(coded_pool: np.ndarray, size: int, batch_size: int, rng) -> np.ndarray:
  """The pool in random order, cut to whole batches, then padding entries up to
  `size` (the loop skips their batches)."""
  order = rng.permutation(coded_pool)[:size]
  order = order[:len(order) // batch_size * batch_size]
  return np.concatenate([order, np.full(size - len(order), PAD_ENTRY, order.dtype)])


# ------------------------------------------------------------------ state and step


class ValuationState(NamedTuple):
  valuation_order: jnp.ndarray     # (steps_per_epoch · batch,) coded rows of the epoch
  valuation_active: jnp.ndarray    # 1.0 once the order is the re-sampled one
  valuation_contribution: dict     # {m: mean φ_m over the training set}
  valuation_extra: dict            # {m: share of the epoch's rows keeping only m}


def keep_order(size: int):
  """Holds the epoch order the hook chose (the step leaves it alone)."""
  def init_fn(params):
    zero = {m: jnp.float32(0.0) for m in sorted(params["encoders"])}
    return ValuationState(jnp.zeros((size,), jnp.int32), jnp.float32(0.0), dict(zero),
                          dict(zero))

  def update_fn(updates, state, params=None, **extra):
    return updates, state
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transform(ctx):
  return [keep_order(ctx.steps_per_epoch * ctx.config.batch_size)]


def keep_masks(codes, names) -> dict:
  """{m: (B,) 1.0 where the row keeps modality m} from the batch's row codes."""
  return {m: ((codes == 0) | (codes == 1 + i)).astype(jnp.float32) for i, m in enumerate(names)}


def feature_gate(ctx):
  """Zeroes the features of the modalities a re-sampled copy leaves out."""
  names = ctx.names

  def gate_for(step_ctx):
    codes = step_ctx.batch.get(ROW_CODE)

    def gate(features, unimodal_logits):
      if codes is None:
        return features, None
      keep = keep_masks(codes, names)
      return {m: features[m] * keep[m][:, None].astype(features[m].dtype) for m in names}, None
    return gate
  return gate_for


class Valuation:
  """The epoch hook: value the training set, re-sample the next epoch."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.block = ctx.config.method.valuation
    self.names = tuple(ctx.names)
    self.size = ctx.steps_per_epoch * ctx.config.batch_size
    self.correct_fn = _make_correct_fn(ctx.model, ctx.frame_sizes)

  def correct(self, variables) -> dict:
    """{frozenset S: (L,) 0/1} for every non-empty S, over the training set in order."""
    data, names = self.ctx.data, self.names
    subsets = [s for k in range(1, len(names) + 1) for s in combinations(names, k)]
    out = {frozenset(s): [] for s in subsets}
    for rows, keep in self.ctx.fixed_size_batches(data.train, data.num_train,
                                                  self.ctx.eval_batch_size):
      for s in subsets:
        mask = jnp.asarray([float(m in s) for m in names], jnp.float32)
        out[frozenset(s)].append(np.asarray(self.correct_fn(variables, rows, mask))[:keep])
    return {k: np.concatenate(v) for k, v in out.items()}

  def prepare(self, state, data_key) -> dict:
    """start_epoch 0: the first epoch is re-sampled too (valued on the initial model)."""
    return self._resample(state, data_key, 0) if self.block.start_epoch == 0 else {}

  def epoch_end(self, state, validation, data_key, next_epoch: int) -> dict:
    # (also after the last epoch: a longer rerun resumes from that state)
    if next_epoch < self.block.start_epoch:
      return {}
    return self._resample(state, data_key, next_epoch)

  def _resample(self, state, data_key, next_epoch: int) -> dict:
    b, names = self.block, self.names
    phi = shapley_values(self.correct(state.variables()), names, b.full_weight)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(
        jax.random.fold_in(jax.random.fold_in(data_key, _DRAW_SALT), next_epoch))).ravel())
    coded = pool(phi, names, b.level, b.alpha, b.part_ratio, rng)
    if b.epoch_length == "pool":
      order = whole_pool_order(coded, self.size, self.ctx.config.batch_size, rng)
    else:
      order = epoch_draw(coded, self.size, rng)
    length = self.ctx.data.num_train
    real = order[order >= 0]
    codes = real // length
    extra = {m: float(np.mean(codes == 1 + i)) for i, m in enumerate(names)}
    mean = {m: float(np.mean(phi[m])) for m in names}
    self.ctx.log(f"valuation before epoch {next_epoch + 1}: contribution "
                 + ", ".join(f"{m} {mean[m]:.3f}" for m in names)
                 + f"; pool {len(coded)} rows ({len(coded) - length} copies), epoch of "
                 f"{len(real)}: " + ", ".join(f"{100 * extra[m]:.0f}% {m}-only" for m in names))
    f32 = lambda d: {m: np.float32(v) for m, v in d.items()}
    return {"valuation_order": order.astype(np.int32), "valuation_active": np.float32(1.0),
            "valuation_contribution": f32(mean), "valuation_extra": f32(extra)}

  def epoch_rows(self, state, perm):
    """This epoch's order: the re-sampled one once active, else the pipeline's
    permutation cut to the epoch's length (the same shape either way; for
    `pool`, the training set then padding)."""
    if float(optax.tree_utils.tree_get(state.opt_state, "valuation_active")) > 0:
      return optax.tree_utils.tree_get(state.opt_state, "valuation_order")
    if len(perm) >= self.size:
      return perm[:self.size]
    batch = self.ctx.config.batch_size
    real = np.asarray(perm)[:len(perm) // batch * batch]
    padded = np.concatenate([real, np.full(self.size - len(real), PAD_ENTRY, real.dtype)])
    return padded if isinstance(perm, np.ndarray) else jnp.asarray(padded)


def _make_correct_fn(model, frame_sizes):
  """Jitted (variables, batch, keep (N,)) -> (B,) 1.0 where the fused prediction
  with the features of the modalities not kept set to zero is right."""
  names = model.modality_names

  def correct(variables, batch, keep):
    if frame_sizes:
      batch = augment.eval_inputs(batch, frame_sizes)
    def gate(features, unimodal_logits):
      return {m: features[m] * keep[i].astype(features[m].dtype) for i, m in enumerate(names)}, None
    out = model.apply(variables, {m: batch[m] for m in names}, train=False, feature_gate=gate)
    return (jnp.argmax(out["logits"], -1) == batch["label"]).astype(jnp.float32)
  return jax.jit(correct)


# GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation code/sample_level.py:41-58 (batch
# 64, 60 epochs, adam, lr 5e-5, StepLR(30, 0.1)), :287-294 (Adam betas (0.9, 0.999), eps
# 1e-8, weight decay 1e-4), :296-298, :340 (stepped after each epoch); modality_level.py
# :47-62, :312-323 the same. Both train Kinetics-Sounds only (--dataset KineticSound).
OPTIMIZERS = {"kinetics_sounds": ReferenceOptimizer(
    source="GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation code/sample_level.py:"
           "41-58,287-298,340",
    kind="adam", learning_rate=5e-5, weight_decay=1e-4, num_epochs=60, batch_size=64,
    lr_milestones=steplr_milestones(30, 0.1, 60))}


VALUATION = Method(
    name="valuation",
    summary="Valuation: per-example Shapley contributions of the modalities; low-contribution "
            "modalities get extra examples with the others zeroed",
    settings=Settings(block="valuation", defaults=defaults, check_block=check_block, check=check,
                      preset=preset),
    protocols=Protocols(
        optimizers=OPTIMIZERS,
        reference=(("loss.unimodal_weight", 0.0), ("method.valuation.full_weight", 2.0),
                   ("method.valuation.epoch_length", "pool"))),
    optax=Optax(stage="post", transform=transform),
    step=Step(feature_gate=feature_gate),
    epoch=Epoch(hook=Valuation, resamples=True, max_rows=max_rows),
    logging=Logging(signals=(Signal("valuation_contribution", "valuation/contribution",
                                    "Valuation: mean Shapley contribution"),
                             Signal("valuation_extra", "valuation/extra",
                                    "Valuation: share of rows with only it"))))
