"""Builders on tiny raw fixtures in the real layouts; bad input; AV-Digits from ../shared/data."""

from __future__ import annotations

import glob
import json
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

import raw_fixtures as rf
from conftest import ROOT
from data_prep import ave, av_digits, build, cremad, kinetics_sounds, mmsa, npz
from data_prep.common import BadInputError, prepare

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def _read(builder, split):
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


def _no_half_written(data_dir):
  leftovers = glob.glob(os.path.join(data_dir, "**", "*incomplete*"), recursive=True)
  assert not leftovers, leftovers


# ---------------------------------------------------------------- CREMA-D

def _cremad_clips():
  return {f"10{a:02d}_DFA_{e}_XX": 2.5 for a in (1, 2, 3) for e in cremad.CLASSES}


def _break_wavs(raw, clips):
  """Overwrite the clips' WAV files with bytes that do not decode."""
  for clip in clips:
    with open(os.path.join(raw, "AudioWAV", clip + ".wav"), "wb") as f:
      f.write(b"this is not a wav file at all")
  return [os.path.join(raw, "AudioWAV", clip + ".wav") for clip in clips]


def _small_cremad(test_list):
  return cremad.make_config(frame_size=32, test_list=test_list, validation_fraction=0.25)


@pytest.fixture
def cremad_raw(tmp_path):
  clips = _cremad_clips()
  raw = rf.cremad_raw(str(tmp_path / "raw"), clips)
  test_list = tmp_path / "test.txt"
  test_list.write_text("\n".join(c for c in clips if c.startswith("1003")) + "\n")
  return raw, str(test_list)


