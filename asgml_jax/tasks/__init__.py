"""The tasks a run can train (`tasks/base.py` says what a task provides).

Each dataset names its task in `data_prep/registry.py` (every dataset there
is a classification dataset); the plan looks it up here.
"""

from asgml_jax.tasks.base import Task
from asgml_jax.tasks.classification import CLASSIFICATION, Classification

TASKS: dict[str, Task] = {CLASSIFICATION.name: CLASSIFICATION}


__all__ = ["CLASSIFICATION", "Classification", "TASKS", "Task"]
