"""Composition by config: `method.stack` trains every compatible pair of methods
and refuses every incompatible one in one line; the canonical order of SPEC §4.5.

Every compatible pair trains 2 steps on tiny MLP encoders under `-m slow`; the
default run trains a fixed sample that covers every method at least once.
The refusals are checked for every pair (no compilation).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from asgml_jax import methods, teachers
from asgml_jax.config_schema import ConfigError, effective_config, validate
from asgml_jax.methods import stack as method_stack
from asgml_jax.plan import Plan
from conftest import jitted_step, tiny_mlp_config, two_healthy_steps, with_stack

NAMES = methods.method_names()
PAIRS = list(itertools.combinations(NAMES, 2))


def _conflict(a, b):
  return method_stack.pair_conflict(methods.get(a), methods.get(b))


COMPATIBLE = [p for p in PAIRS if _conflict(*p) is None]
INCOMPATIBLE = [p for p in PAIRS if _conflict(*p) is not None]


def _cover(pairs):
  """A small set of pairs in which every method of `pairs` appears (greedy, deterministic)."""
  left = {m for p in pairs for m in p}
  chosen = []
  while left:
    pair = max(sorted(pairs), key=lambda p: len(set(p) & left))
    chosen.append(pair)
    left -= set(pair)
  return chosen


SAMPLED = _cover(COMPATIBLE) + [("ogm_ge", "boost"), ("boost", "pmr"), ("ogm_ge", "staleness"),
                                ("boost", "inforeg")]


def stack_config(stack: str):
  """The tiny MLP config with `stack`, meeting what its methods require."""
  return with_stack(tiny_mlp_config("/tmp/unused"), stack)


def test_there_are_pairs_of_both_kinds():
  assert len(COMPATIBLE) > 100 and len(INCOMPATIBLE) > 20
  assert ("ogm_ge", "boost") in COMPATIBLE and ("mmpareto", "pcgrad") in INCOMPATIBLE


def _train_pair(pair, tfds_dir, tmp_path):
  config = effective_config(validate(stack_config(",".join(pair))))
  if teachers.needs_teachers(config):      # a two-stage method: its teachers first (1 epoch)
    config.dataset.data_dir = tfds_dir
    config.num_epochs = 1
    config.method.teachers.dir = str(tmp_path / "teachers")
    teachers.ensure(Plan.build(config), [config.seed])
  metrics = two_healthy_steps(config, pair)
  for name in pair:
    method = methods.get(name)
    logged = method.logging
    for prefix in [s.prefix for s in logged.signals] + [p.prefix for p in logged.plots]:
      assert any(k.startswith(prefix + "_") for k in metrics), f"{pair}: {name} logs no {prefix}"


@pytest.mark.parametrize("pair", SAMPLED, ids="+".join)
def test_sampled_compatible_pairs_train_and_log_each_parts_signals(pair, tfds_dir, tmp_path):
  _train_pair(pair, tfds_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("pair", [p for p in COMPATIBLE if p not in SAMPLED], ids="+".join)
def test_every_compatible_pair_trains_and_logs_each_parts_signals(pair, tfds_dir, tmp_path):
  _train_pair(pair, tfds_dir, tmp_path)


@pytest.mark.parametrize("pair", INCOMPATIBLE, ids="+".join)
def test_incompatible_pairs_are_refused_in_one_line_naming_both(pair):
  with pytest.raises(ConfigError) as err:
    validate(stack_config(",".join(pair)))
  message = str(err.value)
  assert "\n" not in message and "cannot stack" in message
  assert pair[0] in message and pair[1] in message


@pytest.mark.parametrize("stack, why", [
    ("mmpareto,dwa", "per-loss gradients"), ("frequency,staleness", "when each encoder updates"),
    ("agm,opm", "fused loss"), ("arl,gblend", "model.unimodal_heads"),
    ("ogm,ogm_ge", "same modulation"), ("unimodal,boost", "no other method")])
def test_refusals_say_why(stack, why):
  with pytest.raises(ConfigError, match=why):
    validate(stack_config(stack))


def test_stack_order_is_canonical_whatever_the_user_writes():
  """SPEC §4.5: chain(OGM-GE, boost, schedule(...)), from any written order."""
  from asgml_jax.transforms.boost import BoostState
  from asgml_jax.transforms.ogm_ge import OGMGEState
  from asgml_jax.transforms.schedule import ModalityScheduleState
  kinds = (OGMGEState, BoostState, ModalityScheduleState)
  for written in ("staleness,boost,ogm_ge", "ogm_ge,staleness,boost"):
    config = validate(stack_config(written))
    assert method_stack.run_label(config) == "ogm_ge+boost+staleness"
    state, _, _ = jitted_step(effective_config(config))
    assert [type(s) for s in state.opt_state if isinstance(s, kinds)] == list(kinds)


def test_named_stack_preset_equals_the_stack_it_names():
  """boost_ogm (a variant) and --config.method.stack=ogm_ge,boost with its alphas
  are the same program: equal states after 2 steps."""
  from configs.variants import apply_variant
  named = apply_variant(stack_config("ogm_ge"), "boost_ogm")
  stacked = stack_config("boost,ogm_ge")
  stacked.method.boost.alpha = named.method.boost.alpha
  stacked.method.ogm.alpha = named.method.ogm.alpha
  results = []
  for config in (named, stacked):
    state, step, batch = jitted_step(effective_config(validate(config)))
    for _ in range(2):
      state, metrics = step(state, batch)
    results.append((state, metrics))
  (s1, m1), (s2, m2) = results
  assert m1.keys() == m2.keys()
  for k in m1:
    np.testing.assert_array_equal(np.asarray(m1[k]), np.asarray(m2[k]), err_msg=k)


def test_stack_names_are_checked():
  with pytest.raises(ConfigError, match=r"unknown method 'bost' \(did you mean 'boost'\?\)"):
    validate(stack_config("ogm_ge,bost"))
  with pytest.raises(ConfigError, match="listed twice"):
    validate(stack_config("boost,boost"))
  config = stack_config("boost")
  config.method.stack = ""
  config.method.name = "boosst"
  with pytest.raises(ConfigError, match="config.method.name: unknown value 'boosst'"):
    validate(config)


def test_a_stacked_run_records_its_stack_and_label(tmp_path, tfds_dir):
  """Epoch hooks of two methods (PMR's prototypes, MILES's learning rates) both
  run; config.json and summary.json record the stack."""
  import json

  from asgml_jax import train
  config = stack_config("miles,pmr,boost")
  config.dataset.data_dir = tfds_dir
  config.num_epochs = 1
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["stack"] == ["pmr", "boost", "miles"]
  assert summary["label"] == "pmr+boost+miles" and "error" not in summary
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["method"]["stack"] == "miles,pmr,boost"


def test_a_label_names_an_ablation_arm_apart():
  config = stack_config("ogm_ge")
  assert method_stack.run_label(config) == "ogm_ge"
  config.label = "ogm_ge_conv"
  assert method_stack.run_label(validate(config)) == "ogm_ge_conv"
  config.label = "a/b"
  with pytest.raises(ConfigError, match="config.label: must be a name usable as a directory"):
    validate(config)
