"""The ResNet-18 pair of issue 7's CPU convolution measurements.

Audio 128x128x1 and one visual frame 112x112x3 (used as given, no frame
augmentation), batch 64, f32, the CREMA-D protocol otherwise. It exists for
`launch.bench` and `launch/bench_pytorch.py`, which time the same model so the
JAX and PyTorch step times can be compared on one machine:

  python -m launch.bench --config configs/resnet18_pair.py --methods baseline \\
      --steps 2 --windows 5 --warmup 1 --profile_steps 2
"""

from configs.cremad import cremad_config


def get_config(arg: str | None = None):
  config = cremad_config(arg, frames=1)
  config.modalities.audio.input_shape = (128, 128, 1)
  config.modalities.visual.input_shape = (1, 112, 112, 3)
  config.modalities.visual.image_augment = "none"
  config.model.compute_dtype = "float32"
  return config
