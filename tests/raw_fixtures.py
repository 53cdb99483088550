"""Tiny raw datasets in the real layouts, written by the tests themselves."""

from __future__ import annotations

import os
import pickle

import numpy as np
import scipy.io.wavfile


def write_wav(path: str, x: np.ndarray, rate: int) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scipy.io.wavfile.write(path, rate, (np.clip(x, -1, 1) * 32767).astype(np.int16))
  return path


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_video(path: str, seconds: float, *, fps: int = 10, size=(48, 64), fmt: str = "mp4",
                codec: str = "mpeg4", colour_of_second=None, audio: np.ndarray | None = None,
                audio_rate: int = 16000) -> str:
  """A clip whose frames in second k are one flat colour (`colour_of_second(k)`)."""
  import av
  os.makedirs(os.path.dirname(path), exist_ok=True)
  colour_of_second = colour_of_second or (lambda k: (40 * k % 256, 100, 200))
  container = av.open(path, "w", format=fmt)
  stream = container.add_stream(codec, rate=fps)
  stream.height, stream.width = size
  stream.pix_fmt = "yuv420p"
  a_stream = None
  if audio is not None:
    a_stream = container.add_stream("aac", rate=audio_rate)
    a_stream.layout = "mono"
  for i in range(int(seconds * fps)):
    rgb = np.zeros(size + (3,), np.uint8)
    rgb[:] = colour_of_second(i // fps)
    for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  if a_stream is not None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    chunk = 1024
    for start in range(0, len(pcm), chunk):
      frame = av.AudioFrame.from_ndarray(pcm[None, start:start + chunk], format="s16",
                                         layout="mono")
      frame.sample_rate = audio_rate
      for packet in a_stream.encode(frame):
        container.mux(packet)
    for packet in a_stream.encode():
      container.mux(packet)
  container.close()
  return path


def cremad_raw(root: str, clips: dict[str, float], *, rate: int = 16000) -> str:
  """AudioWAV/ + VideoFlash/ for {clip id: seconds}; audio tone depends on the emotion."""
  freqs = {"NEU": 200, "HAP": 300, "SAD": 400, "FEA": 500, "DIS": 600, "ANG": 700}
  for clip, seconds in clips.items():
    write_wav(os.path.join(root, "AudioWAV", clip + ".wav"),
              tone(freqs[clip.split("_")[2]], seconds, rate), rate)
    write_video(os.path.join(root, "VideoFlash", clip + ".flv"), seconds, fmt="flv", codec="flv")
  return root


def mmsa_pickle(path, dims=(768, 33, 709), sizes=(12, 5, 6), steps=(39, 55, 55)):
  """A small MMSA-format pickle at `path` (BERT text mask, audio/vision lengths,
  one -inf in train audio as MOSEI has); returns its dict."""
  rng = np.random.default_rng(1)
  data = {}
  for split, n in zip(("train", "valid", "test"), sizes):
    mask = np.zeros((n, steps[0]))
    text_len = rng.integers(5, steps[0], n)
    for i, l in enumerate(text_len):
      mask[i, :l] = 1
    data[split] = {
        "text": rng.standard_normal((n, steps[0], dims[0])).astype(np.float32),
        "text_bert": np.stack([np.zeros((n, steps[0])), mask, np.zeros((n, steps[0]))], 1),
        "audio": rng.standard_normal((n, steps[1], dims[1])).astype(np.float32),
        "vision": rng.standard_normal((n, steps[2], dims[2])).astype(np.float32),
        "audio_lengths": rng.integers(1, steps[1], n),
        "vision_lengths": rng.integers(1, steps[2], n),
        "regression_labels": np.round(rng.uniform(-1, 1, n) * 5) / 5,
        "id": np.array([f"{split}_{i}" for i in range(n)]),
    }
  data["train"]["audio"][0, 0, 0] = -np.inf  # MOSEI-style
  with open(path, "wb") as f:
    pickle.dump(data, f)
  return data
