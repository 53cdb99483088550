"""CREMA-D (the README's data section): ResNet-18 audio (257x188 spectrogram) + visual frames.

`configs/cremad.py:<variant>` is the 1-frame protocol (sweep seeds 42, 0, 1, 2, 3);
`configs/cremad_3frame.py:<variant>` the 3-frame one. Raw data: the public
release (AudioWAV/, VideoFlash/) at `--config.dataset.raw_dir` or $CREMAD_RAW_DIR;
built into TFDS on first use (data_prep/cremad.py).

Protocol: SGD momentum 0.9, lr 1e-3, weight decay 1e-4, StepLR(40, 0.1),
batch 64, 100 epochs, seed 42; bf16 compute on accelerators ("auto"), f32 on
the CPU. Frames: stored at 256, RandomResizedCrop(224)+flip on the device.

Pretrained: `configs/cremad.py:pretrained` (or `pretrained_<variant>`, e.g.
`pretrained_boost_ogm`) starts both ResNet-18s from torchvision's ImageNet
weights, as the Phase-1 report did: the visual encoder as they are, the
audio encoder with the stem kernel averaged over RGB (asgml_jax/pretrained.py).
The file is read from disk, never downloaded: $RESNET18_WEIGHTS, else where
torchvision keeps it once `torchvision.models.resnet18(weights="IMAGENET1K_V1")`
has run: ~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth (a .npz or
.safetensors export of the same state dict works too). Missing, the run
stops at once with that path in the message.
"""

import os

from asgml_jax.config_schema import base_config, modality_config
from configs.variants import apply_variant


PRETRAINED_PREFIX = "pretrained"
TORCHVISION_RESNET18 = "~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth"


def imagenet_resnet18_path() -> str:
  return os.environ.get("RESNET18_WEIGHTS") or TORCHVISION_RESNET18


def cremad_config(variant: str | None, frames: int):
  pretrained = bool(variant) and variant.split("_")[0] == PRETRAINED_PREFIX
  if pretrained:
    variant = variant[len(PRETRAINED_PREFIX):].lstrip("_") or None
  config = base_config()
  config.dataset.name = "cremad"
  config.dataset.raw_dir = os.environ.get("CREMAD_RAW_DIR") or None
  config.dataset.cremad.frames = frames
  config.modalities.audio = modality_config("resnet18", (257, 188, 1))
  config.modalities.visual = modality_config("resnet18", (frames, 224, 224, 3),
                                             image_augment="imagenet")
  config.model.compute_dtype = "auto"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.lr_step_epochs = 40
  config.num_epochs = 100
  config.batch_size = 64
  config.eval_batch_size = 64
  config.method.frequency.throttled = "audio"
  config.method.staleness.modalities = "audio"
  config.sweep_seeds = (42, 0, 1, 2, 3) if frames == 1 else (42, 123, 456, 789, 1024)
  if pretrained:
    for name in ("audio", "visual"):
      config.modalities[name].pretrained = imagenet_resnet18_path()
  config = apply_variant(config, variant)
  if pretrained and not config.label:
    config.label = f"pretrained_{variant or 'baseline'}"
  return config


def get_config(arg: str | None = None):
  return cremad_config(arg, frames=1)
