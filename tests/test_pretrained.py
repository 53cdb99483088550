"""Pretrained ResNet-18: torchvision's features from a torchvision checkpoint.

The checkpoint is the real file `torch.save` wrote (rebuilt byte for byte from
the fixture, see tests/torchvision_fixture.py); the expected features are
torchvision's own eval-mode forward pass. No torch is needed here.
"""

import io

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from asgml_jax import loop, pretrained, weight_files
from asgml_jax.models.encoders import ResNet18
from asgml_jax.plan import Plan
from data_prep.common import BadInputError
from torchvision_fixture import load_manifest, rebuild_pth, torchvision_outputs


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
  return rebuild_pth(str(tmp_path_factory.mktemp("tv") / "resnet18.pth"))


@pytest.fixture(scope="module")
def state_dict(pth):
  return weight_files.read_state_dict(pth)


def _features(state_dict, x_nchw):
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
  params, stats = pretrained.resnet18_variables(state_dict, x.shape[-1])
  return np.asarray(ResNet18().apply({"params": params, "batch_stats": stats}, x, train=False))


def test_reader_gives_every_tensor_torch_saved(state_dict):
  manifest = load_manifest()
  assert set(state_dict) == set(manifest["tensors"])
  for name, (shape, dtype) in manifest["tensors"].items():
    assert state_dict[name].shape == tuple(shape) and str(state_dict[name].dtype) == dtype, name


@pytest.mark.parametrize("channels", [3, 1])
def test_features_equal_torchvision(state_dict, channels):
  io = torchvision_outputs()
  ours = _features(state_dict, io[f"x{channels}"])
  expected = io[f"f{channels}"]
  assert ours.shape == expected.shape == (2, 512)
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(expected).mean() > 0.5   # features of real size, not ~0


def test_frames_average_torchvision_features(state_dict):
  """(B, T, H, W, C) clips: the mean of the frames' torchvision features."""
  io = torchvision_outputs()
  clip = jnp.asarray(io["x3"].transpose(0, 2, 3, 1))[None]          # (1, 2, H, W, 3)
  params, stats = pretrained.resnet18_variables(state_dict, 3)
  ours = ResNet18().apply({"params": params, "batch_stats": stats}, clip, train=False)
  np.testing.assert_allclose(np.asarray(ours)[0], io["f3"].mean(0), atol=1e-4, rtol=1e-4)


def test_npz_and_safetensors_exports_read_the_same(tmp_path, state_dict):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  np.savez(tmp_path / "w.npz", **state_dict)
  safetensors_numpy.save_file(dict(state_dict), str(tmp_path / "w.safetensors"))
  for path in (tmp_path / "w.npz", tmp_path / "w.safetensors"):
    other = weight_files.read_state_dict(str(path))
    assert set(other) == set(state_dict)
    for k in state_dict:
      np.testing.assert_array_equal(other[k], state_dict[k])


def test_wrapped_and_dataparallel_checkpoints(tmp_path, state_dict):
  np.savez(tmp_path / "w.npz", **{f"module.{k}": v for k, v in state_dict.items()})
  assert set(weight_files.read_state_dict(str(tmp_path / "w.npz"))) == set(state_dict)


