"""Nothing changed numerically in the redesigns: every recorded variant's golden steps.

`tests/golden/variant_steps_tiny.json` (the default suite: MLP encoders) and
`tests/golden/variant_steps.json` (`-m slow`: the default config's CNNs) were
recorded by `tests/golden_steps.py` on the code before the one-plan redesign
(the latter before the method-modules refactor): for every variant (and
unimodal_audio), 4 train steps, the step metrics and per-leaf sums of the
params, batch statistics, optimizer state and probe state. Each must be
reproduced: the same leaves at the same paths (so checkpoints written before
restore), the same values to a stated tolerance.

Tolerance: float32 sums are reassociated differently by other CPU code paths
(AVX2 instead of AVX-512) and by other LLVM optimisation levels (the suite
compiles at level 0, `conftest.py`). On this project's CPU every value
reproduced bit for bit at the default level; the largest deviations seen
were 6.7e-7 relative under `--xla_cpu_max_isa=AVX2` and 1.8e-6 at level 0
(InfoReg's β, a ratio of gradient norms). The test allows ten times that:
each metric within 2e-5·|value| + 1e-6, each leaf's sum and absolute sum
within 2e-5 of the leaf's absolute sum (+ 1e-7). A changed formula moves
values by far more (an edited constant or a dropped term: 1e-3 and up).

The default config's records are computed in a process of their own at
XLA's default level: its CNNs with BatchNorm at level 0 *and* AVX2 drift
over the 4 steps by up to 1.3e-3 of a leaf (staleness_seedcode's stale
BatchNorm gradients), while at the default level under AVX2 every value
stays within 0.006 of the tolerance.

These records also carry the variants' health and signal checks
(`variant_record` is shared by test_baselines.py: one compiled program per
variant serves all three).
"""

import json
import subprocess
import sys

import pytest

import golden_steps
from conftest import ROOT, full_optimisation_env, variant_record

RTOL, ATOL, LEAF_ATOL = 2e-5, 1e-6, 1e-7


def _golden(size: str) -> dict:
  with open(golden_steps.GOLDEN_FILES[size]) as f:
    return json.load(f)


def assert_reproduces(variant: str, got: dict, want: dict) -> None:
  for t, (g, w) in enumerate(zip(got["metrics"], want["metrics"])):
    assert sorted(g) == sorted(w), f"{variant} step {t}: metric names differ"
    for key in w:
      assert abs(g[key] - w[key]) <= RTOL * abs(w[key]) + ATOL, (
          f"{variant} step {t} {key}: {g[key]!r} != {w[key]!r}")
  for tree in ("params", "batch_stats", "opt_state", "probe_state"):
    assert [x[:3] for x in got[tree]] == [x[:3] for x in want[tree]], f"{tree}: leaves differ"
    for g, w in zip(got[tree], want[tree]):
      bound = RTOL * w[4] + LEAF_ATOL
      assert abs(g[3] - w[3]) <= bound and abs(g[4] - w[4]) <= bound, (
          f"{variant} {tree} {w[0]}: sums {g[3:]} != {w[3:]}")


def test_the_golden_files_cover_every_recorded_variant():
  for size in golden_steps.GOLDEN_FILES:
    assert sorted(_golden(size)) == sorted(golden_steps.golden_variants()), size
  from configs.variants import VARIANTS
  assert set(golden_steps.golden_variants()) - {"unimodal_audio"} <= set(VARIANTS)


@pytest.mark.parametrize("variant", golden_steps.golden_variants())
def test_variant_reproduces_its_golden_steps(variant):
  assert_reproduces(variant, variant_record(variant), _golden("tiny")[variant])


@pytest.mark.slow
def test_every_variant_reproduces_its_golden_steps_on_the_default_config(tmp_path):
  """All variants' records from one process at XLA's default level (see above)."""
  out = tmp_path / "records.json"
  done = subprocess.run([sys.executable, golden_steps.__file__, "--size", "default",
                         "--out", str(out)], cwd=ROOT, env=full_optimisation_env(),
                        capture_output=True, text=True, timeout=3600)
  assert done.returncode == 0, done.stderr[-3000:]
  got, want = json.loads(out.read_text()), _golden("default")
  assert sorted(got) == sorted(want)
  failures = []
  for variant in want:
    try:
      assert_reproduces(variant, got[variant], want[variant])
    except AssertionError as e:
      failures.append(str(e))
  assert not failures, "\n".join(failures)


def test_the_tolerance_catches_a_changed_value():
  """A metric 0.1 % off, or a leaf's sum off by 0.1 % of its size, fails the check."""
  import copy
  want = _golden("tiny")["ogm_ge"]
  got = copy.deepcopy(want)
  got["metrics"][2]["ogm/coeff_audio"] *= 1.001
  with pytest.raises(AssertionError, match="ogm/coeff_audio"):
    assert_reproduces("ogm_ge", got, want)
  got = copy.deepcopy(want)
  got["params"][0][3] += 1e-3 * want["params"][0][4]
  with pytest.raises(AssertionError, match="sums"):
    assert_reproduces("ogm_ge", got, want)
