"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import functools
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _compile_faster() -> None:
  """LLVM optimisation level 0 for the suite's programs: the suite is bound by
  XLA compilation, and level 0 compiles a small CNN's train step in ~60 % of
  the time (MLPs ~70 %). Results move in the last float bits, which every
  comparison of the suite tolerates (tests/test_golden_variants.py states
  the goldens' tolerance). Subprocesses inherit it; ASGML_TEST_XLA_OPT=full
  keeps XLA's default. Set before JAX starts its backend."""
  if os.environ.get("ASGML_TEST_XLA_OPT", "fast") == "full":
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


_compile_faster()


def full_optimisation_env() -> dict:
  """The environment for a subprocess whose time goes into running steps, not
  compiling them (a real dataset trained for epochs): XLA's default level."""
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_backend_optimization_level"))
  return dict(os.environ, XLA_FLAGS=flags, ASGML_TEST_XLA_OPT="full", JAX_PLATFORMS="cpu",
              TF_CPP_MIN_LOG_LEVEL="3")

from asgml_jax.config_schema import base_config, modality_config  # noqa: E402


def _share_compilations_within_the_session() -> None:
  """Most tests compile the same tiny train/eval steps again (new closures, same
  HLO). A persistent compilation cache in a fresh per-session directory lets a
  later test load the executable an earlier one compiled: identical programs,
  so no test's result changes, only less time is spent compiling.
  Subprocesses started by tests inherit it through the environment."""
  import tempfile

  import jax
  global _OWN_CACHE_DIR
  cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if not cache_dir:
    cache_dir = _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="asgml_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_OWN_CACHE_DIR = None
_share_compilations_within_the_session()


# Every test file's tier (`-m unit`, `-m methods`, `-m integration`); `slow`
# tests are marked where they are written.
TIERS = {
    "unit": ("test_boost", "test_ogm_ge", "test_schedule", "test_probes", "test_models",
             "test_optim_and_step", "test_composition", "test_config",
             "test_synthetic_and_metrics", "test_xla_flags", "test_import_layers",
             "test_no_method_names_in_the_trainer", "test_audio_features"),
    "methods": ("test_baselines", "test_balancebenchmark_methods", "test_reference_fidelity",
                "test_aug", "test_dgl", "test_di_mml", "test_g2d", "test_greedy", "test_iprm",
                "test_mslr", "test_valuation", "test_method_stacks", "test_golden_variants",
                "test_seed_code", "test_reference_optimizer"),
    "integration": ("test_train_end_to_end", "test_sweep", "test_parallel", "test_multiprocess",
                    "test_stop_signals_and_lock", "test_one_line_errors",
                    "test_checkpoint_integrity", "test_compile_cache", "test_data_prep",
                    "test_own_data", "test_pretrained", "test_report",
                    "test_augment_and_real_training", "test_transformer_encoders",
                    "test_slow_imbalance", "test_slow_kill_resume", "test_slow_mixed_precision"),
}
_TIER_OF = {name: tier for tier, names in TIERS.items() for name in names}


_TIER_ORDER = {"integration": 0, "methods": 1, "unit": 2}


def pytest_collection_modifyitems(config, items):
  for item in items:
    name = item.path.stem
    if name not in _TIER_OF:
      raise pytest.UsageError(f"tests/{name}.py has no tier: add it to TIERS in tests/conftest.py")
    item.add_marker(getattr(pytest.mark, _TIER_OF[name]))
  # The long runs first, the short checks last: the xdist workers hand out tests
  # in this order, so the suite does not end waiting on one worker's long test.
  # (Stable: each file's tests keep their order.)
  items.sort(key=lambda item: _TIER_ORDER[_TIER_OF[item.path.stem]])


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE_DIR:
    import shutil
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


def tiny_config(data_dir: str, *, num_epochs: int = 2, three_modalities: bool = False):
  """Two (or three) tiny modalities, a few hundred examples, 4-channel CNNs."""
  c = base_config()
  c.dataset.data_dir = data_dir
  c.dataset.synthetic.num_train = 192
  c.dataset.synthetic.num_validation = 48
  c.dataset.synthetic.num_test = 48
  c.dataset.synthetic.num_classes = 4
  c.modalities.audio = modality_config("small_cnn", (12, 12, 1), cnn_width=4)
  c.modalities.visual = modality_config("small_cnn", (8, 8, 3), cnn_width=4)
  c.dataset.synthetic.signal.audio = 0.5
  c.dataset.synthetic.signal.visual = 0.25
  if three_modalities:
    c.modalities.text = modality_config("mlp", (10,), mlp_hidden_dim=16)
    c.dataset.synthetic.signal.text = 0.3
  c.model.feature_dim = 8
  c.optimizer.learning_rate = 0.05
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_epochs = num_epochs
  c.log_every_steps = 4
  c.checkpoint_keep = 5
  return c


