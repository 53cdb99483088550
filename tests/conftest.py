"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

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


def jitted_step(config, *, steps_per_epoch: int = 6, lr_fn=None):
  """(state, jitted train step, first batch of 32) for a config, without TFDS or a workdir."""
  import functools

  import jax
  import jax.numpy as jnp

  from asgml_jax import optim, steps
  from asgml_jax.models import model_from_config
  from asgml_jax.probes import probe_config_from
  from asgml_jax.state import create_train_state
  from data_prep.synthetic import SyntheticSpec, generate_split

  spec = SyntheticSpec.from_config(config)
  data = generate_split(spec, "train")
  batch = {k: jnp.asarray(v[:32]) for k, v in data.items()}
  batch["label"] = batch["label"].astype(jnp.int32)
  model = model_from_config(config, spec.num_classes)
  tx = optim.make_optimizer(config, steps_per_epoch, spec.num_classes)
  probe_cfg = probe_config_from(config, spec.num_classes)
  state = create_train_state(model, tx, batch, jax.random.PRNGKey(config.seed), probe_cfg)
  lr_fn = lr_fn or optim.lr_schedule(config, steps_per_epoch)
  from asgml_jax.train import step_options
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   unimodal_weight=config.loss.unimodal_weight, lr_fn=lr_fn,
                                   probe_cfg=probe_cfg,
                                   **step_options(config, steps_per_epoch, spec.num_classes)))
  return state, step, batch


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS data dir per test session, so each synthetic spec is built once."""
  return str(tmp_path_factory.mktemp("tfds"))
