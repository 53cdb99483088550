"""CMU-MOSEI with a Transformer over each modality's feature sequence.

Like `configs/mosei.py` (MMSA's unaligned pickle, 3 classes, sweep seeds 42,
0, 1, 2, 3), but the dataset keeps the sequences (`dataset.mmsa.pooling=none`:
each modality stored as (T, D+1), the last column marking real steps, see
data_prep/mmsa.py) and each modality is encoded by the `transformer` encoder
(asgml_jax/models/transformers.py): a per-step linear embedding, 2 pre-LN
blocks of width 128 with 4 heads, masked mean pooling, so padding never
reaches the features. Shapes are MMSA's unaligned MOSEI (text 50 x 768 BERT
features, audio 500 x 74 COVAREP, vision 500 x 35 Facet); another pickle's
shapes are named by the shape check before anything is built, with the
`--config.modalities.<m>.input_shape` to set.

    MOSEI_PKL=~/data/MOSEI/unaligned_50.pkl \\
      python -m launch.train --config configs/mosei_transformer.py:boost --workdir runs/mosei_tf

The optimizer stays the project's SGD with momentum (lr 1e-3 is the MLP
configs'; the Transformers here use 1e-2): OGM-GE and the other gradient
methods are defined on SGD's updates, and an adaptive optimizer would rescale
away the per-modality modulation they apply.
"""

from configs.mosei import get_config as mlp_config

STEPS = {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)}


def get_config(arg: str | None = None):
  config = mlp_config(arg)
  config.dataset.mmsa.pooling = "none"
  for name, (steps, dims) in STEPS.items():
    mod = config.modalities[name]
    mod.encoder = "transformer"
    mod.input_shape = (steps, dims + 1)
    mod.sequence_mask = "last_column"
    mod.transformer_width = 128
    mod.transformer_depth = 2
    mod.transformer_heads = 4
    mod.transformer_pooling = "mean"
    mod.dropout = 0.1
  config.optimizer.learning_rate = 1e-2
  config.batch_size = 64
  return config
