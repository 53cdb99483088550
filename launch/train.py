r"""Train one run: `python -m launch.train --config configs/default.py --workdir runs/default`.

Config values are overridden on the command line, e.g.
`--config.num_epochs=5 --config.model.fusion=sum`; a variant is picked with
`--config configs/<dataset>.py:<variant>`. Rerunning the same command with the
same workdir resumes from its latest intact checkpoint.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the summary.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  cli.join_cluster()
  cli.compilation_cache()
  from asgml_jax import train  # imported late: flags first, heavy imports after
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
