"""CREMA-D, 3 frames per clip (the paper protocol: sweep seeds 42, 123, 456, 789, 1024).

Everything else as `configs/cremad.py`.
"""

from configs.cremad import cremad_config


def get_config(arg: str | None = None):
  return cremad_config(arg, frames=3)
