"""Classification: one class label per example.

Heads: the fused logits (B, C) and one (B, C) per modality
(`models.multimodal.MultimodalClassifier`); loss: softmax cross-entropy;
train metrics: accuracy of each head; OGM-GE's modality score: the batch sum
of the true class's probability; probes: the class labels; evaluation: a
confusion matrix per head and probe, from which accuracy and macro-F1 are
exact over the split whatever the batch size; the best checkpoint by
validation accuracy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from asgml_jax import losses, metrics
from asgml_jax.models import model_from_config


@dataclasses.dataclass(frozen=True)
class Classification:
  name: str = "classification"
  selection_metric: str = "accuracy"

  def build_model(self, config, num_classes: int, method_layers: tuple = ()):
    return model_from_config(config, num_classes, method_layers=method_layers)

  def head_loss(self, logits, batch: Mapping):
    return losses.cross_entropy(logits, batch["label"])

  def train_metrics(self, outputs: Mapping, batch: Mapping) -> dict:
    labels = batch["label"]
    out = {"accuracy": losses.accuracy(outputs["logits"], labels)}
    for m, z in outputs["unimodal_logits"].items():
      out[f"unimodal_accuracy_{m}"] = losses.accuracy(z, labels)
    return out

  def modality_scores(self, unimodal_logits: Mapping, batch: Mapping) -> dict:
    return losses.batch_scores(unimodal_logits, batch["label"])

  def probe_labels(self, batch: Mapping):
    return batch["label"]

  def probe_classes(self, num_classes: int) -> int:
    return num_classes

  def eval_counts(self, logits: Mapping, batch: Mapping) -> dict:
    return {k: metrics.ConfusionMatrix.from_logits(v, batch["label"], batch["mask"])
            for k, v in logits.items()}

  def summarize(self, counts: Mapping) -> dict:
    return metrics.summarize_confusions(dict(counts))

  def epoch_line(self, record: Mapping, names, prefix: str = "") -> str:
    val, test = record["validation"], record["test"]
    return (f"{prefix}epoch {record['epoch']}: val acc {val['accuracy']:.4f} macro-F1 "
            f"{val['macro_f1']:.4f} | test acc {test['accuracy']:.4f} macro-F1 "
            f"{test['macro_f1']:.4f} | val unimodal acc "
            + " ".join(f"{m} {val[f'unimodal_accuracy_{m}']:.3f}" for m in names)
            + f" | val probe gap {val['utilization_gap']:.3f} | {record['seconds']:.1f}s")

  def done_line(self, summary: Mapping) -> str:
    best = summary["at_best_val"]
    return (f"done: best val acc {best['validation']['accuracy']:.4f} at epoch "
            f"{summary['best_val_epoch']} (test {best['test']['accuracy']:.4f}); "
            f"summary {os.path.join(summary['workdir'], 'summary.json')}")


CLASSIFICATION = Classification()
