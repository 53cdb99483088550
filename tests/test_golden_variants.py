"""Nothing changed numerically when the methods became modules.

`tests/golden/variant_steps.json` was recorded by `tests/golden_steps.py` on
the code before the method-modules refactor: for every variant (and
unimodal_audio), 4 train steps of the default config, the step metrics and
per-leaf checksums of the params, batch statistics, optimizer state and probe
state. Each must be reproduced: the same leaves at the same paths (so
checkpoints written before restore), the same values.

Exact: on the CPU every variant reproduced the file bit for bit after the
refactor (the file was recorded twice on the old code, once from a clean
checkout, and compared byte for byte).
"""

import json
import numpy as np
import pytest

import golden_steps

with open(golden_steps.GOLDEN_FILE) as f:
  GOLDEN = json.load(f)


def test_the_golden_file_covers_every_recorded_variant():
  assert sorted(GOLDEN) == sorted(golden_steps.golden_variants())
  from configs.variants import VARIANTS
  assert set(golden_steps.golden_variants()) - {"unimodal_audio"} <= set(VARIANTS)


@pytest.mark.parametrize("variant", golden_steps.golden_variants())
def test_variant_reproduces_its_golden_steps(variant):
  got = golden_steps.record(variant)
  want = GOLDEN[variant]
  for t, (g, w) in enumerate(zip(got["metrics"], want["metrics"])):
    assert sorted(g) == sorted(w), f"step {t}: metric names differ"
    for key in w:
      assert g[key] == w[key], f"{variant} step {t} {key}: {g[key]!r} != {w[key]!r}"
  for tree in ("params", "batch_stats", "opt_state", "probe_state"):
    assert [x[:3] for x in got[tree]] == [x[:3] for x in want[tree]], f"{tree}: leaves differ"
    np.testing.assert_array_equal(np.array([x[3:] for x in got[tree]]),
                                  np.array([x[3:] for x in want[tree]]).reshape(-1, 2),
                                  err_msg=f"{variant} {tree}")
