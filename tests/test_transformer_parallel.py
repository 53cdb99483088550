"""vit / ast / transformer encoders with the batch sharded over 4 CPU devices.

Same check as tests/test_parallel.py, on the Transformer encoders (their
LayerNorms and attention have no cross-example statistics, so a sharded step
is the one-device step up to the all-reduce's summation order): one epoch
with `data_parallel=auto` on 4 devices and with `off` end at the same
parameters (|a − b| <= 1e-5 + 1e-4·|b|) and metrics (within one example).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = r'''
import json, os, sys, tempfile
sys.path.insert(0, os.path.join(sys.argv[1], "tests")); sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from test_transformer_encoders import _tiny_transformers
from asgml_jax import checkpointing, train

def latest(workdir, like):
  m = checkpointing._manager(os.path.join(workdir, checkpointing.LATEST_DIR), 5, read_only=True)
  try:
    return checkpointing.restore(m, like)[0]
  finally:
    m.close()

runs = {}
for mode in ("auto", "off"):
  c, d = _tiny_transformers(sys.argv[2]), tempfile.mkdtemp()
  c.parallel.data_parallel = mode
  runs[mode] = (train.train_and_evaluate(c, d), d, c)
setup = train.setup_run(runs["off"][2])
like = train.fresh_state(setup, 42)
a, b = latest(runs["auto"][1], like), latest(runs["off"][1], like)
out = {"devices": len(jax.devices())}
out["max_param_diff"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))
                                          / (1e-5 + 1e-4 * np.abs(np.asarray(y)))))
                            for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
out["moved"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(like.params), jax.tree.leaves(b.params)))
out["metric_diff"] = max(abs(runs["auto"][0]["final"][s][k] - runs["off"][0]["final"][s][k])
                         for s in ("validation", "test") for k in runs["off"][0]["final"][s])
print("RESULT " + json.dumps(out))
'''


def test_sharded_transformers_match_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, str(tmp_path / "tfds")],
                        capture_output=True, text=True, env=env, timeout=900)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  result = json.loads(lines[-1][len("RESULT "):])
  assert result["devices"] == 4
  assert "batch sharded over 4 devices" in proc.stdout
  assert result["moved"] > 1e-4                # one epoch changed the parameters
  assert result["max_param_diff"] <= 1.0
  assert result["metric_diff"] <= 1 / 48 + 1e-9
