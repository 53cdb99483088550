"""Audio decoding and the spectrogram recipes of the references, in numpy/scipy.

Written out here (rather than calling librosa or torchaudio) so the exact
recipe is visible and testable and the project installs nothing heavy:

- `cremad_spectrogram`: OGM-GE's CREMA-D/AVE recipe — 22,050 Hz, tiled to 3 s,
  clipped to [-1, 1], `stft(n_fft=512, hop_length=353)`, `log(|S| + 1e-7)`,
  giving 257 x 188. The STFT is librosa's: a periodic Hann window, frames
  centred (`center=True`) with reflect padding — librosa's default when the
  reference was written (librosa 0.10 changed it to zero padding; `pad_mode`
  selects either).
- `log_mel`: a Slaney-style mel filterbank (librosa's default) on the power
  spectrogram, `log(mel + 1e-6)`; used for AV-Digits.
- `kaldi_fbank`: Kaldi/torchaudio `fbank` as OGM-GE's Kinetics-Sounds script
  calls it (25 ms Hann window, 10 ms shift, 128 mel bins, no dither, no
  energy, DC offset removed, pre-emphasis 0.97, snip edges), padded/cropped to
  1,024 frames and normalised (x + 4.503877) / (5.141276 * 2).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.io.wavfile
import scipy.signal

from data_prep.common import BadInputError


def to_float_mono(samples: np.ndarray) -> np.ndarray:
  """PCM of any width (or float) -> float32 mono in [-1, 1]."""
  x = np.asarray(samples)
  if x.dtype == np.uint8:
    x = (x.astype(np.float32) - 128.0) / 128.0
  elif np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
  else:
    x = x.astype(np.float32)
  if x.ndim == 2:
    x = x.mean(axis=1)
  return x


def read_wav(path: str, *, min_seconds: float = 0.0) -> tuple[np.ndarray, int]:
  """(float32 mono samples, rate); BadInputError naming the file if it can't be used."""
  try:
    rate, samples = scipy.io.wavfile.read(path)
  except FileNotFoundError:
    raise BadInputError(f"{path}: file is missing") from None
  except Exception as e:  # scipy raises ValueError/struct.error etc. on garbage
    raise BadInputError(f"{path}: does not decode as a WAV file ({e})") from None
  x = to_float_mono(samples)
  if x.size == 0:
    raise BadInputError(f"{path}: holds no audio samples")
  if not np.all(np.isfinite(x)):
    raise BadInputError(f"{path}: holds non-finite samples")
  if x.size < min_seconds * rate:
    raise BadInputError(f"{path}: clip is {x.size / rate:.3f} s, shorter than the "
                        f"{min_seconds:g} s the recipe needs")
  return x, int(rate)


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
  """Polyphase resampling (scipy); identity when the rates agree."""
  if rate == new_rate:
    return x.astype(np.float32)
  g = math.gcd(rate, new_rate)
  return scipy.signal.resample_poly(x, new_rate // g, rate // g).astype(np.float32)


def tile_to(x: np.ndarray, length: int) -> np.ndarray:
  """Repeat the clip until it is `length` samples long, then cut (OGM-GE's np.tile)."""
  reps = -(-length // len(x))
  return np.tile(x, reps)[:length]


def stft_magnitude(x: np.ndarray, n_fft: int, hop: int, *, pad_mode: str = "reflect"
                   ) -> np.ndarray:
  """|STFT| as librosa computes it (periodic Hann, centred frames): (1 + n_fft/2, frames)."""
  x = np.pad(x.astype(np.float64), n_fft // 2, mode=pad_mode)
  n_frames = 1 + (len(x) - n_fft) // hop
  idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
  window = scipy.signal.get_window("hann", n_fft, fftbins=True)
  return np.abs(np.fft.rfft(x[idx] * window, axis=1)).T


CREMAD_RATE = 22050
CREMAD_SECONDS = 3


def cremad_spectrogram(x: np.ndarray, rate: int, *, pad_mode: str = "reflect") -> np.ndarray:
  """OGM-GE's CREMA-D spectrogram, (257, 188) float32."""
  x = resample(x, rate, CREMAD_RATE)
  x = np.clip(tile_to(x, CREMAD_RATE * CREMAD_SECONDS), -1.0, 1.0)
  return np.log(stft_magnitude(x, 512, 353, pad_mode=pad_mode) + 1e-7).astype(np.float32)


def _hz_to_mel_slaney(f):
  f = np.asarray(f, dtype=np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
                  f / f_sp)


def _mel_to_hz_slaney(m):
  m = np.asarray(m, dtype=np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
  """(n_mels, 1 + n_fft/2) triangular filters, Slaney mel scale and area norm."""
  fmax = rate / 2 if fmax is None else fmax
  fft_freqs = np.linspace(0, rate / 2, 1 + n_fft // 2)
  edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax),
                                        n_mels + 2))
  lower = (fft_freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
  upper = (edges[2:, None] - fft_freqs[None, :]) / np.diff(edges)[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def log_mel(x: np.ndarray, rate: int, *, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
  """log(mel power + 1e-6), (n_mels, frames) float32."""
  power = stft_magnitude(x, n_fft, hop, pad_mode="constant") ** 2
  return np.log(mel_filterbank(rate, n_fft, n_mels) @ power + 1e-6).astype(np.float32)


def add_noise_at_snr(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
  """White Gaussian noise scaled so that signal power / noise power = 10^(snr/10)."""
  power = float(np.mean(x.astype(np.float64) ** 2))
  noise = rng.standard_normal(x.shape) * math.sqrt(power / 10 ** (snr_db / 10))
  return (x + noise).astype(np.float32)


KS_TARGET_FRAMES = 1024
KS_NORM_MEAN, KS_NORM_STD = -4.503877, 5.141276


def _kaldi_mel_banks(n_mels: int, n_fft: int, rate: int, low: float = 20.0,
                     high: float = 0.0) -> np.ndarray:
  """Kaldi's triangular banks on the HTK mel scale (1127 ln(1 + f/700))."""
  nyquist = rate / 2
  high = high if high > 0 else nyquist + high
  mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)
  lo, hi = mel(low), mel(high)
  delta = (hi - lo) / (n_mels + 1)
  left = lo + np.arange(n_mels)[:, None] * delta
  centre, right = left + delta, left + 2 * delta
  bins = mel(rate / n_fft * np.arange(n_fft // 2))[None, :]
  up = (bins - left) / (centre - left)
  down = (right - bins) / (right - centre)
  banks = np.where((bins > left) & (bins < right), np.minimum(up, down), 0.0)
  return np.pad(banks, ((0, 0), (0, 1)))  # Kaldi leaves the Nyquist bin out


def kaldi_fbank(x: np.ndarray, rate: int, *, n_mels: int = 128, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0, preemphasis: float = 0.97) -> np.ndarray:
  """Kaldi log mel filterbank energies, (frames, n_mels) float32 (torchaudio's layout)."""
  x = x.astype(np.float64)
  x = x - x.mean()  # the KS script centres the waveform first
  size, shift = int(rate * frame_length_ms / 1000), int(rate * frame_shift_ms / 1000)
  if len(x) < size:
    raise ValueError(f"{len(x)} samples is shorter than one {frame_length_ms:g} ms frame")
  n_frames = 1 + (len(x) - size) // shift
  frames = x[np.arange(size)[None, :] + shift * np.arange(n_frames)[:, None]]
  frames = frames - frames.mean(axis=1, keepdims=True)
  frames = np.concatenate([frames[:, :1] * (1 - preemphasis),
                           frames[:, 1:] - preemphasis * frames[:, :-1]], axis=1)
  n = np.arange(size)
  frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1)))  # symmetric Hann
  n_fft = 1 << (size - 1).bit_length()
  power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
  mel = power @ _kaldi_mel_banks(n_mels, n_fft, rate).T
  return np.log(np.maximum(mel, np.finfo(np.float32).eps)).astype(np.float32)


def kinetics_sounds_fbank(x: np.ndarray, rate: int) -> np.ndarray:
  """(1024, 128) normalised fbank: OGM-GE's Kinetics-Sounds audio input."""
  fb = kaldi_fbank(x, rate)
  if len(fb) < KS_TARGET_FRAMES:
    fb = np.pad(fb, ((0, KS_TARGET_FRAMES - len(fb)), (0, 0)))
  fb = fb[:KS_TARGET_FRAMES]
  return ((fb - KS_NORM_MEAN) / (KS_NORM_STD * 2)).astype(np.float32)
