"""CMU-MOSEI from MMSA's unaligned_39.pkl (README, data): text, audio, vision; 3 classes.

Each modality is mean-pooled over time when the dataset is built
(data_prep/mmsa.py) and encoded by a 2-layer MLP. Name the pickle with
`--config.dataset.mmsa.file` or $MOSEI_PKL. Sweep seeds 42, 0, 1, 2, 3.
"""

import os

from asgml_jax.config_schema import base_config, modality_config
from configs.variants import apply_variant


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "mmsa"
  config.dataset.mmsa.file = os.environ.get("MOSEI_PKL", "")
  config.modalities.text = modality_config("mlp", (768,), mlp_hidden_dim=256, dropout=0.1)
  config.modalities.audio = modality_config("mlp", (74,), mlp_hidden_dim=256, dropout=0.1)
  config.modalities.vision = modality_config("mlp", (35,), mlp_hidden_dim=256, dropout=0.1)
  config.model.feature_dim = 128
  config.optimizer.learning_rate = 1e-3
  config.optimizer.lr_step_epochs = 20
  config.num_epochs = 50
  config.method.frequency.throttled = "probe"
  config.method.staleness.modalities = "text"
  return apply_variant(config, arg)
