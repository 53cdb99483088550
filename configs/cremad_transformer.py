"""CREMA-D with Transformer encoders: AST-style audio, ViT visual.

The CREMA-D protocol of `configs/cremad.py` (data, 1 frame, SGD momentum,
StepLR, batch 64, seeds), with both ResNet-18s replaced
(asgml_jax/models/transformers.py):
- audio `ast`: the 257 x 188 spectrogram cut into 16 x 16 patches every 10
  (AST's overlap): 25 x 18 = 450 tokens;
- visual `vit`: the 224 x 224 frame in 16 x 16 patches: 196 tokens;
both ViT-Tiny wide (192, 3 heads) and 6 blocks deep, CLS pooling, a linear
map to the 512 features. They start from scratch (no ImageNet/AudioSet
weights): on CREMA-D's 6.7k clips expect them below the ResNet-18s; the
config is for comparing how the methods act on a Transformer. lr 1e-2: from
scratch with SGD, 1e-3 barely moves them in 100 epochs. `configs/cremad_transformer.py:<variant>`.
"""

from configs.cremad import cremad_config


def get_config(arg: str | None = None):
  config = cremad_config(arg, frames=1)
  common = dict(transformer_width=192, transformer_depth=6, transformer_heads=3,
                transformer_pooling="cls", dropout=0.1, patch_size=16)
  config.modalities.audio.encoder = "ast"
  config.modalities.audio.update(common, patch_stride=10)
  config.modalities.visual.encoder = "vit"
  config.modalities.visual.update(common, patch_stride=16)
  config.optimizer.learning_rate = 1e-2
  return config
