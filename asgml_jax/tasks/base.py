"""What the train step, the evaluation and the loop ask of a task.

A task says what the heads predict and how that is scored: classification
(one label per example; cross-entropy, accuracy, confusion matrices) is the
first. A segmentation task (a label map per example; per-pixel heads,
Dice + CE, Dice per region, per-modality decoders for the unimodal losses)
is a second implementation of the same protocol, not a change to the step.
The training core calls nothing else of a task.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol


class Task(Protocol):
  """name: the task's name (summaries record it); selection_metric: the
  validation metric the best checkpoint and the summary's "at_best_val"
  select on (higher is better)."""
  name: str
  selection_metric: str

  def build_model(self, config, num_classes: int, method_layers: tuple = ()) -> Any:
    """The Linen model. Its outputs hold "logits" (the fused head),
    "unimodal_logits" {m: ...} and "features" {m: (B, D)} (what the probes and
    the per-modality methods read)."""

  def head_loss(self, logits, batch: Mapping[str, Any]):
    """The loss of one head (the fused head's or a modality's), float32 scalar."""

  def train_metrics(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict:
    """The step's scalar metrics of its heads ("accuracy",
    "unimodal_accuracy_<m>": the progress line reads them)."""

  def modality_scores(self, unimodal_logits: Mapping[str, Any], batch) -> dict:
    """{m: batch score} of each unimodal head (OGM-GE's Σ of the true class's
    probability), handed to the transformations as `ogm_scores`."""

  def probe_labels(self, batch: Mapping[str, Any]):
    """What the decoupled probes classify from each encoder's frozen features."""

  def probe_classes(self, num_classes: int) -> int:
    """How many classes the probes have."""

  def eval_counts(self, logits: Mapping[str, Any], batch: Mapping[str, Any]) -> dict:
    """Accumulable counts (clu `Metric`s with `merge`) of every head
    ("logits", "logits_<m>") and probe ("probe_<m>") over one evaluation
    batch, its padding (batch["mask"] == 0) left out."""

  def summarize(self, counts: Mapping[str, Any]) -> dict:
    """A split's metrics from its summed counts (host arrays)."""

  def epoch_line(self, record: Mapping, names, prefix: str = "") -> str:
    """The line an epoch prints from its record ({"epoch", "validation",
    "test", "seconds"})."""

  def done_line(self, summary: Mapping) -> str:
    """The line a finished run prints from its summary."""
