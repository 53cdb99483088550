r"""Tables and plots of runs and sweeps: `python -m launch.report DIR... [--out OUT]`.

Writes OUT/report.md (a table of mean ± std over seeds per variant and the
plots), report.csv, report.json and one PNG per quantity (eval accuracy,
probe accuracy per modality, utilization gap, boost scales, OGM
coefficients, tau and update ratio per modality), variants overlaid, seed
band shaded. OUT defaults to the first DIR's `report/`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Output directory (default: <first DIR>/report).")


def main(argv):
  directories = argv[1:]
  if not directories:
    raise app.UsageError("name at least one run or sweep directory")
  from asgml_jax import report
  out = _OUT.value or os.path.join(directories[0], "report")
  try:
    rows = report.write_report(directories, out)
  except FileNotFoundError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
  for row in rows:
    print(f"{row['variant']:<22} n={len(row['seeds'])}  test acc @ best val "
          f"{100 * row['test_acc_at_best_val']:.2f} ± {100 * row['test_acc_at_best_val_std']:.2f}"
          f"  final {100 * row['final_test_acc']:.2f} ± {100 * row['final_test_acc_std']:.2f}")
  print(f"wrote {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  app.run(main)
