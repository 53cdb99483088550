"""The tasks a run can train (`tasks/base.py` says what a task provides).

Each dataset names its task (`data_prep/registry.py`); every dataset here is
a classification dataset.
"""

from asgml_jax.tasks.base import Task
from asgml_jax.tasks.classification import CLASSIFICATION, Classification

TASKS: dict[str, Task] = {CLASSIFICATION.name: CLASSIFICATION}


def for_dataset(name: str) -> Task:
  """The task of the dataset `name` (every dataset here: classification)."""
  del name
  return CLASSIFICATION


__all__ = ["CLASSIFICATION", "Classification", "TASKS", "Task", "for_dataset"]
