"""Reads a PyTorch state dict from a file into NumPy arrays, without torch.

Three formats, told apart by content, not by name:

- `.pth` / `.pt` as written by `torch.save` since torch 1.6: a zip holding
  `<name>/data.pkl` (the pickled dict, where every tensor is a call to
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and
  every storage a "persistent id" naming a record `<name>/data/<key>`), the
  raw bytes of each storage, and `<name>/byteorder`. The pickle is read by an
  unpickler that knows only those few names (an ordered dict, the tensor and
  parameter rebuild functions and the storage dtypes) and refuses anything
  else, so loading a file cannot run code from it (unlike `torch.load` with
  `weights_only=False`). Torch's older non-zip format is refused with the
  way out (re-save, or export `.npz`).
- `.safetensors`: an 8-byte little-endian header length, a JSON header of
  {name: {dtype, shape, data_offsets}}, then the bytes.
- `.npz`: one array per state-dict name, in PyTorch's layout.

A checkpoint that wraps the state dict (`{"state_dict": ...}` or
`{"model": ...}`) is unwrapped, and a DataParallel `module.` prefix is
removed. Every problem is a `BadInputError` naming the file.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np

from data_prep.common import BadInputError

# torch.<Name>Storage -> the NumPy dtype of its elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _is_index(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_rebuilder(path: str):
  """`torch._utils._rebuild_tensor_v2` for `path`: the view (offset, size,
  stride) is checked against its storage before NumPy reads it, so a damaged
  or crafted file cannot make the reader touch memory outside the storage."""

  def rebuild(storage, offset, size, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata
    if not isinstance(storage, np.ndarray):
      raise BadInputError(f"{path}: a tensor whose storage is {type(storage).__name__}, "
                          "not a storage record")
    size, stride = tuple(size), tuple(stride)
    if not (_is_index(offset) and all(map(_is_index, size)) and all(map(_is_index, stride))
            and len(size) == len(stride)):
      raise BadInputError(f"{path}: a tensor with offset {offset!r:.40}, size {size!r:.60} "
                          f"and stride {stride!r:.60}, which no tensor has; the file is "
                          "damaged or not torch's")
    if any(n == 0 for n in size):
      return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= len(storage):
      raise BadInputError(f"{path}: a tensor of size {list(size)} (stride {list(stride)}, "
                          f"offset {offset}) reaches element {last} of a storage of "
                          f"{len(storage)}; the file is damaged or crafted")
    if not size:
      return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(st * itemsize for st in stride))
    return np.ascontiguousarray(view)

  return rebuild


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _StateDictUnpickler(pickle.Unpickler):
  """Knows only what a state dict of tensors is made of."""

  def __init__(self, file, read_record, path: str, byteorder: str):
    super().__init__(file)
    self._read_record = read_record
    self._path = path
    self._swap = byteorder != sys.byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _tensor_rebuilder(self._path)
    if (module, name) in (("torch._utils", "_rebuild_parameter"),
                          ("torch._utils", "_rebuild_parameter_with_state")):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise BadInputError(
        f"{self._path}: holds a {module}.{name}, not only tensors; save "
        f"model.state_dict() (or export the weights as .npz / .safetensors)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise BadInputError(f"{self._path}: unexpected storage record {pid!r:.80}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self._storages:
      raw = self._read_record(key)
      if len(raw) != numel * storage_type.dtype.itemsize:
        raise BadInputError(f"{self._path}: storage {key} has {len(raw)} bytes, expected "
                            f"{numel} x {storage_type.dtype.itemsize}")
      stored = np.frombuffer(raw, storage_type.dtype)
      # a file from a machine of the other byte order: its values in this one's
      self._storages[key] = stored.byteswap() if self._swap else stored
    return self._storages[key]


def _read_torch_zip(path: str) -> dict:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise BadInputError(f"{path}: a zip but not a torch.save file (no single data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    order = (archive.read(prefix + "byteorder").decode().strip()
             if prefix + "byteorder" in names else "little")

    def read_record(key: str) -> bytes:
      try:
        return archive.read(f"{prefix}data/{key}")
      except KeyError:
        raise BadInputError(f"{path}: storage record data/{key} is missing") from None

    return _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), read_record, path,
                               order).load()


def _read_safetensors(path: str) -> dict:
  """The safetensors layout, every field of the header checked before it is used."""
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise BadInputError(f"{path}: {len(blob)} bytes, shorter than a safetensors header length")
  (header_len,) = struct.unpack("<Q", blob[:8])
  if header_len > len(blob) - 8:
    raise BadInputError(f"{path}: safetensors header says {header_len} bytes, file is shorter")
  header = json.loads(blob[8:8 + header_len])
  if not isinstance(header, dict):
    raise BadInputError(f"{path}: the safetensors header is a JSON {type(header).__name__}, "
                        "not an object of tensors")
  data = memoryview(blob)[8 + header_len:]
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list) and all(map(_is_index, entry["shape"]))
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
            and all(map(_is_index, entry["data_offsets"]))):
      raise BadInputError(f"{path}: tensor {name!r:.60} is described by {entry!r:.80}, not by "
                          "dtype, shape (non-negative integers) and two data_offsets")
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise BadInputError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, not supported")
    start, end = entry["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
    want = int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize
    if not start <= end <= len(data) or end - start != want:
      raise BadInputError(f"{path}: tensor {name!r} of shape {entry['shape']} ({want} bytes) "
                          f"has data_offsets [{start}, {end}] in {len(data)} bytes of data")
    out[name] = np.frombuffer(data[start:end], dtype).reshape(entry["shape"]).copy()
  return out


def _unwrap(loaded, path: str) -> dict:
  if isinstance(loaded, dict):
    for key in ("state_dict", "model"):
      if isinstance(loaded.get(key), dict):
        loaded = loaded[key]
        break
  if not isinstance(loaded, dict) or not loaded:
    raise BadInputError(f"{path}: holds no state dict of tensors")
  arrays = {}
  for name, value in loaded.items():
    if not isinstance(value, np.ndarray):
      continue  # e.g. torch's _metadata, or a training epoch count beside the weights
    arrays[name[len("module."):] if name.startswith("module.") else name] = value
  if not arrays:
    raise BadInputError(f"{path}: holds no tensors")
  return arrays


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of the state dict in `path` (.pth/.pt, .safetensors or .npz)."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise BadInputError(f"{path}: no such file")
  with open(path, "rb") as f:
    head = f.read(8)
  try:
    if head.startswith(b"PK"):
      if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
          return _unwrap({k: npz[k] for k in npz.files}, path)
      return _unwrap(_read_torch_zip(path), path)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
      raise BadInputError(
          f"{path}: saved in torch's legacy (pre-1.6, non-zip) format; re-save it with "
          f"torch >= 1.6 or export the weights as .npz / .safetensors")
    if path.endswith(".safetensors"):
      return _unwrap(_read_safetensors(path), path)
  except BadInputError:
    raise
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, KeyError,
          json.JSONDecodeError, struct.error) as e:
    raise BadInputError(f"{path}: cannot be read as a weight file "
                        f"({type(e).__name__}: {e})") from None
  raise BadInputError(f"{path}: not a torch.save .pth, .safetensors or .npz file")
