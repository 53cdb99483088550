"""The torchvision ResNet-18 fixture, rebuilt without torch.

A torchvision `resnet18` checkpoint is 45 MB of random numbers; committing
one would bloat the repository. Instead its weights are drawn from a seeded
NumPy generator (`fixture_weights`, one stream per tensor name), and the
fixture keeps only what torch itself wrote around them: every member of the
zip that `torch.save` produced (`data.pkl`, `byteorder`, version records)
verbatim, and for each storage record the tensor whose bytes it holds and
the SHA-256 torch's copy had. `rebuild_pth` writes those members back into a
zip, checking every record's SHA-256, so the file the test reads holds
exactly the bytes torch wrote. The fixture (`archive.json`, and `io.npz`:
inputs and torchvision's eval-mode features for them) was made by
`tests/fixtures/torchvision_resnet18/make_fixture.py` with torch and
torchvision installed; see that script.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
import zlib

import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_resnet18")


def fixture_weights(shapes: dict[str, tuple[list[int], str]]) -> dict[str, np.ndarray]:
  """Seeded weights for a state dict of {name: (shape, dtype)}.

  Not torchvision's init: BatchNorm gets non-trivial scale, shift and running
  statistics, so a mix-up among them changes the features."""
  out = {}
  for name, (shape, dtype) in shapes.items():
    rng = np.random.default_rng([7, zlib.crc32(name.encode())])
    leaf = name.rsplit(".", 1)[-1]
    if dtype == "int64":
      value = np.zeros(shape, np.int64)
    elif leaf == "weight" and len(shape) == 4:        # conv: He init, fan out
      value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[2] * shape[3])), shape)
    elif leaf in ("weight", "running_var") and len(shape) == 1:   # BN scale, variance
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf in ("bias", "running_mean"):
      value = rng.normal(0.0, 0.1, shape)
    else:                                              # fc.weight
      value = rng.normal(0.0, 0.01, shape)
    out[name] = np.asarray(value, dtype)
  return out


def load_manifest() -> dict:
  with open(os.path.join(FIXTURE_DIR, "archive.json")) as f:
    return json.load(f)


def rebuild_pth(out_path: str) -> str:
  """Writes the torch.save file of the fixture to `out_path` (SHA-256 checked)."""
  manifest = load_manifest()
  weights = fixture_weights({k: tuple(v) for k, v in manifest["tensors"].items()})
  with zipfile.ZipFile(out_path, "w", zipfile.ZIP_STORED) as archive:
    for member in manifest["members"]:
      if "tensor" in member:
        data = np.ascontiguousarray(weights[member["tensor"]]).tobytes()
      else:
        data = base64.b64decode(member["content"])
      digest = hashlib.sha256(data).hexdigest()
      if digest != member["sha256"]:
        raise AssertionError(f"fixture member {member['name']}: SHA-256 {digest} is not "
                             f"what torch wrote ({member['sha256']})")
      archive.writestr(member["name"], data)
  return out_path


def torchvision_outputs() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURE_DIR, "io.npz")) as npz:
    return {k: npz[k] for k in npz.files}
