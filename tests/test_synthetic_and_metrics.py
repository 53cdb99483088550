"""Synthetic data: deterministic, the configured modality dominates, fusion helps.
Metrics: accuracy and macro-F1 from the confusion matrix against hand counts."""

import jax.numpy as jnp
import numpy as np

from asgml_jax.metrics import ConfusionMatrix, accuracy_from_confusion, macro_f1_from_confusion
from configs.default import get_config
from data_prep.synthetic import SyntheticSpec, class_templates, generate_split


def test_generation_is_deterministic_and_seed_dependent():
  spec = SyntheticSpec.from_config(get_config())
  a, b = generate_split(spec, "test"), generate_split(spec, "test")
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  other = generate_split(SyntheticSpec(spec.modalities, seed=1), "test")
  assert not np.array_equal(a["audio"], other["audio"])
  assert a["audio"].shape == (600, 32, 32, 1) and a["visual"].shape == (600, 24, 24, 3)
  assert a["audio"].dtype == np.float32


def test_default_audio_is_easier_to_learn_and_fusion_adds_evidence():
  """Nearest-centroid from 20 examples per class measures how fast each modality
  can be learnt; the template-correlation oracle measures what it can reach."""
  spec = SyntheticSpec.from_config(get_config())
  few = generate_split(SyntheticSpec(spec.modalities, num_train=120), "train")
  test, templates = generate_split(spec, "test"), class_templates(spec)
  y = test["label"]
  learnt, oracle = {}, {}
  for m in spec.modalities:
    x_tr = few[m.name].reshape(120, -1)
    centroids = np.stack([x_tr[few["label"] == c].mean(0) for c in range(spec.num_classes)])
    x_te = test[m.name].reshape(len(y), -1)
    learnt[m.name] = float(np.mean(np.argmin(
        ((x_te[:, None] - centroids[None]) ** 2).sum(-1), 1) == y))
    oracle[m.name] = x_te @ templates[m.name].reshape(spec.num_classes, -1).T * m.signal
  assert learnt["audio"] > learnt["visual"] + 0.2  # audio dominates early learning
  assert learnt["visual"] > 2.0 / spec.num_classes  # weak, not useless
  accuracy = lambda s: float(np.mean(s.argmax(1) == y))
  fused = accuracy(oracle["audio"] + oracle["visual"])
  assert fused >= max(accuracy(oracle["audio"]), accuracy(oracle["visual"]))


def test_fingerprint_separates_specs():
  spec = SyntheticSpec.from_config(get_config())
  assert spec.fingerprint() != SyntheticSpec(spec.modalities, num_train=10).fingerprint()
  assert spec.fingerprint() == SyntheticSpec.from_config(get_config()).fingerprint()


def test_confusion_matrix_accuracy_and_macro_f1_by_hand():
  labels = jnp.array([0, 0, 1, 1, 2, 2, 0])
  preds = jnp.array([0, 1, 1, 1, 0, 2, 2])
  mask = jnp.array([1, 1, 1, 1, 1, 1, 0.0])  # last one is padding
  logits = jnp.eye(3)[preds]
  counts = ConfusionMatrix.from_logits(logits[:4], labels[:4], mask[:4]).merge(
      ConfusionMatrix.from_logits(logits[4:], labels[4:], mask[4:])).compute()
  np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
  assert accuracy_from_confusion(counts) == 4 / 6
  # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fp0 fn1 -> 2/3
  np.testing.assert_allclose(macro_f1_from_confusion(counts), (0.5 + 0.8 + 2 / 3) / 3)
