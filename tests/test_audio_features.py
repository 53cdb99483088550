"""The spectrogram recipes against independent computations and known signals."""

import numpy as np
import scipy.signal

from data_prep import audio


def _chirp(seconds, rate):
  t = np.arange(int(seconds * rate)) / rate
  return (0.8 * scipy.signal.chirp(t, 100, seconds, 4000)).astype(np.float32)


def test_cremad_spectrogram_matches_scipy_stft_of_the_reference_recipe():
  rate = audio.CREMAD_RATE  # no resampling: the recipe's tiling, clipping, STFT and log
  x = _chirp(1.3, rate) * 1.5  # > 1 in places: must be clipped
  got = audio.cremad_spectrogram(x, rate)
  assert got.shape == (257, 188) and got.dtype == np.float32
  # Independent: np.tile x3 then crop to 3 s (the reference), clip, scipy's STFT
  # with an even (reflect) boundary, rescaled from scipy's 1/sum(window).
  ref = np.clip(np.tile(x, 3)[:rate * 3], -1, 1)
  window = scipy.signal.get_window("hann", 512)
  _, _, z = scipy.signal.stft(ref, fs=rate, window=window, nperseg=512, noverlap=512 - 353,
                              boundary="even", padded=False)
  want = np.abs(z * window.sum())
  assert want.shape == (257, 188)
  # Compare magnitudes (float32 vs float64 differ in the log of near-zero bins).
  np.testing.assert_allclose(np.exp(got) - 1e-7, want, rtol=1e-3, atol=1e-4 * want.max())


def test_cremad_spectrogram_of_a_tone_peaks_at_its_bin_and_resamples_16k():
  bin_hz = audio.CREMAD_RATE / 512
  x = (0.5 * np.sin(2 * np.pi * 40 * bin_hz * np.arange(16000 * 2) / 16000)).astype(np.float32)
  spec = audio.cremad_spectrogram(x, 16000)
  peaks = np.argmax(spec, axis=0)
  seam = round(2 * audio.CREMAD_RATE / 353)  # the 2 s clip is tiled: a jump at 2 s
  steady = [t for t in range(1, 188) if abs(t - seam) > 1]
  assert np.all(peaks[steady] == 40)


def test_tiling_equals_numpy_tile_for_clips_of_at_least_a_second():
  x = np.arange(30000, dtype=np.float32)
  np.testing.assert_array_equal(audio.tile_to(x, 66150), np.tile(x, 3)[:66150])


def test_log_mel_puts_a_tone_in_the_right_band():
  rate = 8000
  x = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate).astype(np.float32)
  mel = audio.log_mel(x, rate, n_fft=256, hop=80, n_mels=40)
  assert mel.shape == (40, 101)
  fb = audio.mel_filterbank(rate, 256, 40)
  bin_1k = int(round(1000 / (rate / 256)))
  assert np.argmax(mel[:, 50]) == np.argmax(fb[:, bin_1k])


def test_kaldi_fbank_frames_and_normalisation():
  rate = 16000
  x = np.sin(2 * np.pi * 440 * np.arange(rate * 2) / rate).astype(np.float32)
  fb = audio.kaldi_fbank(x, rate)
  # snip_edges: 1 + (32000 - 400) // 160 frames of 128 bins
  assert fb.shape == (1 + (32000 - 400) // 160, 128)
  # A 440 Hz tone: the strongest bank is the one whose centre is nearest 440 Hz.
  mel = lambda f: 1127 * np.log(1 + f / 700)
  centres = mel(20) + (np.arange(128) + 1) * (mel(8000) - mel(20)) / 129
  assert abs(int(np.argmax(fb[100])) - int(np.argmin(abs(centres - mel(440))))) <= 1
  ks = audio.kinetics_sounds_fbank(x, rate)
  assert ks.shape == (1024, 128)
  np.testing.assert_allclose(ks[:len(fb)], (fb - audio.KS_NORM_MEAN) / (2 * audio.KS_NORM_STD),
                             rtol=1e-6)
  np.testing.assert_allclose(ks[len(fb):], -audio.KS_NORM_MEAN / (2 * audio.KS_NORM_STD))


def test_noise_at_snr_has_the_requested_power_ratio():
  rng = np.random.default_rng(0)
  x = np.sin(np.arange(100000) / 7).astype(np.float32)
  noisy = audio.add_noise_at_snr(x, 6.0, rng)
  snr = 10 * np.log10(np.mean(x ** 2) / np.mean((noisy - x) ** 2))
  assert abs(snr - 6.0) < 0.1
