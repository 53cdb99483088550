"""AV-Digits (FSDD spoken digit + MNIST handwritten digit): real data on a CPU.

Built on first use from a folder holding `fsdd/recordings/*.wav` (Free Spoken
Digit Dataset) and `mnist/t10k-*-ubyte.gz` (the MNIST test set):
`$AV_DIGITS_RAW_DIR`, or `--config.dataset.raw_dir=...`; the default is the
development machines' `../shared/data` beside the repository.
Audio: log-mel (40, 101, 1); visual: 28x28x1. The default degradation
(`data_prep.av_digits.DEFAULT`: image noise 0.4 + a 25 % occlusion patch,
clean audio, speaker-disjoint split) keeps each modality alone below the fused
model: the image dominates training, and audio, whose test speaker is unseen,
is the weak modality.

Variants: `configs/av_digits.py:<variant>` as in configs/variants.py.
"""

import os

from asgml_jax.config_schema import base_config, modality_config
from configs.variants import apply_variant

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "..", "..", "shared", "data"))


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "av_digits"
  config.dataset.raw_dir = os.environ.get("AV_DIGITS_RAW_DIR", SHARED_DATA)
  config.modalities.audio = modality_config("small_cnn", (40, 101, 1), cnn_width=16)
  config.modalities.visual = modality_config("small_cnn", (28, 28, 1), cnn_width=16)
  config.model.feature_dim = 64
  config.optimizer.learning_rate = 3e-3
  config.optimizer.lr_step_epochs = 15
  config.num_epochs = 20
  config.batch_size = 64
  config.method.frequency.throttled = "probe"
  config.method.staleness.modalities = "audio"
  return apply_variant(config, arg)
