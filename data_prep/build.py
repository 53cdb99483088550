"""Build a TFDS dataset from raw files: one command per dataset.

    python -m data_prep.build cremad --raw_dir ~/data/CREMA-D --data_dir ~/tensorflow_datasets
    python -m data_prep.build cremad --raw_dir ... --option frames=3
    python -m data_prep.build av_digits --raw_dir ../shared/data
    python -m data_prep.build ave --raw_dir ~/data/AVE --option split=random_80_20
    python -m data_prep.build kinetics_sounds --raw_dir ~/data/KS
    python -m data_prep.build mmsa --raw_dir ~/data/SIMS --option file=unaligned_39.pkl
    python -m data_prep.build npz --raw_dir ~/data/mine --option name=mine

`--option key=value` sets `config.dataset.<dataset>.<key>` (see
asgml_jax/config_schema.py for the keys); a training config with the same
values finds the prepared dataset in the same --data_dir. `--skip_bad` leaves
out files that do not decode and reports how many.
"""

from __future__ import annotations

import argparse
import ast
import sys

from asgml_jax.config_schema import ConfigError, base_config
from data_prep.registry import DATASETS
from data_prep.common import BadInputError, prepare


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def config_for(dataset: str, raw_dir: str | None, data_dir: str | None, skip_bad: bool,
               options: list[str]):
  config = base_config()
  config.dataset.name = dataset
  config.dataset.raw_dir = raw_dir
  config.dataset.data_dir = data_dir
  config.dataset.skip_bad = skip_bad
  for option in options:
    if "=" not in option:
      raise ConfigError(f"--option {option!r}: expected key=value")
    key, value = option.split("=", 1)
    target = config.dataset if key in ("validation_fraction", "split_seed") else config.dataset[dataset]
    if key not in target:
      raise ConfigError(f"--option {key}: not an option of {dataset} "
                        f"({', '.join(sorted(target.keys()))})")
    target[key] = type(target[key])(_parse_value(value)) if target[key] is not None else _parse_value(value)
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.build", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", choices=[d for d in DATASETS if d != "synthetic"])
  parser.add_argument("--raw_dir", required=True, help="where the raw files are (manual_dir)")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default ~/tensorflow_datasets)")
  parser.add_argument("--skip_bad", action="store_true", help="skip undecodable files, report count")
  parser.add_argument("--option", action="append", default=[], help="dataset option key=value")
  args = parser.parse_args(argv)

  from asgml_jax import tensorflow_import
  tensorflow_import.import_quietly()
  from asgml_jax.input_pipeline import _hide_gpus_from_tensorflow, data_dir
  from data_prep.registry import builder_for
  _hide_gpus_from_tensorflow()
  try:
    config = config_for(args.dataset, args.raw_dir, args.data_dir, args.skip_bad, args.option)
    builder, raw = builder_for(config, data_dir(config))
    print(f"building {builder.name}/{builder.builder_config.name} from {raw} into "
          f"{builder.data_dir}", flush=True)
    prepare(builder, raw_dir=raw, announce=False)
  except ConfigError as e:     # the command line or an option: 2, as the launchers
    print(f"error: {e}", file=sys.stderr)
    return 2
  except BadInputError as e:   # the raw data: 1 (docs/faults.md, exit codes)
    print(f"error: {e}", file=sys.stderr)
    return 1
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples")
  bad = getattr(builder, "bad_files", None)
  if bad is not None:
    print("  " + bad.summary().replace("\n", "\n  "))
  print(f"done: {builder.data_dir}")
  return 0


def run() -> int:
  """`main` with SIGTERM/SIGINT as one line: `prepare` has removed the partial build."""
  from asgml_jax import interrupts
  interrupts.install()
  try:
    return main()
  except interrupts.Interrupted as stop:
    stop.saved = "the partial build was removed; rerun the same command to build"
    print(stop.line(), file=sys.stderr, flush=True)
    return stop.exit_code


if __name__ == "__main__":
  sys.exit(run())