def test_cremad_builds_shapes_labels_splits(cremad_raw, tmp_path):
  raw, test_list = cremad_raw
  cfg = cremad.make_config(frames=3, frame_size=32, test_list=test_list, validation_fraction=0.25)
  b = cremad.CremaD(config=cfg, data_dir=str(tmp_path / "tfds"))
  prepare(b, raw_dir=raw)
  sizes = {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")}
  assert sizes == {"train": 9, "validation": 3, "test": 6}
  test = _read(b, "test")
  assert test["audio"].shape == (6, 257, 188, 1) and test["audio"].dtype == np.float32
  assert test["visual"].shape == (6, 3, 32, 32, 3) and test["visual"].dtype == np.uint8
  labels = {c.decode(): int(l) for c, l in zip(test["clip"], test["label"])}
  assert labels == {c: cremad.CLASSES.index(c.split("_")[2]) for c in _cremad_clips()
                    if c.startswith("1003")}
  # 2.5 s at 1 fps gives frames at 0, 1, 2 s; the fixture colours second k with red 40k.
  np.testing.assert_allclose(test["visual"][0, :, 16, 16, 0], [0, 40, 80], atol=6)
  # The stored spectrogram is the recipe applied to the wav.
  x, rate = rf_read(os.path.join(raw, "AudioWAV", test["clip"][0].decode() + ".wav"))
  from data_prep import audio
  np.testing.assert_allclose(test["audio"][0, ..., 0], audio.cremad_spectrogram(x, rate), atol=1e-5)


def rf_read(path):
  from data_prep import audio
  return audio.read_wav(path)


def test_shipped_cremad_test_list_has_the_744_ogm_ge_clips():
  ids = [l.strip() for l in open(cremad.TEST_LIST) if l.strip() and not l.startswith("#")]
  assert len(ids) == len(set(ids)) == 744
  assert all(cremad.label_of(i) in range(6) for i in ids)


def test_cremad_split_list_naming_a_missing_clip_fails_and_leaves_nothing(cremad_raw, tmp_path):
  raw, _ = cremad_raw  # the shipped list names 744 clips the fixture does not have
  data_dir = str(tmp_path / "tfds")
  b = cremad.CremaD(config=cremad.make_config(frame_size=32), data_dir=data_dir)
  with pytest.raises(BadInputError, match=r"cremad_test.txt: \d{4}_.*split list names a clip"):
    prepare(b, raw_dir=raw)
  assert not b.is_prepared()
  _no_half_written(data_dir)


def test_cremad_corrupt_wav_fails_naming_it_and_skip_bad_counts_it(cremad_raw, tmp_path):
  raw, test_list = cremad_raw
  bad, = _break_wavs(raw, ["1001_DFA_HAP_XX"])
  data_dir = str(tmp_path / "tfds")
  cfg = _small_cremad(test_list)
  with pytest.raises(BadInputError, match="1001_DFA_HAP_XX.wav: does not decode as a WAV"):
    prepare(cremad.CremaD(config=cfg, data_dir=data_dir), raw_dir=raw)
  _no_half_written(data_dir)
  assert not cremad.CremaD(config=cfg, data_dir=data_dir).is_prepared()
  b = cremad.CremaD(config=cfg, data_dir=data_dir, skip_bad=True)
  prepare(b, raw_dir=raw)
  assert b.bad_files.skipped == [(bad, b.bad_files.skipped[0][1])]
  assert "skipped 1 bad file" in b.bad_files.summary()
  total = sum(b.info.splits[s].num_examples for s in ("train", "validation", "test"))
  assert total == 17


def test_skip_bad_emptying_a_split_is_one_error_naming_the_split(cremad_raw, tmp_path):
  """TFDS would fail with 'Failed to finalize writing of split'; the build says
  which split is empty and why."""
  raw, test_list = cremad_raw
  _break_wavs(raw, [c for c in _cremad_clips() if c.startswith("1003")])  # every test clip
  data_dir = str(tmp_path / "tfds")
  cfg = _small_cremad(test_list)
  with pytest.raises(BadInputError) as err:
    prepare(cremad.CremaD(config=cfg, data_dir=data_dir, skip_bad=True), raw_dir=raw)
  assert str(err.value) == (f"{raw}: the test split has no examples (--skip_bad left out 6 bad "
                            "file(s))")
  _no_half_written(data_dir)


def test_a_skip_bad_build_is_not_reused_by_a_strict_build(cremad_raw, tmp_path):
  raw, test_list = cremad_raw
  _break_wavs(raw, ["1001_DFA_HAP_XX"])
  data_dir = str(tmp_path / "tfds")
  cfg = _small_cremad(test_list)
  lenient = cremad.CremaD(config=cfg, data_dir=data_dir, skip_bad=True)
  prepare(lenient, raw_dir=raw)
  assert lenient.builder_config.name == cfg.name + "_skipbad"
  strict = cremad.CremaD(config=cfg, data_dir=data_dir)
  assert not strict.is_prepared()  # a different dataset: one file fewer
  with pytest.raises(BadInputError, match="1001_DFA_HAP_XX.wav: does not decode as a WAV"):
    prepare(strict, raw_dir=raw)
  assert cremad.CremaD(config=cfg, data_dir=data_dir, skip_bad=True).is_prepared()


def _idx_gz(path, array):
  import gzip
  header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_a_truncated_mnist_gz_is_named_with_or_without_skip_bad(tmp_path, capsys):
  raw = tmp_path / "raw"
  os.makedirs(raw / "mnist")
  for s in ("theo", "nicolas", "lucas"):
    rf.write_wav(str(raw / "fsdd" / "recordings" / f"3_{s}_0.wav"), rf.tone(300, 0.5, 8000), 8000)
  images = str(raw / "mnist" / "t10k-images-idx3-ubyte.gz")
  _idx_gz(images, np.zeros((20, 28, 28)))
  _idx_gz(str(raw / "mnist" / "t10k-labels-idx1-ubyte.gz"), np.arange(20) % 10)
  data = open(images, "rb").read()
  open(images, "wb").write(data[:len(data) // 2])
  for extra in ([], ["--skip_bad"]):
    assert build.main(["av_digits", "--raw_dir", str(raw), "--data_dir",
                       str(tmp_path / "tfds"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {images}: cannot be read as an IDX file (")
    assert "\n" not in err and "Traceback" not in err
  _no_half_written(str(tmp_path / "tfds"))


def test_cremad_short_clip_and_missing_video_are_named(cremad_raw, tmp_path):
  raw, test_list = cremad_raw
  rf.write_wav(os.path.join(raw, "AudioWAV", "1002_DFA_SAD_XX.wav"), rf.tone(400, 0.5, 16000), 16000)
  cfg = cremad.make_config(frame_size=32, test_list=test_list, validation_fraction=0.25)
  with pytest.raises(BadInputError, match="1002_DFA_SAD_XX.wav: clip is 0.500 s, shorter than"):
    prepare(cremad.CremaD(config=cfg, data_dir=str(tmp_path / "a")), raw_dir=raw)
  os.remove(os.path.join(raw, "VideoFlash", "1001_DFA_ANG_XX.flv"))
  with pytest.raises(BadInputError, match="1001_DFA_ANG_XX.flv: file is missing"):
    prepare(cremad.CremaD(config=cfg, data_dir=str(tmp_path / "b")), raw_dir=raw)


def test_cremad_video_too_short_for_three_frames(cremad_raw, tmp_path):
  raw, test_list = cremad_raw
  rf.write_video(os.path.join(raw, "VideoFlash", "1001_DFA_NEU_XX.flv"), 1.2, fmt="flv",
                 codec="flv")
  cfg = cremad.make_config(frames=3, frame_size=32, test_list=test_list)
  with pytest.raises(BadInputError, match=r"1001_DFA_NEU_XX.flv: clip gives 2 frame\(s\) at 1 fps, shorter than the 3"):
    prepare(cremad.CremaD(config=cfg, data_dir=str(tmp_path / "t")), raw_dir=raw)


def test_missing_raw_dir_is_named(tmp_path):
  b = cremad.CremaD(config=cremad.make_config(), data_dir=str(tmp_path / "t"))
  with pytest.raises(BadInputError, match="nowhere: crema_d raw directory does not exist"):
    prepare(b, raw_dir=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- AVE

def _ave_raw(root, *, categories=("Dog", "Guitar", "Train")):
  rng = np.random.default_rng(0)
  lists = {"trainSet.txt": [], "valSet.txt": [], "testSet.txt": []}
  for i in range(12):
    vid = f"vid{i:03d}"
    cat = categories[i % len(categories)]
    split = ["trainSet.txt"] * 2 + ["valSet.txt", "testSet.txt"]
    lists[split[i % 4]].append(f"{cat}&{vid}&good&0&10")
    os.makedirs(os.path.join(root, "audio_spec"), exist_ok=True)
    with open(os.path.join(root, "audio_spec", vid + ".pkl"), "wb") as f:
      pickle.dump(rng.standard_normal((257, 40)).astype(np.float32), f)
    frames = os.path.join(root, "visual", vid)
    os.makedirs(frames, exist_ok=True)
    from PIL import Image
    for k in range(1, 8):
      Image.fromarray(np.full((36, 48, 3), 30 * k, np.uint8)).save(
          os.path.join(frames, f"frame_{k:05d}.jpg"))
  for name, rows in lists.items():
    with open(os.path.join(root, name), "w") as f:
      f.write("\n".join(rows) + "\n")
  with open(os.path.join(root, "stat.txt"), "w") as f:
    f.write("\n".join(sorted(categories)) + "\n")
  return root


def test_ave_official_and_random_split(tmp_path):
  raw = _ave_raw(str(tmp_path / "raw"))
  b = ave.Ave(config=ave.make_config(frames=3, frame_size=24), raw_dir=raw,
              data_dir=str(tmp_path / "tfds"))
  prepare(b, raw_dir=raw)
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 6, "validation": 3, "test": 3}
  d = _read(b, "train")
  assert d["audio"].shape == (6, 257, 40, 1) and d["visual"].shape == (6, 3, 24, 24, 3)
  assert b.info.features["label"].names == ["Dog", "Guitar", "Train"]
  # 7 frames, T=3: segment 2, frames 0, 2, 4 (names frame_00001, 3, 5) -> 30, 90, 150
  np.testing.assert_allclose(d["visual"][0, :, 5, 5, 0], [30, 90, 150], atol=4)
  r = ave.Ave(config=ave.make_config(split="random_80_20", frame_size=24), raw_dir=raw,
              data_dir=str(tmp_path / "tfds"))
  prepare(r, raw_dir=raw)
  sizes = {s: r.info.splits[s].num_examples for s in ("train", "validation", "test")}
  assert sizes["test"] == 2 and sizes["train"] + sizes["validation"] == 10


def test_ave_category_outside_the_class_list(tmp_path):
  raw = _ave_raw(str(tmp_path / "raw"))
  with open(os.path.join(raw, "testSet.txt"), "a") as f:
    f.write("Banjo&vid000&good&0&10\n")
  b = ave.Ave(config=ave.make_config(frame_size=24), raw_dir=raw, data_dir=str(tmp_path / "t"))
  with pytest.raises(BadInputError, match=r"testSet.txt: vid000: category 'Banjo' is not in"):
    prepare(b, raw_dir=raw)


# ---------------------------------------------------------------- Kinetics-Sounds

def test_kinetics_sounds_from_raw_video_with_audio(tmp_path):
  raw = str(tmp_path / "raw")
  rows = {"train.txt": [], "test.txt": []}
  for i in range(5):
    vid = f"clip{i}_{i * 3}"
    rf.write_video(os.path.join(raw, "videos", vid + ".mp4"), 3.2, size=(32, 40),
                   audio=rf.tone(300 + 100 * i, 3.2, 16000))
    rows["train.txt" if i < 4 else "test.txt"].append(f"{vid},10,{i % 2}")
  for name, r in rows.items():
    with open(os.path.join(raw, name), "w") as f:
      f.write("\n".join(r) + "\n")
  with open(os.path.join(raw, "classes.txt"), "w") as f:
    f.write("playing drums\nplaying guitar\n")
  cfg = kinetics_sounds.make_config(frame_size=24, validation_fraction=0.25)
  b = kinetics_sounds.KineticsSounds(config=cfg, raw_dir=raw, data_dir=str(tmp_path / "tfds"))
  prepare(b, raw_dir=raw)
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 3, "validation": 1, "test": 1}
  d = _read(b, "test")
  assert d["audio"].shape == (1, 1024, 128, 1) and d["visual"].shape == (1, 3, 24, 24, 3)
  assert b.info.features["label"].names == ["playing drums", "playing guitar"]
  assert int(d["label"][0]) == 0


def test_kinetics_sounds_missing_video_and_bad_label(tmp_path):
  raw = str(tmp_path / "raw")
  rf.write_video(os.path.join(raw, "videos", "a.mp4"), 3.2, audio=rf.tone(300, 3.2, 16000))
  with open(os.path.join(raw, "train.txt"), "w") as f:
    f.write("a,10,0\nb,10,1\n")
  with open(os.path.join(raw, "test.txt"), "w") as f:
    f.write("a,10,0\n")
  with open(os.path.join(raw, "classes.txt"), "w") as f:
    f.write("x\ny\n")
  b = kinetics_sounds.KineticsSounds(raw_dir=raw, data_dir=str(tmp_path / "t"))
  with pytest.raises(BadInputError, match=r"videos/b.mp4: file is missing \(named by train.txt\)"):
    prepare(b, raw_dir=raw)
  with open(os.path.join(raw, "train.txt"), "w") as f:
    f.write("a,10,0\na,10,1\n")
  with open(os.path.join(raw, "test.txt"), "w") as f:
    f.write("a,10,7\n")
  b = kinetics_sounds.KineticsSounds(raw_dir=raw, data_dir=str(tmp_path / "t2"))
  with pytest.raises(BadInputError, match="test.txt: a: label '7' is not in the class list"):
    prepare(b, raw_dir=raw)


# ---------------------------------------------------------------- MMSA

def test_mmsa_names_sims_pools_with_masks_and_normalises_on_train(tmp_path):
  path = str(tmp_path / "unaligned_39.pkl")
  data = rf.mmsa_pickle(path)
  b = mmsa.builder_for_file(path, data_dir=str(tmp_path / "tfds"))
  assert b.builder_config.name.startswith("ch_sims_unaligned_39_")  # not "MOSEI"
  prepare(b)
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 12, "validation": 5, "test": 6}
  train, test = _read(b, "train"), _read(b, "test")
  assert train["text"].shape == (12, 768) and train["audio"].shape == (12, 33)
  assert train["vision"].shape == (12, 709)
  # Masked mean pooling, then train statistics applied to test.
  def pooled(split, i):
    d = data[split]
    l = int(d["vision_lengths"][i])
    return d["vision"][i, :l].mean(0)
  raw_train = np.stack([pooled("train", i) for i in range(12)])
  mean, std = raw_train.mean(0), raw_train.std(0)
  order = [int(s.decode().split("_")[1]) for s in test["id"]]
  want = np.stack([(pooled("test", i) - mean) / std for i in order])
  np.testing.assert_allclose(test["vision"], want, rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(train["audio"]))
  np.testing.assert_allclose(train["text"].mean(0), 0, atol=1e-5)
  y = data["test"]["regression_labels"][order]
  np.testing.assert_array_equal(test["label"], np.where(y <= -0.1, 0, np.where(y <= 0.1, 1, 2)))
  np.testing.assert_array_equal(test["label_binary"], (y >= 0).astype(int))


def test_mmsa_sequences_keep_steps_with_a_mask_column(tmp_path):
  """pooling=none: (T, D+1) per modality; the last column is the mask (BERT
  mask for text, *_lengths for audio/vision); real steps standardised with the
  train split's real-step statistics, padding 0; a separate `_seq` dataset."""
  path = str(tmp_path / "unaligned_39.pkl")
  data = rf.mmsa_pickle(path)
  b = mmsa.builder_for_file(path, pooling="none", data_dir=str(tmp_path / "tfds"))
  assert b.builder_config.name.endswith("_seq")
  prepare(b)
  train, test = _read(b, "train"), _read(b, "test")
  assert train["text"].shape == (12, 39, 769) and train["audio"].shape == (12, 55, 34)
  order = [int(s.decode().split("_")[1]) for s in test["id"]]
  lengths = data["test"]["vision_lengths"][order]
  np.testing.assert_array_equal(test["vision"][..., -1],
                                (np.arange(55)[None] < lengths[:, None]).astype(np.float32))
  np.testing.assert_array_equal(test["text"][..., -1], data["test"]["text_bert"][order, 1])
  real = np.concatenate([data["train"]["vision"][i, :data["train"]["vision_lengths"][i]]
                         for i in range(12)])
  mean, std = real.mean(0), real.std(0)
  i = 0
  n = int(lengths[i])
  np.testing.assert_allclose(test["vision"][i, :n, :-1],
                             (data["test"]["vision"][order[i], :n] - mean) / std,
                             rtol=1e-4, atol=1e-4)
  assert np.all(test["vision"][i, n:] == 0)
  assert np.all(np.isfinite(train["audio"]))      # the -inf became 0 before the statistics


def test_mmsa_three_class_rules():
  y = np.array([-1.0, -0.6, -0.4, 0.0, 0.4, 0.6, 3.0])
  np.testing.assert_array_equal(mmsa.three_class(y, "cmu_mosei"), [0, 0, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(mmsa.three_class(np.array([-0.2, 0.0, 0.2]), "ch_sims"), [0, 1, 2])
  assert mmsa.dataset_name((768, 74, 35)) == "cmu_mosei"
  assert mmsa.dataset_name((768, 5, 20)) == "cmu_mosi"


def test_mmsa_bad_pickles(tmp_path):
  junk = tmp_path / "junk.pkl"
  junk.write_bytes(b"\x80\x04garbage")
  with pytest.raises(BadInputError, match="junk.pkl: does not load as a pickle"):
    mmsa.builder_for_file(str(junk))
  with open(tmp_path / "nosplit.pkl", "wb") as f:
    pickle.dump({"train": {}}, f)
  with pytest.raises(BadInputError, match="nosplit.pkl: has no 'valid' split"):
    mmsa.builder_for_file(str(tmp_path / "nosplit.pkl"))
  with pytest.raises(BadInputError, match="missing.pkl: MMSA pickle is missing"):
    mmsa.builder_for_file(str(tmp_path / "missing.pkl"))


# ---------------------------------------------------------------- bring your own (npz)

def _npz_dir(root, n=(40, 16), with_val=False):
  rng = np.random.default_rng(2)
  os.makedirs(root, exist_ok=True)
  for split, count in zip(("train", "test"), n):
    label = rng.integers(0, 3, count)
    np.savez(os.path.join(root, f"{split}.npz"), label=label,
             audio=(rng.standard_normal((count, 6)) + label[:, None]).astype(np.float32),
             depth=(rng.standard_normal((count, 4)) - label[:, None]).astype(np.float64))
  with open(os.path.join(root, "class_names.json"), "w") as f:
    json.dump(["a", "b", "c"], f)
  return root


def test_npz_dataset_trains_through_a_config(tmp_path):
  from asgml_jax import input_pipeline
  from asgml_jax.config_schema import modality_config, validate
  from conftest import npz_config
  c = npz_config(_npz_dir(str(tmp_path / "mydata")), str(tmp_path / "tfds"))
  c.dataset.validation_fraction = 0.25
  c.modalities.audio = modality_config("mlp", (6,))
  c.modalities.depth = modality_config("mlp", (4,))
  c.batch_size = 8
  c.eval_batch_size = 8
  data = input_pipeline.load(validate(c))
  assert data.num_classes == 3 and data.num_train == 30 and data.eval_sizes == {
      "validation": 10, "test": 16}
  assert data.train["depth"].dtype == np.float32
  c.modalities.depth.input_shape = (5,)
  with pytest.raises(Exception, match=r"modalities.depth.input_shape: \(5,\) but the npz dataset holds \(4,\); set --config.modalities.depth.input_shape=\"\(4,\)\""):
    input_pipeline.load(c)


def test_npz_bad_inputs(tmp_path):
  raw = _npz_dir(str(tmp_path / "d"))
  with open(os.path.join(raw, "class_names.json"), "w") as f:
    json.dump(["a", "b"], f)
  with pytest.raises(BadInputError, match="label 2 is outside the 2 classes of class_names.json"):
    npz.scan(raw)
  os.remove(os.path.join(raw, "test.npz"))
  with pytest.raises(BadInputError, match="test.npz: the test split is missing"):
    npz.scan(raw)
  with open(os.path.join(raw, "test.npz"), "wb") as f:
    f.write(b"PK\x03\x04 truncated")
  with pytest.raises(BadInputError, match="test.npz: does not load as an .npz archive"):
    npz.scan(raw)


def _npz_with(root, **arrays):
  os.makedirs(root, exist_ok=True)
  for split in ("train", "test"):
    np.savez(os.path.join(root, f"{split}.npz"), **arrays)
  return root


@pytest.mark.parametrize("name, arrays, message", [
    ("strings", dict(label=np.arange(4) % 2, text=np.array(["a", "b", "c", "d"])),
     "train.npz: 'text' is a <U1 array; modalities must be real numbers"),
    ("complex", dict(label=np.arange(4) % 2, x=np.ones((4, 2), np.complex64)),
     "train.npz: 'x' is a complex64 array; modalities must be real numbers"),
    ("objects", dict(label=np.arange(4) % 2, x=np.array([{}, {}, {}, {}], dtype=object)),
     "train.npz: 'x' cannot be read without pickle"),
    ("huge label", dict(label=np.array([0, 1, 2**62, 1]), x=np.ones((4, 2))),
     f"labels must be 0..C-1 without gaps, but the largest is {2**62} and only 3 distinct"),
    ("label 1000", dict(label=np.array([0, 1, 1000, 2] * 3), x=np.ones((12, 2))),
     "labels must be 0..C-1 without gaps, but the largest is 1000 and only 4 distinct"),
    ("empty split", dict(label=np.zeros(0, np.int64), x=np.ones((0, 2))),
     "train.npz: the train split has no examples"),
])
def test_npz_refuses_unusable_arrays_naming_file_key_and_dtype(tmp_path, name, arrays, message):
  raw = _npz_with(str(tmp_path / name.replace(" ", "_")), **arrays)
  with pytest.raises(BadInputError) as err:
    npz.scan(raw)
  assert message in str(err.value) and "\n" not in str(err.value)


def test_npz_labels_may_miss_a_class_or_two():
  """A small gap (a class absent from the data) is allowed: slack, not density."""
  npz._check_dense_labels("raw", 9, set(range(10)) - {4})
  with pytest.raises(BadInputError, match="largest is 9 and only 7 distinct"):
    npz._check_dense_labels("raw", 9, set(range(7)))


def test_build_command_reports_errors_and_builds(tmp_path, capsys):
  assert build.main(["npz", "--raw_dir", str(tmp_path / "none")]) == 1   # the data: 1
  assert "none: npz dataset directory does not exist" in capsys.readouterr().err
  raw = _npz_dir(str(tmp_path / "mine"))
  assert build.main(["npz", "--raw_dir", raw, "--data_dir", str(tmp_path / "tfds"),
                     "--option", "name=mine"]) == 0
  out = capsys.readouterr().out
  assert "train: 36 examples" in out and "test: 16 examples" in out and "no bad files" in out
  assert build.main(["cremad", "--raw_dir", raw, "--option", "frams=3"]) == 2
  assert "--option frams: not an option of cremad" in capsys.readouterr().err


# ---------------------------------------------------------------- AV-Digits (real data)

@pytest.fixture(scope="session")
def av_digits_built(tfds_dir):
  if not os.path.isdir(SHARED):
    pytest.skip(f"{SHARED} not present")
  b = av_digits.AvDigits(data_dir=tfds_dir)
  prepare(b, raw_dir=SHARED)
  return b


def test_av_digits_speaker_disjoint_split_and_distinct_pairs(av_digits_built):
  b = av_digits_built
  sizes = {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")}
  assert sizes == {"train": 2000, "validation": 500, "test": 500}
  speakers = {}
  for split in sizes:
    d = _read(b, split)
    assert d["audio"].shape[1:] == (40, 101, 1) and d["visual"].shape[1:] == (28, 28, 1)
    speakers[split] = {r.decode().split("_")[1] for r in d["recording"]}
    assert all(int(r.decode()[0]) == l for r, l in zip(d["recording"], d["label"]))
  assert speakers["test"] == {"theo"} and speakers["validation"] == {"nicolas"}
  assert speakers["train"] == {"george", "jackson", "lucas", "yweweler"}
  # Each recording's image is a distinct MNIST test image of its digit.
  labels = av_digits.read_idx(os.path.join(SHARED, "mnist", "t10k-labels-idx1-ubyte.gz"))
  recs = [(f"{d}_{s}_{i}.wav", d) for d in range(10) for s in av_digits.SPEAKERS
          for i in range(50)]
  idx = av_digits.pair_indices(labels, recs, 0)
  assert len(set(idx.values())) == 3000
  assert all(labels[idx[name]] == digit for name, digit in recs)


def test_av_digits_rejects_a_non_8k_recording(tmp_path):
  raw = tmp_path / "raw"
  os.makedirs(raw / "mnist")
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    os.symlink(os.path.join(SHARED, "mnist", name), raw / "mnist" / name)
  for s in ("theo", "nicolas", "lucas"):
    rf.write_wav(str(raw / "fsdd" / "recordings" / f"3_{s}_0.wav"), rf.tone(300, 0.5, 8000), 8000)
  rf.write_wav(str(raw / "fsdd" / "recordings" / "4_lucas_1.wav"), rf.tone(300, 0.5, 16000), 16000)
  b = av_digits.AvDigits(data_dir=str(tmp_path / "t"))
  with pytest.raises(BadInputError, match="4_lucas_1.wav: sample rate 16000 Hz, expected 8000"):
    prepare(b, raw_dir=str(raw))
  _no_half_written(str(tmp_path / "t"))


def test_dataset_config_errors_name_the_key():
  from asgml_jax.config_schema import ConfigError, base_config, modality_config, validate
  c = base_config()
  c.dataset.name = "cremad"
  c.modalities.visual = modality_config("small_cnn", (1, 224, 224, 3), image_augment="imagenet")
  with pytest.raises(ConfigError, match="config.dataset.raw_dir: the cremad dataset is built"):
    validate(c)
  c.dataset.raw_dir = "/somewhere"
  c.modalities.visual.input_shape = (1, 224, 200, 3)
  with pytest.raises(ConfigError, match=r"modalities.visual.input_shape: image_augment=imagenet "
                                        r"makes square RGB frames"):
    validate(c)
  c.modalities.visual.input_shape = (1, 224, 224, 3)
  c.dataset.cremad.pad_mode = "zeros"
  with pytest.raises(ConfigError, match="config.dataset.cremad.pad_mode: unknown value 'zeros'"):
    validate(c)


def test_an_npz_array_shorter_than_its_header_says_is_damaged_not_pickled(tmp_path):
  """A truncated array, or a header claiming terabytes, is refused before NumPy
  allocates it, naming the array and both sizes (it was reported as needing
  pickle, or ran out of memory)."""
  import io
  import zipfile
  path = str(tmp_path / "train.npz")
  full = io.BytesIO()
  np.save(full, np.zeros((50, 8), np.float32))
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("x.npy", full.getvalue()[:-864])
  with pytest.raises(BadInputError, match=r"'x' declares shape \(50, 8\) of float32 \(1600 "
                                          r"bytes\) but holds 736 bytes of data; the file is "
                                          "damaged"):
    npz.load_npz(path)
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {"descr": "<f4", "fortran_order": False, "shape": (4_000_000_000, 4000)})
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("x.npy", header.getvalue() + b"\0" * 64)
  with pytest.raises(BadInputError, match=r"\(64000000000000 bytes\) but holds 64 bytes"):
    npz.load_npz(path)


def test_two_first_builds_of_one_dataset_at_once_both_succeed(tmp_path):
  """Two `data_prep.build` processes started together on a dataset nobody
  built yet: one builds, the other waits for it (saying so) and reuses it;
  both exit 0 with the same dataset (one failed with FileExistsError)."""
  import subprocess
  import sys
  from conftest import ROOT
  raw = _npz_dir(str(tmp_path / "mine"))
  command = [sys.executable, "-m", "data_prep.build", "npz", "--raw_dir", raw,
             "--data_dir", str(tmp_path / "tfds"), "--option", "name=mine"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
  for out, err, code in results:
    assert code == 0, err[-2000:]
    assert "train: 36 examples" in out and "Traceback" not in err


def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
  import errno
  import tensorflow_datasets as tfds
  raw = _npz_dir(str(tmp_path / "mine"))

  def disk_full(self, *args, **kwargs):
    os.makedirs(os.path.join(os.path.dirname(self.data_dir), "1.0.0.incomplete.x"))
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", disk_full)
  assert build.main(["npz", "--raw_dir", raw, "--data_dir", str(tmp_path / "tfds"),
                     "--option", "name=mine"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "failed (No space left on device); nothing half-written " \
      "is kept: make room (or fix the folder) and rerun" in err and "\n" not in err
  assert not glob.glob(str(tmp_path / "tfds" / "**" / "*incomplete*"), recursive=True)


def test_a_synthetic_split_too_large_to_generate_is_one_line(monkeypatch):
  from asgml_jax.config_checks import ConfigError
  from data_prep import synthetic
  from data_prep.synthetic import ModalitySpec, SyntheticSpec
  spec = SyntheticSpec(modalities=(ModalitySpec("audio", (10,), 0.5),), num_classes=2,
                       num_train=1000)
  need = 1000 * 10 * (8 + 8 + 4)
  monkeypatch.setattr(synthetic, "available_host_bytes", lambda: int(need / 0.8) - 1)
  with pytest.raises(ConfigError, match=r"^config.dataset.synthetic.num_train: generating the "
                                        r"train split \(1,000 examples\) needs about"):
    synthetic.generate_split(spec, "train")
  monkeypatch.setattr(synthetic, "available_host_bytes", lambda: int(need / 0.8) + 1024)
  assert synthetic.generate_split(spec, "train")["audio"].shape == (1000, 10)
