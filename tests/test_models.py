"""Model shapes, the parameter-tree contract, and the split-weight identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgml_jax.models import EncoderSpec, MultimodalClassifier
from asgml_jax.models.encoders import ResNet18

B, C, D = 4, 5, 16
INPUTS = {
    "audio": jnp.linspace(-1, 1, B * 16 * 16).reshape(B, 16, 16, 1),
    "visual": jnp.linspace(1, -1, B * 2 * 12 * 12 * 3).reshape(B, 2, 12, 12, 3),  # 2 frames
    "text": jnp.linspace(0, 1, B * 10).reshape(B, 10),
}
SPECS = {
    "audio": EncoderSpec("audio", "small_cnn", cnn_width=4),
    "visual": EncoderSpec("visual", "small_cnn", cnn_width=4),
    "text": EncoderSpec("text", "mlp", mlp_hidden_dim=8),
}


def _build(names, fusion, fusion_dim=None):
  model = MultimodalClassifier(tuple(SPECS[n] for n in names), C, feature_dim=D,
                               fusion=fusion, fusion_dim=fusion_dim)
  inputs = {n: INPUTS[n] for n in names}
  variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                         inputs)
  return model, variables, inputs


@pytest.mark.parametrize("names", [("audio", "visual"), ("audio", "text", "visual")])
@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
@pytest.mark.parametrize("fusion_dim", [None, 12])
def test_output_shapes_and_param_tree(names, fusion, fusion_dim):
  model, variables, inputs = _build(names, fusion, fusion_dim)
  out = model.apply(variables, inputs)
  assert out["logits"].shape == (B, C)
  assert set(out["unimodal_logits"]) == set(names)
  assert all(z.shape == (B, C) for z in out["unimodal_logits"].values())
  assert all(f.shape == (B, D) for f in out["features"].values())
  params = variables["params"]
  assert set(params["encoders"]) == set(names)
  assert "fusion" in params
  if fusion_dim is not None or fusion in ("film", "gated"):
    assert set(params["heads"]) >= {f"unimodal_{n}" for n in names}
  else:
    assert "heads" not in params  # unimodal logits come from the fusion layer itself


@pytest.mark.parametrize("names", [("audio", "visual"), ("audio", "text", "visual")])
def test_concat_unimodal_logits_sum_to_fused(names):
  model, variables, inputs = _build(names, "concat")
  out = model.apply(variables, inputs)
  total = sum(out["unimodal_logits"].values())
  np.testing.assert_allclose(total, out["logits"], rtol=1e-5, atol=1e-5)


def test_concat_unimodal_logits_use_the_split_weight_and_b_over_n():
  model, variables, inputs = _build(("audio", "visual"), "concat")
  out = model.apply(variables, inputs)
  kernel = variables["params"]["fusion"]["kernel"]
  bias = variables["params"]["fusion"]["bias"] + 0.3  # a non-zero bias makes b/N visible
  variables = {**variables, "params": {**variables["params"],
                                       "fusion": {"kernel": kernel, "bias": bias}}}
  out = model.apply(variables, inputs)
  f_audio = out["features"]["audio"]
  expected = f_audio @ kernel[:D] + bias / 2
  np.testing.assert_allclose(out["unimodal_logits"]["audio"], expected, rtol=1e-5, atol=1e-6)


def test_sum_fusion_unimodal_logits_keep_full_bias_and_sum_to_fused():
  model, variables, inputs = _build(("audio", "visual"), "sum")
  out = model.apply(variables, inputs)
  np.testing.assert_allclose(sum(out["unimodal_logits"].values()), out["logits"],
                             rtol=1e-5, atol=1e-5)


def test_resnet18_folds_frames_and_matches_reference_size():
  net = ResNet18()
  clip = jnp.ones((2, 3, 32, 32, 3))
  variables = net.init(jax.random.PRNGKey(0), clip)
  assert net.apply(variables, clip).shape == (2, 512)
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n_params == 11_176_512  # torchvision resnet18 without fc, 3 input channels
  # One frame repeated T times pools to the same features as the single frame.
  frame = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  repeated = jnp.repeat(frame[:, None], 3, axis=1)
  np.testing.assert_allclose(net.apply(variables, frame), net.apply(variables, repeated),
                             rtol=1e-5, atol=1e-5)


def test_resnet18_single_channel_spectrogram():
  net = ResNet18()
  spec = jnp.ones((2, 64, 48, 1))
  variables = net.init(jax.random.PRNGKey(0), spec)
  assert net.apply(variables, spec).shape == (2, 512)
  assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 1, 64)


def test_reference_initialisation_statistics():
  """Conv kaiming-normal fan_out: std = sqrt(2 / (k*k*out)); BN scale 1, bias 0."""
  net = ResNet18()
  variables = net.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)))
  kernel = variables["params"]["stage4_block1"]["Conv_0"]["kernel"]  # 3x3, 256 -> 512
  expected = np.sqrt(2.0 / (3 * 3 * 512))
  assert abs(float(jnp.std(kernel)) / expected - 1) < 0.02
  bn = variables["params"]["stem_bn"]
  assert float(bn["scale"].min()) == 1.0 and float(jnp.abs(bn["bias"]).max()) == 0.0


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), ((0, 0), (0, 0))),   # SmallCNN
    ((3, 3), (2, 2), ((1, 1), (1, 1))),   # ResNet-18 stem
])
def test_max_pool_matches_reduce_window_values_and_gradient(window, strides, padding):
  import flax.linen as nn
  from asgml_jax.models.pooling import max_pool
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, 3))
  ours = lambda z: max_pool(jax.nn.relu(z), window, strides, padding)
  flax_pool = lambda z: nn.max_pool(jax.nn.relu(z), window, strides, padding)
  np.testing.assert_array_equal(ours(z), flax_pool(z))
  # Gradients w.r.t. the pre-ReLU input agree: ties sit at 0, where ReLU kills them.
  cotangent = jax.random.normal(jax.random.PRNGKey(1), ours(z).shape)
  grad = lambda f: jax.vjp(f, z)[1](cotangent)[0]
  np.testing.assert_allclose(grad(ours), grad(flax_pool), rtol=0, atol=1e-6)
  assert float(jnp.abs(grad(ours)).sum()) > 0


def test_max_pool_splits_the_gradient_between_tied_maxima():
  from asgml_jax.models.pooling import max_pool
  x = jnp.array([[1.0, 1.0], [0.0, -2.0]]).reshape(1, 2, 2, 1)
  assert float(max_pool(x, (2, 2), (2, 2))[0, 0, 0, 0]) == 1.0
  grad = jax.grad(lambda x: max_pool(x, (2, 2), (2, 2)).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0.5, 0.5], [0.0, 0.0]])


def test_max_pool_rejects_non_nhwc():
  from asgml_jax.models.pooling import max_pool
  with pytest.raises(ValueError, match=r"max_pool: expected NHWC input, got shape \(4, 4\)"):
    max_pool(jnp.zeros((4, 4)), (2, 2), (2, 2))
