"""Kinetics-Sounds (the README's data section): raw videos, 128-bin fbank (1024 frames) + 3 frames.

Raw directory (`--config.dataset.raw_dir` or $KS_RAW_DIR) with the videos and
train/test[/validation] lists (data_prep/kinetics_sounds.py). Protocol as
CREMA-D (the paper protocol); sweep seeds 42, 0, 1, 2, 3.
"""

import os

from asgml_jax.config_schema import base_config, modality_config
from configs.variants import apply_variant


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "kinetics_sounds"
  config.dataset.raw_dir = os.environ.get("KS_RAW_DIR") or None
  config.modalities.audio = modality_config("resnet18", (1024, 128, 1))
  config.modalities.visual = modality_config("resnet18", (3, 224, 224, 3),
                                             image_augment="imagenet")
  config.model.compute_dtype = "auto"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.lr_step_epochs = 40
  config.num_epochs = 100
  config.eval_batch_size = 64
  config.method.frequency.throttled = "probe"
  config.method.staleness.modalities = "audio"
  return apply_variant(config, arg)
