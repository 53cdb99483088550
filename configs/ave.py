"""AVE (the README's data section): 28 classes, OGM-GE layout (audio_spec/*.pkl, visual/<id>/*.jpg).

ResNet-18 on the pickled spectrogram and on 3 frames (stored at 256, cropped to
224 on the device); official train/val/test lists. Set the raw directory with
`--config.dataset.raw_dir` or $AVE_RAW_DIR. The spectrogram's shape is read
from the raw files when the dataset is built; `input_shape` below is the
OGM-GE one (257, 1004) and a mismatch is reported by name.
Protocol as CREMA-D (the paper protocol); sweep seeds 42, 0, 1, 2, 3.
"""

import os

from asgml_jax.config_schema import base_config, modality_config
from configs.variants import apply_variant


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "ave"
  config.dataset.raw_dir = os.environ.get("AVE_RAW_DIR") or None
  config.modalities.audio = modality_config("resnet18", (257, 1004, 1))
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