def test_bad_files_are_named(tmp_path, state_dict):
  cases = {
      "missing.pth": None,
      "legacy.pth": b"\x80\x02\x8a\x0alegacy-pickle",
      "text.pth": b"not weights at all",
      "broken.safetensors": b"\xff\xff\xff\xff\xff\xff\xff\x00{}",
  }
  for name, content in cases.items():
    path = tmp_path / name
    if content is not None:
      path.write_bytes(content)
    with pytest.raises(BadInputError, match=str(path)):
      weight_files.read_state_dict(str(path))
  np.savez(tmp_path / "vgg.npz", **{"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)})
  with pytest.raises(BadInputError, match="not a torchvision resnet18 state dict"):
    pretrained.resnet18_variables(weight_files.read_state_dict(str(tmp_path / "vgg.npz")), 3,
                                  str(tmp_path / "vgg.npz"))
  with pytest.raises(BadInputError, match="3 \\(RGB\\) or 1 channel"):
    pretrained.resnet18_variables(state_dict, 2)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
  """The unpickler knows only tensors: an object that would call os.system is refused."""
  import pickle
  import zipfile

  class Evil:
    def __reduce__(self):
      import os
      return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
  with pytest.raises(BadInputError, match="holds a posix.system"):
    weight_files.read_state_dict(str(path))
  assert not (tmp_path / "pwned").exists()


def _pretrained_config(tfds_dir, pth):
  from asgml_jax.config_schema import modality_config
  from conftest import tiny_config
  c = tiny_config(tfds_dir, num_epochs=1)
  c.modalities.visual = modality_config("resnet18", (32, 32, 3), pretrained=pth)
  c.modalities.audio = modality_config("resnet18", (32, 32, 1), pretrained=pth, lr_scale=0.1)
  c.model.feature_dim = 512
  return c


def test_a_run_starts_from_the_pretrained_encoders(tfds_dir, pth, state_dict):
  """train.fresh_state: both encoders hold the converted weights and BN
  statistics (audio's stem averaged over RGB); fusion keeps its own init."""
  from flax.traverse_util import flatten_dict
  config = _pretrained_config(tfds_dir, pth)
  setup = loop.setup_run(Plan.build(config))
  state = loop.fresh_state(setup, 42)
  for name, channels in (("visual", 3), ("audio", 1)):
    params, stats = pretrained.resnet18_variables(state_dict, channels)
    for ours, theirs in ((state.params["encoders"][name], params),
                         (state.batch_stats["encoders"][name], stats)):
      flat_ours, flat_theirs = flatten_dict(ours), flatten_dict(theirs)
      assert set(flat_ours) == set(flat_theirs)   # every leaf of the encoder replaced
      for k in flat_theirs:
        np.testing.assert_array_equal(np.asarray(flat_ours[k]), flat_theirs[k], err_msg=str(k))
  np.testing.assert_allclose(np.asarray(state.params["encoders"]["audio"]["stem_conv"]["kernel"]),
                             state_dict["conv1.weight"].mean(1, keepdims=True)
                             .transpose(2, 3, 1, 0), rtol=1e-6)
  other = loop.fresh_state(setup, 7)   # another seed: same encoders, its own fusion init
  assert np.array_equal(other.params["encoders"]["visual"]["stem_conv"]["kernel"],
                        state.params["encoders"]["visual"]["stem_conv"]["kernel"])
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other.params["fusion"]),
                                                     jax.tree.leaves(state.params["fusion"])))


def test_pretrained_config_mistakes_are_one_line(tfds_dir, pth, tmp_path):
  from asgml_jax.config_schema import ConfigError, validate
  c = _pretrained_config(tfds_dir, str(tmp_path / "resnet18-f37072fd.pth"))
  with pytest.raises(ConfigError, match="modalities.audio.pretrained: no such file: .*"
                                        "resnet18-f37072fd.pth .*nothing is downloaded"):
    validate(c)
  c = _pretrained_config(tfds_dir, pth)
  c.modalities.visual.encoder = "small_cnn"
  with pytest.raises(ConfigError, match="load into the resnet18 encoder, not small_cnn"):
    validate(c)
  c = _pretrained_config(tfds_dir, pth)
  c.modalities.visual.input_shape = (32, 32, 2)
  with pytest.raises(ConfigError, match="3 \\(RGB\\) or 1 input channel"):
    validate(c)
  c = _pretrained_config(tfds_dir, pth)
  c.model.feature_dim = 128
  with pytest.raises(ConfigError, match="gives 512 features"):
    validate(c)


def test_lr_scale_scales_that_encoders_update_only(tfds_dir):
  """modalities.audio.lr_scale=0.25: audio's first update is a quarter of the
  unscaled run's, visual's and the fusion's identical (same init, same batch)."""
  from conftest import jitted_step, tiny_mlp_config
  deltas = {}
  for scale in (1.0, 0.25):
    c = tiny_mlp_config(tfds_dir)
    c.modalities.audio.lr_scale = scale
    state, step, batch = jitted_step(c)
    new_state = step(state, batch)[0]
    deltas[scale] = jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a),
                                 state.params, new_state.params)
  full, scaled = deltas[1.0], deltas[0.25]
  for a, b in zip(jax.tree.leaves(full["encoders"]["audio"]),
                  jax.tree.leaves(scaled["encoders"]["audio"])):
    np.testing.assert_allclose(b, 0.25 * a, rtol=1e-4, atol=1e-7)  # float32 ulp of the params
  assert max(np.abs(a).max() for a in jax.tree.leaves(full["encoders"]["audio"])) > 1e-4
  for part in (full["encoders"]["visual"], full["fusion"]):
    other = scaled["encoders"]["visual"] if part is full["encoders"]["visual"] else scaled["fusion"]
    for a, b in zip(jax.tree.leaves(part), jax.tree.leaves(other)):
      np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_a_big_endian_pth_reads_the_same_values(tmp_path, pth, state_dict):
  """torch.save on a big-endian machine writes byteorder 'big' and its storages'
  bytes in that order: the same file with every record byte-swapped reads the
  same numbers."""
  import zipfile
  dtypes = {m["name"]: load_manifest()["tensors"][m["tensor"]][1]
            for m in load_manifest()["members"] if "tensor" in m}
  src, dst = zipfile.ZipFile(pth), tmp_path / "big.pth"
  with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
    for info in src.infolist():
      data = src.read(info.filename)
      if info.filename.endswith("/byteorder"):
        data = b"big"
      elif info.filename in dtypes:
        data = np.frombuffer(data, dtypes[info.filename]).byteswap().tobytes()
      out.writestr(info.filename, data)
  big = weight_files.read_state_dict(str(dst))
  assert set(big) == set(state_dict)
  for k in state_dict:
    np.testing.assert_array_equal(big[k], state_dict[k], err_msg=k)
    assert big[k].dtype == state_dict[k].dtype


