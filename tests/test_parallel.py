"""Data parallelism on 4 CPU devices (`--xla_force_host_platform_device_count=4`).

The flag must be set before JAX starts, so the check runs in a subprocess:
one epoch of the small-CNN config (BatchNorm and convolutions, OGM-GE's
batch-sum scores and GE noise), and of the vit/ast/sequence-transformer
config (LayerNorm and attention; under `-m slow`), with the batch sharded
over the 4 devices and with one device. Tolerance: the sharded step sums each
device's partial gradients in an all-reduce, a different float summation order, so params
agree to rtol 1e-4 / atol 1e-5 and eval metrics within one example of 48.
A 4-seed vmapped sweep with its seeds spread over the 4 devices ends where
the same sweep on one device does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = r'''
import json, os, sys, tempfile
sys.path.insert(0, os.path.join(sys.argv[1], "tests")); sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from conftest import largest_change, param_mismatch, tiny_config, tiny_mlp_config
from test_transformer_encoders import _tiny_transformers
from asgml_jax import checkpointing, loop, parallel, programs, train
from asgml_jax.config_schema import ConfigError
from asgml_jax.plan import Plan

def ogm_ge_config(make, mode):
  c = make(sys.argv[2], num_epochs=1)
  c.method.name = "ogm_ge"
  c.parallel.data_parallel = mode
  return c

def sharded_vs_one_device(make):
  """One epoch with the batch over the 4 devices and on one device: how far apart."""
  runs = {}
  for mode in ("auto", "off"):
    c, d = ogm_ge_config(make, mode), tempfile.mkdtemp()
    runs[mode] = (train.train_and_evaluate(c, d), d, c)
  like = loop.fresh_state(loop.setup_run(Plan.build(runs["off"][2])), 42)
  a, b = (checkpointing.restore_newest(runs[m][1], like)[0].params for m in ("auto", "off"))
  return {"max_param_diff": param_mismatch(a, b), "moved": largest_change(b, like.params),
          "metric_diff": max(abs(runs["auto"][0]["final"][s][k] - runs["off"][0]["final"][s][k])
                             for s in ("validation", "test") for k in runs["off"][0]["final"][s])}

out = {"devices": len(jax.devices())}
if sys.argv[3] == "transformers":
  out["transformers"] = sharded_vs_one_device(_tiny_transformers)
  print("RESULT " + json.dumps(out))
  sys.exit(0)
out["cnn"] = sharded_vs_one_device(tiny_config)
mlp = tiny_mlp_config(sys.argv[2], num_epochs=1)
mlp_setup = loop.setup_run(Plan.build(mlp))
mlp_state = loop.fresh_state(mlp_setup, 42)
axis = programs.SeedAxis.for_run(mlp_setup.config, 1)
mesh = axis.mesh
fn, _, coll = programs.make_programs(axis, mlp_setup.model, mlp_setup.tx, mlp_setup.parts,
                                     mlp_setup.config, mlp_setup.steps_per_epoch, mlp_state,
                                     mlp_setup.example, mlp_setup.probe_cfg,
                                     mlp_setup.eval_batch_size, mlp_setup.frame_sizes, True)
hlo = fn.lower(parallel.replicate(mlp_state, mesh), programs.fresh_metrics(coll),
               parallel.replicate(mlp_setup.data.train, mesh),
               jax.numpy.arange(mlp_setup.data.num_train), 0).compile().as_text()
out["all_reduce"] = "all-reduce" in hlo
from asgml_jax import sweep
swept = {}
for mode in ("auto", "off"):
  c, d = ogm_ge_config(tiny_mlp_config, mode), tempfile.mkdtemp()
  swept[mode] = sweep.train_sweep(c, (42, 0, 7, 9), [os.path.join(d, str(i)) for i in range(4)],
                                  seed_axis="vmap")
out["seed_mesh"] = parallel.seed_mesh(c.copy_and_resolve_references(), 4, "vmap") is None
out["sweep_metric_diff"] = max(abs(a["final"][s][k] - b["final"][s][k])
                               for a, b in zip(swept["auto"], swept["off"])
                               for s in ("validation", "test") for k in a["final"][s])
bad = ogm_ge_config(tiny_config, "auto")
bad.batch_size = 30
try:
  parallel.data_mesh(bad)
  out["error"] = None
except ConfigError as err:
  out["error"] = str(err)
print("RESULT " + json.dumps(out))
'''


def _run(tmp_path, part: str):
  """The script on 4 CPU devices (the suite's XLA flags kept)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, str(tmp_path / "tfds"), part],
                        capture_output=True, text=True, env=env, timeout=900)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  result = json.loads(lines[-1][len("RESULT "):])
  assert result["devices"] == 4
  return proc, result


def _assert_close_to_one_device(check, model):
  assert check["moved"] > 1e-4, model                # the epoch changed the parameters
  assert check["max_param_diff"] <= 1.0, model      # |a − b| <= 1e-5 + 1e-4·|b| for every param
  assert check["metric_diff"] <= 1 / 48 + 1e-9, model


def test_sharded_training_matches_one_device(tmp_path):
  """Small CNNs (BatchNorm, convolutions, OGM-GE's scores and noise), the
  all-reduce, a 4-seed sweep spread over the devices, the divisibility check."""
  proc, result = _run(tmp_path, "cnn")
  assert "batch sharded over 4 devices" in proc.stdout
  assert "seeds sharded over 4 devices" in proc.stdout
  assert result["all_reduce"], "the sharded step should all-reduce across devices"
  _assert_close_to_one_device(result["cnn"], "cnn")
  assert "config.batch_size: 30 does not divide over the 4 devices" in result["error"]
  assert result["seed_mesh"]           # data_parallel "off": the sweep stays on one device
  assert result["sweep_metric_diff"] <= 1 / 48 + 1e-9   # 4 seeds sharded over 4 devices


@pytest.mark.slow
def test_sharded_transformers_match_one_device(tmp_path):
  """vit / ast / sequence-transformer encoders (LayerNorm, attention) sharded."""
  proc, result = _run(tmp_path, "transformers")
  assert "batch sharded over 4 devices" in proc.stdout
  _assert_close_to_one_device(result["transformers"], "transformers")
