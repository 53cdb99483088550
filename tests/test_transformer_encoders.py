"""vit / ast / transformer encoders: shapes, masks, training alone, with
boost_ogm, in a 2-seed sweep, and OGM-GE's `leaves` on them."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from asgml_jax import methods
from asgml_jax.config_schema import ConfigError, modality_config, validate
from asgml_jax.models.multimodal import encoder_spec
from asgml_jax.models.encoders import make_encoder
from configs.variants import apply_variant
from conftest import tiny_config


def _tiny_transformers(data_dir, num_epochs=1):
  """tiny_config with a vit (8x8x3, 4x4 patches), an ast (12x12x1, 4/2 patches)
  and a sequence transformer (6 steps x 5 features)."""
  c = tiny_config(data_dir, num_epochs=num_epochs)
  small = dict(transformer_width=8, transformer_depth=1, transformer_heads=2, dropout=0.0)
  c.modalities.audio = modality_config("ast", (12, 12, 1), patch_size=4, patch_stride=2, **small)
  c.modalities.visual = modality_config("vit", (8, 8, 3), patch_size=4, **small)
  c.modalities.text = modality_config("transformer", (6, 5), sequence_mask="none",
                                      transformer_pooling="mean", **small)
  c.dataset.synthetic.signal.text = 0.3
  return c


def _encoder(mod, name="m", feature_dim=8):
  return make_encoder(encoder_spec(name, mod), feature_dim, jnp.float32, name)


def test_token_counts_and_feature_shapes():
  ast = modality_config("ast", (16, 12, 1), patch_size=4, patch_stride=2, transformer_width=8,
                        transformer_heads=2)
  enc = _encoder(ast)
  variables = enc.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 12, 1)))
  # overlapping patches: ((16-4)/2+1) x ((12-4)/2+1) = 7 x 5 tokens
  assert variables["params"]["encoder"]["position"].shape == (1, 35, 8)
  assert enc.apply(variables, jnp.ones((2, 16, 12, 1))).shape == (2, 8)
  vit = modality_config("vit", (3, 8, 8, 3), patch_size=4, transformer_width=16,
                        transformer_heads=4)
  enc = _encoder(vit, feature_dim=6)
  variables = enc.init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 8, 8, 3)))
  assert variables["params"]["encoder"]["position"].shape == (1, 4, 16)
  assert variables["params"]["encoder"]["proj"]["kernel"].shape == (16, 6)   # width != features
  assert enc.apply(variables, jnp.ones((2, 3, 8, 8, 3))).shape == (2, 6)


def test_a_clip_is_the_mean_of_its_frames_features():
  vit = modality_config("vit", (8, 8, 3), patch_size=4, transformer_width=8, transformer_heads=2)
  enc = _encoder(vit)
  frames = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 8, 3))
  variables = enc.init(jax.random.PRNGKey(0), frames[:, 0])
  clip = enc.apply(variables, frames)
  each = jnp.stack([enc.apply(variables, frames[:, t]) for t in range(3)], 1)
  np.testing.assert_allclose(clip, each.mean(1), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padded_steps_change_nothing(pooling):
  """With the mask column, what padding holds does not reach the features; a
  full mask equals sequence_mask=none on the same features."""
  masked = modality_config("transformer", (7, 5), transformer_width=8, transformer_heads=2,
                           transformer_pooling=pooling, dropout=0.0)
  enc = _encoder(masked)
  key = jax.random.PRNGKey(3)
  feats = jax.random.normal(key, (3, 7, 4))
  lengths = jnp.array([7, 4, 1])
  real = (jnp.arange(7)[None] < lengths[:, None]).astype(jnp.float32)
  x = jnp.concatenate([feats, real[..., None]], -1)
  variables = enc.init(jax.random.PRNGKey(0), x)
  out = enc.apply(variables, x)
  noisy = feats + 100.0 * (1.0 - real)[..., None] * jax.random.normal(key, feats.shape)
  out_noisy = enc.apply(variables, jnp.concatenate([noisy, real[..., None]], -1))
  np.testing.assert_allclose(out, out_noisy, atol=1e-5)
  assert not np.allclose(out[0], out[1])
  unmasked = _encoder(modality_config("transformer", (7, 4), transformer_width=8,
                                      transformer_heads=2, transformer_pooling=pooling,
                                      sequence_mask="none", dropout=0.0))
  np.testing.assert_allclose(unmasked.apply(variables, feats[:1]), out[:1], atol=1e-5)


def test_config_refusals(tfds_dir):
  c = _tiny_transformers(tfds_dir)
  c.modalities.visual.transformer_heads = 3
  with pytest.raises(ConfigError, match="transformer_heads: must divide transformer_width"):
    validate(c)
  c = _tiny_transformers(tfds_dir)
  c.modalities.visual.patch_size = 16
  with pytest.raises(ConfigError, match="patch_size: 16 does not fit the input's 8 x 8"):
    validate(c)
  c = _tiny_transformers(tfds_dir)
  c.modalities.text.input_shape = (30,)
  with pytest.raises(ConfigError, match="takes sequences \\(L, D\\)"):
    validate(c)
  c = apply_variant(_tiny_transformers(tfds_dir), "ogm_ge")
  c.method.ogm.leaves = "conv"
  with pytest.raises(ConfigError, match="text.*no 4-D"):
    validate(c)


def test_ogm_conv_leaves_are_the_patch_embeddings(tfds_dir):
  """leaves=conv on vit/ast: only patch_embed/kernel is 4-D; min_2d adds every
  Dense/attention kernel, the position/CLS embeddings and the query/key/value
  biases (2-D in Flax), not the other biases or LayerNorm."""
  from asgml_jax.models import model_from_config
  from asgml_jax.transforms.ogm_ge import is_modulated_leaf
  c = _tiny_transformers(tfds_dir)
  del c.modalities["text"]
  del c.dataset.synthetic.signal["text"]
  validate(c)
  model = model_from_config(c, 4)
  params = model.init(jax.random.PRNGKey(0), {"audio": jnp.zeros((1, 12, 12, 1)),
                                              "visual": jnp.zeros((1, 8, 8, 3))})["params"]
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(params["encoders"])[0]}
  conv = sorted(k for k, v in flat.items() if is_modulated_leaf(v, "conv"))
  assert conv == ["audio/patch_embed/kernel", "visual/patch_embed/kernel"]
  min_2d = {k for k, v in flat.items() if is_modulated_leaf(v, "min_2d")}
  assert "audio/encoder/block1/attention/query/kernel" in min_2d
  assert "visual/encoder/position" in min_2d and "visual/encoder/cls" in min_2d
  assert not any("/ln_" in k for k in min_2d)
  # the only biases with 2 dimensions: attention's query/key/value (heads x head_dim)
  assert {k.rsplit("/", 2)[-2] for k in min_2d if k.endswith("/bias")} == {"query", "key", "value"}


@pytest.mark.parametrize("variant", ["baseline", pytest.param("boost_ogm", marks=pytest.mark.slow)])
def test_transformers_train_an_epoch(tmp_path, tfds_dir, variant):
  from asgml_jax import train
  c = apply_variant(_tiny_transformers(tfds_dir), variant)
  summary = train.train_and_evaluate(c, str(tmp_path / variant))
  assert summary["num_epochs"] == 1 and "error" not in summary
  for split in ("validation", "test"):
    assert 0.0 <= summary["final"][split]["accuracy"] <= 1.0
    for m in ("audio", "text", "visual"):
      assert 0.0 <= summary["final"][split][f"probe_acc_{m}"] <= 1.0


@pytest.mark.parametrize("kind", ["vit", "ast", "transformer"])
def test_each_encoder_learns_a_separable_task(kind):
  """Gradients reach every part: 60 Adam steps take a linearly separable
  2-class task (a shift of the whole input) from chance to >= 95 % training accuracy."""
  import optax
  shapes = {"vit": (8, 8, 3), "ast": (12, 12, 1), "transformer": (6, 5)}
  mod = modality_config(kind, shapes[kind], patch_size=4, patch_stride=2 if kind == "ast" else 0,
                        transformer_width=16, transformer_depth=2, transformer_heads=2,
                        dropout=0.0, sequence_mask="none")
  enc = _encoder(mod, feature_dim=2)
  y = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, (64,)).astype(jnp.int32)
  shift = (2.0 * y - 1.0).reshape((64,) + (1,) * len(shapes[kind]))
  x = jax.random.normal(jax.random.PRNGKey(0), (64,) + shapes[kind]) + 0.5 * shift
  params = enc.init(jax.random.PRNGKey(1), x)["params"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def loss_fn(p):
    logits = enc.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  @jax.jit
  def step(p, o):
    (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, (logits.argmax(-1) == y).mean()

  first = None
  for _ in range(60):
    params, opt, acc = step(params, opt)
    first = acc if first is None else first
  assert first < 0.8 and acc >= 0.95, (kind, float(first), float(acc))


def test_transformers_in_a_two_seed_sweep(tmp_path, tfds_dir):
  from asgml_jax import sweep
  c = _tiny_transformers(tfds_dir)
  results = sweep.train_sweep(c, (42, 7), [str(tmp_path / "s42"), str(tmp_path / "s7")])
  assert [r["seed"] for r in results] == [42, 7]
  assert all("error" not in r and r["num_epochs"] == 1 for r in results)
  assert results[0]["final"] != results[1]["final"]


def test_mosei_transformer_config_trains_on_masked_sequences(tmp_path):
  """configs/mosei_transformer.py on a small MMSA pickle: the dataset keeps
  (T, D+1) sequences with the mask column and the sequence Transformers train
  an epoch with boost on them (shapes set to the pickle's, widths shrunk)."""
  import raw_fixtures as rf
  from asgml_jax import train
  from configs import mosei_transformer
  path = str(tmp_path / "unaligned_39.pkl")
  rf.mmsa_pickle(path, sizes=(24, 8, 8))
  c = mosei_transformer.get_config("boost")
  c.dataset.mmsa.file = "unaligned_39.pkl"
  c.dataset.raw_dir = str(tmp_path)
  c.dataset.data_dir = str(tmp_path / "tfds")
  for name, shape in {"text": (39, 769), "audio": (55, 34), "vision": (55, 710)}.items():
    c.modalities[name].input_shape = shape
    c.modalities[name].update(transformer_width=8, transformer_depth=1, transformer_heads=2)
  c.model.feature_dim = 8
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_epochs = 1
  c.probes.eval_freq = 1
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["num_epochs"] == 1 and "error" not in summary
  for m in ("text", "audio", "vision"):
    assert 0.0 <= summary["final"]["test"][f"probe_acc_{m}"] <= 1.0


@pytest.mark.parametrize("kind", ["vit", "ast", "transformer"])
def test_bfloat16_features_are_the_float32_features(kind):
  """compute_dtype=bfloat16 (what `auto` picks on a GPU): same params, float32
  output, features within bf16's precision of float32's (2 % of their scale)."""
  shapes = {"vit": (2, 8, 8, 3), "ast": (12, 12, 1), "transformer": (6, 5)}
  mod = modality_config(kind, shapes[kind], patch_size=4, transformer_width=16,
                        transformer_depth=2, transformer_heads=2, sequence_mask="last_column")
  spec = encoder_spec("m", mod)
  f32 = make_encoder(spec, 16, jnp.float32, "m")      # features = the LayerNorm'd tokens
  bf16 = make_encoder(spec, 16, jnp.bfloat16, "m")
  x = jax.random.normal(jax.random.PRNGKey(0), (4,) + shapes[kind])
  if kind == "transformer":
    x = x.at[..., -1].set((jnp.arange(6)[None] < jnp.array([[6], [3], [1], [5]])).astype(x.dtype))
  variables = f32.init(jax.random.PRNGKey(1), x)
  a, b = f32.apply(variables, x), bf16.apply(variables, x)
  assert b.dtype == jnp.float32
  scale = float(jnp.abs(a).mean())
  assert scale > 0.3 and float(jnp.abs(a - b).max()) <= 0.1 * scale, (
      float(jnp.abs(a - b).max()), scale)
  assert float(jnp.abs(a - b).mean()) <= 0.02 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in methods.all_methods()
                                  if not m.composition.alone and not m.epoch.teachers
                                  and not any(r.key == "model.mid_fusion"
                                              for r in m.settings.requires)])
def test_every_method_steps_on_transformer_encoders(name):
  """Each multimodal method alone, 2 jitted steps on a vit + a sequence
  transformer: healthy, finite metrics (what test_method_stacks checks on
  MLPs). `unimodal` (one modality, nothing to balance) and the ensemble `ume`
  are left out, and so is `umt`, whose teachers are trained runs
  (tests/test_balancebenchmark_methods.py trains and checks them), and
  `greedy`, whose MMTM blocks join encoders stage by stage (CNN or MLP
  stages; a transformer has none)."""
  from asgml_jax.config_schema import effective_config
  from conftest import two_healthy_steps, with_stack
  c = tiny_config("/tmp/unused")
  small = dict(transformer_width=8, transformer_depth=1, transformer_heads=2, dropout=0.1)
  c.modalities.audio = modality_config("transformer", (6, 5), sequence_mask="none", **small)
  c.modalities.visual = modality_config("vit", (8, 8, 3), patch_size=4, **small)
  two_healthy_steps(effective_config(validate(with_stack(c, name))), name)
