"""On-device image preprocessing for video-frame modalities (CREMA-D, AVE, KS).

Frames are stored as uint8 (T, S, S, 3) and kept on the device; this module
turns a gathered batch into the model's float input inside the jitted step,
so augmentation costs no host round-trip:

- train: torchvision's `RandomResizedCrop(224)` (area scale U(0.08, 1), log-
  uniform aspect ratio in [3/4, 4/3], up to 10 tries, else a centre crop with
  the ratio clamped) + `RandomHorizontalFlip()`, resampled bilinearly with
  antialiasing (PIL's behaviour). As in OGM-GE, where the transform is called
  once per frame, every frame draws its own crop and flip.
- eval: `Resize((224, 224))`.
- both: /255 and ImageNet mean/std.

Modalities with `image_augment="none"` (spectrograms, features) pass through.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# numpy, not jnp: a module-level device array would start the JAX backend at
# import, before `jax.distributed.initialize` and the compilation cache.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_TRIES = 10


def frame_modalities(config) -> dict[str, int]:
  """{modality: output side} for the modalities that take augmented frames."""
  return {name: int(mod.input_shape[-2]) for name, mod in config.modalities.items()
          if mod.image_augment == "imagenet"}


def crop_box(key, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """(top, left, h, w) as float32 scalars, torchvision's RandomResizedCrop.get_params."""
  area = float(height * width)
  k_scale, k_ratio, k_top, k_left = jax.random.split(key, 4)
  target = area * jax.random.uniform(k_scale, (_TRIES,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(k_ratio, (_TRIES,), minval=math.log(ratio[0]),
                                 maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(target * aspect))
  h = jnp.round(jnp.sqrt(target / aspect))
  ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = jnp.argmax(ok)
  found = ok[first]
  # Fallback: the whole image, its aspect ratio clamped into `ratio`.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = float(width), float(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fh, fw = float(height), float(round(height * ratio[1]))
  else:
    fw, fh = float(width), float(height)
  h = jnp.where(found, h[first], fh)
  w = jnp.where(found, w[first], fw)
  u_top = jax.random.uniform(k_top, ())
  u_left = jax.random.uniform(k_left, ())
  top = jnp.where(found, jnp.floor(u_top * (height - h + 1)), jnp.round((height - h) / 2))
  left = jnp.where(found, jnp.floor(u_left * (width - w + 1)), jnp.round((width - w) / 2))
  return top, left, h, w


def resized_crop(image, top, left, h, w, size: int):
  """The (h, w) crop at (top, left) of a float (H, W, C) image, resized to (size, size)."""
  scale = jnp.stack([size / h, size / w])
  translation = -jnp.stack([top, left]) * scale
  return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                       translation, method="linear", antialias=True)


def _normalise(x):
  return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def train_frame(key, frame, size: int):
  """One uint8 (H, W, 3) frame -> augmented, normalised float (size, size, 3)."""
  k_crop, k_flip = jax.random.split(key)
  height, width = frame.shape[0], frame.shape[1]
  top, left, h, w = crop_box(k_crop, height, width)
  out = resized_crop(frame.astype(jnp.float32), top, left, h, w, size)
  out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)
  return _normalise(out)


def eval_frame(frame, size: int):
  out = jax.image.resize(frame.astype(jnp.float32), (size, size, frame.shape[-1]), "linear",
                         antialias=True)
  return _normalise(out)


def train_inputs(batch: dict, key, frame_sizes: dict[str, int]) -> dict:
  """The batch with every frame modality augmented (other keys untouched)."""
  out = dict(batch)
  for i, (name, size) in enumerate(sorted(frame_sizes.items())):
    frames = batch[name]  # (B, T, H, W, 3) uint8
    keys = jax.random.split(jax.random.fold_in(key, i), frames.shape[0] * frames.shape[1])
    flat = frames.reshape((-1,) + frames.shape[2:])
    aug = jax.vmap(lambda k, f: train_frame(k, f, size))(keys, flat)
    out[name] = aug.reshape(frames.shape[:2] + aug.shape[1:])
  return out


def eval_inputs(batch: dict, frame_sizes: dict[str, int]) -> dict:
  out = dict(batch)
  for name, size in frame_sizes.items():
    frames = batch[name]
    flat = frames.reshape((-1,) + frames.shape[2:])
    res = jax.vmap(lambda f: eval_frame(f, size))(flat)
    out[name] = res.reshape(frames.shape[:2] + res.shape[1:])
  return out
