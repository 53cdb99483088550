"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from asgml_jax.config_schema import base_config, modality_config  # noqa: E402


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


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS data dir per test session, so each synthetic spec is built once."""
  return str(tmp_path_factory.mktemp("tfds"))
