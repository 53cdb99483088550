"""The embedded default: synthetic audio-like + visual-like data, no download.

Audio-like: a 32x32x1 "spectrogram"; visual-like: a 24x24x3 "frame". Audio
carries the stronger class signal, so it dominates joint training as audio
does on CREMA-D, and visual stays under-trained: the imbalance ASGML targets.
Small CNN encoders and 64-d features keep a run to a few minutes on 2 CPU cores.

Variants: `configs/default.py:<variant>`, one of `configs.variants.VARIANTS`
(baseline, ogm, ogm_ge, frequency, frequency_control, staleness, adaptive,
boost, boost_ogm and the `_seedcode` ones). Frequency throttles and staleness
delays audio, the dominant modality here, as ASGML's first CREMA-D experiments did.
"""

from asgml_jax.config_schema import base_config, modality_config
from configs.variants import apply_variant


def get_config(arg: str | None = None):
  config = base_config()
  config.modalities.audio = modality_config("small_cnn", (32, 32, 1), cnn_width=16)
  config.modalities.visual = modality_config("small_cnn", (24, 24, 3), cnn_width=16)
  config.dataset.synthetic.signal.audio = 0.20
  config.dataset.synthetic.signal.visual = 0.10
  config.model.feature_dim = 64
  config.optimizer.learning_rate = 1e-2
  config.optimizer.lr_step_epochs = 15
  config.num_epochs = 20
  config.batch_size = 64
  config.method.frequency.throttled = "audio"
  config.method.staleness.modalities = "audio"
  return apply_variant(config, arg)
