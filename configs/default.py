"""The embedded default: synthetic audio-like + visual-like data, no download.

Audio-like: a 32x32x1 "spectrogram"; visual-like: a 24x24x3 "frame". Audio
carries the stronger class signal, so it dominates joint training as audio
does on CREMA-D, and visual stays under-trained: the imbalance ASGML targets.
Small CNN encoders and 64-d features keep a run to a few minutes on 2 CPU cores.

Variants: `configs/default.py:<method>` with method one of `baseline`, `ogm`,
`ogm_ge` (OGM-GE α = 0.8, the reference's CREMA-D value).
"""

from asgml_jax.config_schema import base_config, modality_config


def get_config(arg: str | None = None):
  config = base_config()
  config.method.name = arg or "baseline"
  config.modalities.audio = modality_config("small_cnn", (32, 32, 1), cnn_width=16)
  config.modalities.visual = modality_config("small_cnn", (24, 24, 3), cnn_width=16)
  config.dataset.synthetic.signal.audio = 0.20
  config.dataset.synthetic.signal.visual = 0.10
  config.model.feature_dim = 64
  config.optimizer.learning_rate = 1e-2
  config.optimizer.lr_step_epochs = 15
  config.num_epochs = 20
  config.batch_size = 64
  return config