def npz_config(raw_dir: str, data_dir: str):
  """base_config reading the npz folder `raw_dir`; the test names the modalities."""
  c = base_config()
  c.dataset.name = "npz"
  c.dataset.raw_dir = raw_dir
  c.dataset.data_dir = data_dir
  return c


def tiny_mlp_config(data_dir: str, *, num_epochs: int = 2):
  """tiny_config with MLP encoders on vector inputs: compiles in seconds."""
  c = tiny_config(data_dir, num_epochs=num_epochs)
  c.modalities.audio = modality_config("mlp", (16,), mlp_hidden_dim=16, dropout=0.1)
  c.modalities.visual = modality_config("mlp", (12,), mlp_hidden_dim=16, dropout=0.1)
  return c


def variant_config(variant: str, *, data_dir: str = "/tmp/unused", three: bool = False,
                   **settings):
  """tiny_mlp_config (+ a third, "text" modality) running `variant`, dropout off
  (so a test can recompute the step), dotted `settings` applied, validated."""
  from asgml_jax.config_checks import set_dotted
  from asgml_jax.config_schema import effective_config, validate
  from configs.variants import apply_variant
  config = tiny_mlp_config(data_dir)
  if three:
    config.modalities.text = modality_config("mlp", (10,), mlp_hidden_dim=16)
    config.dataset.synthetic.signal.text = 0.3
  config = apply_variant(config, variant)
  needed_settings(config)
  for m in config.modalities:
    config.modalities[m].dropout = 0.0
  for key, value in settings.items():
    set_dotted(config, key, value)
  return effective_config(validate(config))


def jitted_step(config, *, steps_per_epoch: int = 6, lr_fn=None):
  """(state, jitted train step, first batch of 32) for a config, without TFDS or a workdir."""
  import functools

  import jax
  import jax.numpy as jnp

  from asgml_jax import optim, steps
  from asgml_jax.plan import Plan
  from asgml_jax.state import create_train_state
  from data_prep.synthetic import SyntheticSpec, generate_split

  plan = Plan.build(config)
  spec = SyntheticSpec.from_config(plan.config)
  data = generate_split(spec, "train")
  batch = {k: jnp.asarray(v[:32]) for k, v in data.items()}
  batch["label"] = batch["label"].astype(jnp.int32)
  model = plan.model(spec.num_classes)
  tx = plan.optimizer(steps_per_epoch, spec.num_classes)
  probe_cfg = plan.probe_config(spec.num_classes)
  state = create_train_state(model, tx, batch, jax.random.PRNGKey(plan.config.seed), probe_cfg)
  lr_fn = lr_fn or optim.lr_schedule(plan.config, steps_per_epoch)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   unimodal_weight=plan.config.loss.unimodal_weight, lr_fn=lr_fn,
                                   probe_cfg=probe_cfg,
                                   parts=plan.step_parts(steps_per_epoch, spec.num_classes)))
  return state, step, batch


def train_cli_in_process(args: list[str], capsys) -> tuple[int, str, str]:
  """`python -m launch.train *args` run in this process: (exit code, stdout,
  stderr). The flags are parsed afresh each time; one subprocess test per
  launcher checks the real command (tests/test_augment_and_real_training.py)."""
  import logging as python_logging

  from absl import flags
  from absl import logging as absl_logging
  from launch import cli
  from launch import train as launch_train
  flags.FLAGS.unparse_flags()
  capsys.readouterr()
  argv, saved = ["launch.train", *args], sys.argv
  handlers, verbosity = list(python_logging.root.handlers), absl_logging.get_verbosity()
  sys.argv = argv   # ml_collections' config flag reads its overrides from sys.argv
  try:
    cli.run(launch_train.main, argv=argv)
    code = 0
  except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else 1
  finally:
    sys.argv = saved
    flags.FLAGS.unparse_flags()
    # absl's app.run routes Python logging to stderr: undo it for the next tests
    python_logging.root.handlers[:] = handlers
    absl_logging.set_verbosity(verbosity)
  out = capsys.readouterr()
  return code, out.out, out.err


