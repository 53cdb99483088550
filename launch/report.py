r"""Tables and plots of runs and sweeps: `python -m launch.report DIR... [--out OUT]`.

Writes OUT/report.md (a table of mean ± std over seeds per variant and the
plots), report.csv, report.json and one PNG per quantity (eval accuracy,
probe accuracy per modality, utilization gap, every stacked method's signals),
variants overlaid in one colour each, min–max band over seeds, and each
variant's paired difference from `--against` (default: baseline) with a 95 %
interval and p-value. OUT defaults to the first DIR's `report/`.
`--rows_from OLD/report.json` adds an earlier report's rows (e.g. a sweep of
new variants joining an existing table, with the same baseline).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from launch import cli

_OUT = flags.DEFINE_string("out", None, "Output directory (default: <first DIR>/report).")
_ROWS_FROM = flags.DEFINE_string(
    "rows_from", None, "An earlier report's report.json: its rows join the table and the "
    "ranking (its compared-with variant must be among the runs, with the same per-seed values).")
_CURVES = flags.DEFINE_bool(
    "curves", True, "Draw the curves of the runs (--nocurves: only the tables and the ranking; "
    "the folder's other plots are left as they are).")
_AGAINST = flags.DEFINE_string("against", None, "Variant every other is compared with, paired "
                               "over seeds (default: baseline, when present).")


def main(argv):
  directories = argv[1:]
  if not directories:
    raise app.UsageError("name at least one run or sweep directory")
  cli.quiet_logs()
  from asgml_jax import report
  out = _OUT.value or os.path.join(directories[0], "report")
  try:
    rows = report.write_report(directories, out, _AGAINST.value, _ROWS_FROM.value,
                              _CURVES.value)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
  for row in rows:
    diff = row.get("difference")
    print(f"{row['variant']:<22} n={len(row['seeds'])}  test acc @ best val "
          f"{100 * row['test_acc_at_best_val']:.2f} ± {100 * row['test_acc_at_best_val_std']:.2f}"
          f"  final {100 * row['final_test_acc']:.2f} ± {100 * row['final_test_acc_std']:.2f}"
          + (f"  vs {row['against']}: {report._fmt_difference(diff)}" if diff else ""))
  print(f"wrote {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  cli.run(main)
