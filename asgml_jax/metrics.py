"""clu metrics: averaged train scalars, and a confusion matrix for evaluation.

Evaluation accumulates one confusion matrix per head (fused and each
modality's unimodal logits); accuracy and macro-F1 are read off it, so they are
exact over the split whatever the batch size (padding is masked out).
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


def train_metrics_collection(keys: Sequence[str]) -> type[clu_metrics.Collection]:
  """A Collection that averages each named scalar the train step returns."""
  return clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in keys})


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """counts[i, j] = number of examples of true class i predicted as j."""
  counts: jnp.ndarray

  @classmethod
  def from_logits(cls, logits_BxC, labels_B, mask_B) -> "ConfusionMatrix":
    num_classes = logits_BxC.shape[-1]
    pred = jnp.argmax(logits_BxC, -1)
    flat = labels_B * num_classes + pred
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[flat].add(mask_B.astype(jnp.int32))
    return cls(counts=counts.reshape(num_classes, num_classes))

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(counts=self.counts + other.counts)

  def compute(self) -> np.ndarray:
    return np.asarray(self.counts)


def accuracy_from_confusion(counts: np.ndarray) -> float:
  total = counts.sum()
  return float(np.trace(counts) / total) if total else float("nan")


def macro_f1_from_confusion(counts: np.ndarray) -> float:
  """Unweighted mean F1 over classes that occur as label or prediction
  (sklearn's `f1_score(average="macro")` on the labels present)."""
  tp = np.diag(counts).astype(np.float64)
  fp = counts.sum(0) - tp
  fn = counts.sum(1) - tp
  present = (tp + fp + fn) > 0
  if not present.any():
    return float("nan")
  f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
  return float(f1.mean())


def summarize_confusions(confusions: dict[str, np.ndarray]) -> dict[str, float]:
  """{"logits", "logits_<m>", "probe_<m>": C×C} -> accuracy, macro_f1,
  unimodal_accuracy_<m>, probe_acc_<m> and the probes' utilization_gap."""
  out = {"accuracy": accuracy_from_confusion(confusions["logits"]),
         "macro_f1": macro_f1_from_confusion(confusions["logits"])}
  probes = []
  for key, counts in sorted(confusions.items()):
    if key.startswith("logits_"):
      out[f"unimodal_accuracy_{key[len('logits_'):]}"] = accuracy_from_confusion(counts)
    elif key.startswith("probe_"):
      out[f"probe_acc_{key[len('probe_'):]}"] = accuracy_from_confusion(counts)
      probes.append(out[f"probe_acc_{key[len('probe_'):]}"])
  if probes:
    out["utilization_gap"] = max(probes) - min(probes)
  return out