def _crafted_pth(path, numel: int, offset, size, stride) -> str:
  """A torch.save-layout zip whose one tensor is `_rebuild_tensor_v2(storage of
  numel float32 values, offset, size, stride)`, pickled as torch pickles it (the
  global torch._utils._rebuild_tensor_v2 and a persistent storage id), with
  stand-in `torch` modules so that no torch is needed."""
  import pickle
  import sys
  import types
  import zipfile
  torch_mod, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
  storage_cls = type("FloatStorage", (), {"__module__": "torch"})
  torch_mod.FloatStorage, torch_mod._utils = storage_cls, utils

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called while pickling")
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2

  class Storage:
    pass

  class Tensor:
    def __reduce__(self):
      return (_rebuild_tensor_v2, (Storage(), offset, size, stride, False, None))

  class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", storage_cls, "0", "cpu", numel) if isinstance(obj, Storage) else None

  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  sys.modules.update({"torch": torch_mod, "torch._utils": utils})
  try:
    buffer = io.BytesIO()
    TorchPickler(buffer, protocol=2).dump({"w": Tensor()})
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k)
      else:
        sys.modules[k] = v
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buffer.getvalue())
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/data/0", np.arange(numel, dtype=np.float32).tobytes())
  return str(path)


@pytest.mark.parametrize("offset,size,stride,message", [
    (0, (512, 512, 3, 3), (4608, 9, 3, 1), "reaches element 2359295 of a storage of 10"),
    (8, (4,), (1,), "reaches element 11 of a storage of 10"),
    (0, (2, 3), (3, 4), "reaches element 11 of a storage of 10"),
    (10, (), (), "reaches element 10 of a storage of 10"),
    (-1, (2,), (1,), "which no tensor has"),
    (0, (2,), (-1,), "which no tensor has"),
    (0, ("2",), (1,), "which no tensor has"),
])
def test_a_tensor_view_outside_its_storage_is_one_line(tmp_path, offset, size, stride, message):
  """torch's tensor record (offset, size, stride) is checked against the storage
  before it is read: a crafted or damaged file is refused, naming it, instead
  of reading outside the buffer (a segfault, or heap values as weights)."""
  path = _crafted_pth(tmp_path / "crafted.pth", 10, offset, size, stride)
  with pytest.raises(BadInputError, match="crafted.pth: ") as err:
    weight_files.read_state_dict(path)
  assert message in str(err.value) and "\n" not in str(err.value)


def test_a_strided_tensor_inside_its_storage_reads_torchs_values(tmp_path):
  """The same record within bounds reads what torch's as_strided view holds:
  element [i, j] = storage[offset + i·stride_0 + j·stride_1]."""
  path = _crafted_pth(tmp_path / "ok.pth", 10, 1, (3, 2), (1, 4))
  got = weight_files.read_state_dict(path)["w"]
  want = np.array([[1 + i + 4 * j for j in range(2)] for i in range(3)], np.float32)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("header,message", [
    ([1, 2], "the safetensors header is a JSON list"),
    ({"w": 3}, "tensor 'w' is described by 3"),
    ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "tensor 'w' is described"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, "tensor 'w' is described"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
     "has data_offsets [0, 16] in 8 bytes of data"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}},
     "of shape [1] (4 bytes) has data_offsets [0, 8]"),
])
def test_a_crafted_safetensors_header_is_one_line(tmp_path, header, message):
  import json
  import struct
  text = json.dumps(header).encode()
  path = tmp_path / "crafted.safetensors"
  path.write_bytes(struct.pack("<Q", len(text)) + text + np.zeros(2, np.float32).tobytes())
  with pytest.raises(BadInputError, match="crafted.safetensors: ") as err:
    weight_files.read_state_dict(str(path))
  assert message in str(err.value) and "\n" not in str(err.value)
  (tmp_path / "short.safetensors").write_bytes(b"\x01\x00")
  with pytest.raises(BadInputError, match="shorter than a safetensors header length"):
    weight_files.read_state_dict(str(tmp_path / "short.safetensors"))
