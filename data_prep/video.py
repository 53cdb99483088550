"""Video decoding (PyAV, which ships its own FFmpeg) and frame selection.

The references extract frames at 1 fps with ffmpeg and pick T of them; here
the same happens in memory: decode, keep for every whole second k the frame
nearest to k s (what ffmpeg's `fps=1` filter outputs), pick T, and resize each
to a square `size` x `size` for storage (squashing the aspect ratio, as the
references' eval `Resize((224, 224))` does; training's RandomResizedCrop then
crops from the stored frame).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
from PIL import Image

from data_prep.common import BadInputError


def _open(path: str):
  import av
  try:
    return av.open(path)
  except FileNotFoundError:
    raise BadInputError(f"{path}: file is missing") from None
  except Exception as e:  # av.error.* on undecodable input
    raise BadInputError(f"{path}: does not decode as a video ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _decoding(path: str, kind: str):
  """The opened container; any decoding failure becomes a BadInputError naming the file."""
  container = _open(path)
  try:
    if not getattr(container.streams, kind):
      raise BadInputError(f"{path}: has no {kind} stream")
    yield container
  except BadInputError:
    raise
  except Exception as e:  # av.error.* on a damaged stream
    raise BadInputError(f"{path}: {kind} stream does not decode ({type(e).__name__}: {e})") from None
  finally:
    container.close()


def frames_at_1fps(path: str) -> list[np.ndarray]:
  """RGB uint8 frames, one per whole second of the clip (ffmpeg `fps=1`)."""
  best: dict[int, tuple[float, np.ndarray]] = {}
  with _decoding(path, "video") as container:
    for frame in container.decode(video=0):
      if frame.time is None:
        continue
      second = int(math.floor(frame.time + 0.5))
      gap = abs(frame.time - second)
      if second not in best or gap < best[second][0]:
        best[second] = (gap, frame.to_ndarray(format="rgb24"))
  return [best[k][1] for k in sorted(best)]


def uniform_indices(n: int, count: int, *, centred: bool) -> list[int]:
  """`count` indices spread over n: centred in equal segments, or each segment's
  first (the AVE/KS reference: seg = n // count, index seg * i)."""
  if centred:
    return [int((i + 0.5) * n / count) for i in range(count)]
  seg = n // count
  return [seg * i for i in range(count)]


def select_frames(path: str, count: int, size: int, *, centred: bool) -> np.ndarray:
  """(count, size, size, 3) uint8 from the clip's 1-fps frames."""
  frames = frames_at_1fps(path)
  if len(frames) < count:
    raise BadInputError(f"{path}: clip gives {len(frames)} frame(s) at 1 fps, shorter than the "
                        f"{count} frame(s) the config needs")
  picked = [frames[i] for i in uniform_indices(len(frames), count, centred=centred)]
  return np.stack([resize_square(f, size) for f in picked])


def resize_square(frame: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR), np.uint8)


def load_image(path: str, size: int) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return resize_square(np.asarray(im.convert("RGB")), size)
  except FileNotFoundError:
    raise BadInputError(f"{path}: file is missing") from None
  except Exception as e:
    raise BadInputError(f"{path}: does not decode as an image ({e})") from None


def audio_track(path: str, rate: int) -> np.ndarray:
  """The clip's audio as float32 mono at `rate` Hz."""
  import av
  with _decoding(path, "audio") as container:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    for frame in container.decode(audio=0):
      for out in resampler.resample(frame):
        chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
      chunks.append(out.to_ndarray().reshape(-1))
  if not chunks:
    raise BadInputError(f"{path}: audio stream holds no samples")
  return np.concatenate(chunks).astype(np.float32)