@functools.cache
def variant_record(variant: str) -> dict:
  """`golden_steps.record(variant, "tiny")`, once per test process: the golden,
  health and signal checks of a variant read one compiled program's steps."""
  import golden_steps
  return golden_steps.record(variant, "tiny")


def needed_settings(config):
  """Settings a method has no default for because they are the user's to
  choose (refused when missing), filled in for tests that run every method:
  MSLR's learning-rate factors."""
  from asgml_jax.methods.stack import requested_names
  if "mslr" in requested_names(config.method) and not config.method.mslr.factors:
    config.method.mslr.factors = "audio=0.5"
  return config


def with_stack(config, stack: str):
  """`config` running the method stack `stack`, with the settings its methods
  require (and the throttled/stale modality the schedules name) filled in."""
  from asgml_jax import methods
  from asgml_jax.config_checks import set_dotted
  config.method.stack = stack
  config.method.frequency.throttled = "audio"
  config.method.staleness.modalities = "audio"
  names = methods.method_names()
  for name in stack.split(","):
    for req in (methods.get(name).settings.requires if name in names else ()):
      set_dotted(config, req.key, req.value)
  model = config.model
  if "gradnorm" in stack.split(",") and not (
      model.fusion in ("concat", "sum") and model.unimodal_heads == "split"):
    config.method.gradnorm.layer = "encoders"   # the other method's heads share no fusion layer
  return needed_settings(config)


def evaluated_after_a_step(config):
  """(state, batch, eval_step outputs) after one train step of `config`: what
  validation reads (the stack's eval_logits hook applied) on the first batch."""
  from asgml_jax import steps
  from asgml_jax.models import model_from_config
  from asgml_jax.plan import Plan
  from asgml_jax.probes import probe_config_from
  state, step, batch = jitted_step(config)
  state, _ = step(state, batch)
  got = steps.eval_step(state, batch, model=model_from_config(config, 4),
                        probe_cfg=probe_config_from(config, 4),
                        eval_logits=Plan.build(config).evaluation(1).eval_logits)
  return state, batch, got


def two_healthy_steps(config, what) -> dict:
  """Two jitted steps of `config` on one batch: the health flag stays clear and
  every metric is finite; returns the last step's metrics."""
  import numpy as np
  state, step, batch = jitted_step(config, lr_fn=lambda s: 0.05)
  for _ in range(2):
    state, metrics = step(state, batch)
  assert int(state.health[0]) == -1, what
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
  assert not bad, f"{what}: non-finite {bad}"
  return metrics


def param_mismatch(a, b) -> float:
  """max over the leaves of |a − b| / (1e-5 + 1e-4·|b|): <= 1 means equal up to
  float summation order (the tolerance of the sharded/multi-process checks)."""
  import jax
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))
                          / (1e-5 + 1e-4 * np.abs(np.asarray(y)))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def largest_change(a, b) -> float:
  """max over the leaves of |a − b| (did training move the params at all?)."""
  import jax
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tiny_mlp_cli(data_dir: str, **settings) -> list[str]:
  """`launch.train`'s arguments for configs/default.py with MLP encoders on
  vectors (compiles in seconds) and `--config.<key>=<value>` per setting."""
  defaults = {"num_epochs": 1, "dataset.synthetic.num_train": 192,
              "dataset.synthetic.num_validation": 48, "dataset.synthetic.num_test": 48,
              "batch_size": 32, "eval_batch_size": 48,
              "modalities.audio.encoder": "mlp", "modalities.visual.encoder": "mlp",
              "modalities.audio.input_shape": (16,), "modalities.visual.input_shape": (12,),
              "dataset.data_dir": data_dir}
  return ["--config", "configs/default.py"] + [
      f"--config.{key}={value}".replace(" ", "")
      for key, value in {**defaults, **settings}.items()]


def config_of_cli(args: list[str]):
  """The config `launch.train` builds from `tiny_mlp_cli`'s arguments."""
  import ast
  from asgml_jax.config_checks import set_dotted
  from configs.default import get_config
  config = get_config()
  for arg in args[2:]:
    key, value = arg[len("--config."):].split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    set_dotted(config, key, value)
  return config


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS data dir per test session, so each synthetic spec is built once."""
  return str(tmp_path_factory.mktemp("tfds"))
