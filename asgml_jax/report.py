"""Sweep reports: mean ± std over seeds per variant, as tables (md/CSV/JSON) and plots.

Reads ordinary run directories (a single run's or a sweep's
<variant>/seed_<s>): `summary.json` for the run summary (docs/methods.md, metrics), the
eval history kept in the latest checkpoint's meta, and the per-step train
signals from the TensorBoard event files. Runs are grouped into variants by
their config (the variant or the stack of methods, `_seedcode` when the seeds'
preset is on, and the dataset when several are mixed). A run without a summary (still training, or
stopped) is listed and left out of the means.

std is the sample standard deviation (ddof = 1), as papers' "± std over
seeds" usually is; with one seed it is reported as 0.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections import defaultdict

import numpy as np

from asgml_jax.methods import DEFAULT_NAME
from asgml_jax.methods import stack as method_stack
from asgml_jax.run_dir import CONFIG_FILE, SUMMARY_FILE, log
from asgml_jax.significance import paired_difference

# (column, path in summary.json, title); fractions are shown in %.
COLUMNS = (
    ("best_val_acc", ("at_best_val", "validation", "accuracy"), "best val acc"),
    ("test_acc_at_best_val", ("at_best_val", "test", "accuracy"), "test acc @ best val"),
    ("test_f1_at_best_val", ("at_best_val", "test", "macro_f1"), "test macro-F1 @ best val"),
    ("final_test_acc", ("final", "test", "accuracy"), "final test acc"),
    ("final_test_f1", ("final", "test", "macro_f1"), "final test macro-F1"),
    ("utilization_gap_last10", ("utilization_gap_last10", "test"), "probe gap (test, last ≤10)"),
    ("val_utilization_gap_last10", ("utilization_gap_last10", "validation"),
     "probe gap (val, last ≤10)"),
    ("convergence_epoch", ("convergence_epoch",), "convergence epoch"),
)
# Per modality m, from the final epoch's test record.
MODALITY_COLUMNS = (
    ("unimodal_acc_{m}", ("final", "test", "unimodal_accuracy_{m}"), "final test unimodal acc: {m}"),
    ("probe_acc_{m}", ("final", "test", "probe_acc_{m}"), "final test probe acc: {m}"),
)
SECONDS_COLUMN = ("seconds_per_epoch", "s / epoch / seed")
SIGNIFICANCE_COLUMN = "test_acc_at_best_val"
NOTES = (
    "Mean ± sample std over seeds; accuracies, F1 and the probe utilization gap in %. "
    "Model selection is on validation (\"@ best val\"); \"final\" is the last epoch.",
    "Probe gap: max − min over modalities of the linear probes' accuracy on frozen encoder "
    "features, averaged over the last 10 epochs (all epochs of a shorter run).",
    "Convergence epoch: the first epoch whose test accuracy reaches 90 % of the final test "
    "accuracy.",
    "s / epoch / seed: median wall-clock seconds of an epoch after the first (which holds the "
    "compilation), divided by the seeds trained together in one program.",
)


def signal_plots() -> tuple[tuple[str, str], ...]:
  """(TensorBoard tag prefix, title) of the train signals plotted per modality:
  the probes', the update schedule's and every registered method's."""
  return method_stack.plots()


def find_runs(directories, skipped: list | None = None) -> list[str]:
  """Every run directory (one holding config.json) under the given
  directories, each once: a symbolic link below them is not followed (a
  `latest -> seed_42` link would count a seed twice, a link to a parent every
  run again), and a directory named twice is read once. What is passed over
  is added to `skipped` as (path, why, None)."""
  skipped = [] if skipped is None else skipped
  runs = set()
  for top in directories:
    if not os.path.isdir(top):
      raise FileNotFoundError(f"{top}: no such directory")
    for root, dirs, files in os.walk(top):
      links = sorted(d for d in dirs if os.path.islink(os.path.join(root, d)))
      skipped += [(os.path.join(root, d), "a symbolic link (not followed)", None)
                  for d in links]
      dirs[:] = sorted(d for d in dirs if d not in links)
      if CONFIG_FILE in files:
        runs.add(os.path.realpath(root))
  if not runs:
    raise FileNotFoundError(f"no run directories (with {CONFIG_FILE}) under "
                            f"{', '.join(directories)}")
  return sorted(runs)


def _run_config(path: str) -> tuple[dict | None, str]:
  """(the run's saved config, "") or (None, why it is no run of this library)."""
  try:
    with open(os.path.join(path, CONFIG_FILE)) as f:
      config = json.load(f)
  except (OSError, ValueError) as err:
    return None, f"its {CONFIG_FILE} cannot be read ({type(err).__name__})"
  if not (isinstance(config, dict) and isinstance(config.get("seed"), int)
          and isinstance(config.get("method"), dict) and isinstance(config.get("dataset"), dict)):
    return None, (f"its {CONFIG_FILE} is not a run config of this library (no seed, method "
                  "or dataset)")
  return config, ""


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _variant(config: dict, mixed_datasets: bool) -> str:
  """A run's label from its saved config: its variant (configs/variants.py
  names) or, for a stack, the methods joined by '+' in canonical order."""
  name = method_stack.run_label(config)
  return f"{config['dataset']['name']}/{name}" if mixed_datasets else name


def eval_history(run: str) -> list[dict]:
  """The per-epoch eval records of the run's latest checkpoint (empty if none)."""
  root = os.path.join(run, "checkpoints")
  steps = sorted((int(d) for d in os.listdir(root) if d.isdigit()), reverse=True) \
      if os.path.isdir(root) else []
  for step in steps:
    path = os.path.join(root, str(step), "meta", "metadata")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)["history"]
  return []


def train_signals(run: str, prefixes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of the run's train scalars whose tag starts with a prefix."""
  # tensorboard's readers and matplotlib (below) are heavy: only where a report reads or draws
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  out: dict[str, dict[int, float]] = defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(run, "events.out.tfevents.*"))):
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in acc.Tags().get("tensors", []):
      if tag.startswith(tuple(prefixes)):
        for event in acc.Tensors(tag):
          out[tag][event.step] = float(tensor_util.make_ndarray(event.tensor_proto))
  return {tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for tag, v in out.items()}


def load_runs(directories, skipped: list | None = None) -> list[dict]:
  """The runs under `directories`, one per (variant, seed): a copy of a run
  (the same variant and seed in another folder, e.g. a backup) is read once,
  from the first folder in path order, and a folder whose config.json is no
  run of this library is passed over; both are added to `skipped` as
  (path, why, the folder it copies or None)."""
  skipped = [] if skipped is None else skipped
  runs = []
  for path in find_runs(directories, skipped):
    config, why = _run_config(path)
    if config is None:
      skipped.append((path, why, None))
      continue
    summary_path = os.path.join(path, SUMMARY_FILE)
    summary = None
    if os.path.exists(summary_path):
      try:
        with open(summary_path) as f:
          summary = json.load(f)
      except (OSError, ValueError):
        summary = None     # unreadable: the run is reported as incomplete
    runs.append({"dir": path, "config": config, "summary": summary, "seed": config["seed"]})
  if not runs:
    raise FileNotFoundError(f"no runs of this library under {', '.join(directories)}")
  mixed = len({r["config"]["dataset"]["name"] for r in runs}) > 1
  first: dict[tuple, str] = {}
  kept = []
  for run in runs:
    run["variant"] = _variant(run["config"], mixed)
    key = (run["variant"], run["seed"])
    if key in first:
      skipped.append((run["dir"], f"the same variant ({key[0]}) and seed ({key[1]}) as the "
                                  "folder read (set `label` to tell an ablation's arms apart)",
                      first[key]))
      continue
    first[key] = run["dir"]
    kept.append(run)
  return kept


def mean_std(values) -> tuple[float, float]:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return float("nan"), float("nan")
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def modalities_of(runs: list[dict]) -> list[str]:
  """Modalities with a unimodal accuracy in some finished run's summary."""
  found = set()
  for run in runs:
    final = (run["summary"] or {}).get("final", {}).get("test", {})
    found |= {k[len("unimodal_accuracy_"):] for k in final if k.startswith("unimodal_accuracy_")}
  return sorted(found)


def columns_for(modalities) -> list[tuple[str, tuple, str]]:
  out = list(COLUMNS)
  for m in modalities:
    out += [(c.format(m=m), tuple(p.format(m=m) for p in path), t.format(m=m))
            for c, path, t in MODALITY_COLUMNS]
  return out


def column_groups(modalities) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(column, title) pairs of the report's two tables: the run-level columns
  (with the epoch time), and the per-modality ones."""
  main = [(c, t) for c, _, t in COLUMNS] + [SECONDS_COLUMN]
  per_modality = [(c, t) for c, _, t in columns_for(modalities)[len(COLUMNS):]]
  return main, per_modality


def _get_or_none(tree, path):
  try:
    return _get(tree, path)
  except (KeyError, TypeError):
    return None


def epoch_seconds(run: dict) -> float | None:
  """Median seconds per epoch after the first (compilation), per seed."""
  history = eval_history(run["dir"])
  later = [h["seconds"] for h in history[1:]]
  return float(np.median(later)) if later else None


def table(runs: list[dict], against: str | None = None,
          modalities: list[str] | None = None) -> list[dict]:
  """One row per variant: n seeds, mean/std of every column, and the paired
  difference of `SIGNIFICANCE_COLUMN` from the `against` variant (default
  the default method, `methods.DEFAULT_NAME`, when present; see
  asgml_jax/significance.py)."""
  by_variant = defaultdict(list)
  for run in runs:
    by_variant[run["variant"]].append(run)
  columns = columns_for(modalities_of(runs) if modalities is None else modalities)
  if against is None and DEFAULT_NAME in by_variant:
    against = DEFAULT_NAME
  if against is not None and against not in by_variant:
    raise ValueError(f"--against {against}: no such variant (have: {', '.join(sorted(by_variant))})")
  done_of = {v: [r for r in members if r["summary"] and "error" not in r["summary"]]
             for v, members in by_variant.items()}
  path = dict((c, p) for c, p, _ in columns)[SIGNIFICANCE_COLUMN]
  per_seed = {v: {r["seed"]: _get_or_none(r["summary"], path) for r in done}
              for v, done in done_of.items()}
  rows = []
  for variant, members in by_variant.items():
    done = done_of[variant]
    row = {"variant": variant, "seeds": sorted(r["seed"] for r in done),
           "incomplete": sorted(r["dir"] for r in members if r not in done),
           "seed_values": {s: v for s, v in sorted(per_seed[variant].items()) if v is not None}}
    for column, path, _ in columns:
      row[column], row[column + "_std"] = mean_std([_get_or_none(r["summary"], path)
                                                    for r in done])
    row[SECONDS_COLUMN[0]], row[SECONDS_COLUMN[0] + "_std"] = mean_std(
        [epoch_seconds(r) for r in done])
    if against is not None and variant != against:
      row["against"] = against
      row["difference"] = paired_difference(
          {s: v for s, v in per_seed[variant].items() if v is not None},
          {s: v for s, v in per_seed[against].items() if v is not None})
    rows.append(row)
  return rows


def _fmt(mean: float, std: float, column: str) -> str:
  if math.isnan(mean):
    return "-"
  if any(word in column for word in ("acc", "f1", "gap")):
    return f"{100 * mean:.2f} ± {100 * std:.2f}"
  return f"{mean:.1f} ± {std:.1f}"


def _fmt_difference(diff: dict | None) -> str:
  if not diff:
    return "(reference)"
  if diff["n"] < 2:
    return f"n={diff['n']} paired seed(s): no test"
  mark = "" if diff["significant"] else " (n.s.)"
  return (f"{100 * diff['mean']:+.2f} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}] "
          f"p={diff['p']:.3f}{mark}")


def write_tables(rows: list[dict], out_dir: str, sources, modalities,
                 curves_redrawn: bool = True, skipped=()) -> None:
  groups = column_groups(modalities)
  columns = [c for group in groups for c, _ in group]
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(out_dir, "report.csv"), "w", newline="") as f:
    fields = ["variant", "n_seeds"] + [c for col in columns for c in (col, col + "_std")] + [
        "diff_mean", "diff_low", "diff_high", "diff_p", "diff_significant"]
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      diff = row.get("difference") or {}
      writer.writerow({"variant": row["variant"], "n_seeds": len(row["seeds"]),
                       **{k: row[k] for k in fields[2:-5]},
                       **{f"diff_{k}": diff.get(k) for k in ("mean", "low", "high", "p",
                                                              "significant")}})
  against = next((row["against"] for row in rows if "against" in row), None)
  lines = ["# Sweep report", "", *[n + "  " for n in NOTES], "",
           "Runs read from: " + ", ".join(f"`{os.path.basename(os.path.normpath(s))}`"
                                          for s in sources), ""]
  imported = [row for row in rows if row.get("imported_from")]
  if imported:
    source = os.path.relpath(imported[0]["imported_from"], out_dir)
    lines += [f"Rows of an earlier report (`{source}`; in the tables and "
              "the ranking, not in the curves, whose histories it does not hold; their "
              "compared-with variant reproduced to the digit by these runs): "
              + ", ".join(row["variant"] for row in imported) + ".", ""]
  for group in groups:
    if not group:
      continue
    lines += ["| variant | seeds | " + " | ".join(title for _, title in group) + " |",
              "|---|---|" + "---|" * len(group)]
    for row in rows:
      lines.append(f"| {row['variant']} | {len(row['seeds'])} | " + " | ".join(
          _fmt(row[c], row[c + "_std"], c) for c, _ in group) + " |")
    lines.append("")
  if against is not None:
    lines += [f"## Difference from `{against}` (test acc @ best val, percentage points)", "",
              "Paired over seeds: mean of the per-seed differences, its 95 % interval and the "
              "two-sided paired t-test p-value; (n.s.) = not significant at 5 %. No correction "
              "for the number of variants compared (asgml_jax/significance.py says why this "
              "test).", "",
              "| variant | paired seeds | difference [95 % interval] |", "|---|---|---|"]
    for row in rows:
      diff = row.get("difference")
      lines.append(f"| {row['variant']} | {diff['n'] if diff else len(row['seeds'])} | "
                   f"{_fmt_difference(diff)} |")
    lines.append("")
  incomplete = [d for row in rows for d in row["incomplete"]]
  if incomplete:
    lines += ["Left out (no summary yet, or stopped): "
              + ", ".join(f"`{os.path.relpath(d, out_dir)}`" for d in incomplete), ""]
  if skipped:
    where = lambda path: f"`{os.path.relpath(path, out_dir)}`"
    lines += ["Not read (each run counts once): " + "; ".join(
        f"{where(path)}: {why}" + (f" ({where(other)})" if other else "")
        for path, why, other in skipped), ""]
  seeds = sorted({s for row in rows for s in row["seeds"]})
  lines += [f"Seeds: {', '.join(map(str, seeds))}.", "", "## Plots", "",
            "Lines: mean over seeds; bands: min–max over seeds.", ""]
  if not curves_redrawn:
    lines += ["Only the ranking was drawn from the rows above; the other plots in this folder "
              "were left as an earlier report drew them (its runs only).", ""]
  if os.path.exists(os.path.join(out_dir, RANKING_PNG)):
    lines.append(f"![ranking]({RANKING_PNG})")
  for name in sorted(os.listdir(out_dir)):
    if name.endswith(".png") and name != RANKING_PNG:
      lines.append(f"![{name[:-4]}]({name})")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def variant_colors(variants) -> dict[str, tuple]:
  """One colour per variant for every figure of a report: tab10 up to 10
  variants, tab20 up to 20, evenly spaced hues beyond (no colour reused)."""
  import matplotlib
  variants = sorted(variants)
  n = len(variants)
  if n <= 10:
    colors = [matplotlib.colormaps["tab10"](i) for i in range(n)]
  elif n <= 20:
    colors = [matplotlib.colormaps["tab20"](i) for i in range(n)]
  else:
    colors = [matplotlib.colormaps["hsv"](i / n) for i in range(n)]
  return dict(zip(variants, colors))


def _band(ax, x, curves, label, color, scale: float = 1.0):
  """Mean line over seeds and a min–max band (curves: seeds x len(x)); the
  band never leaves the range the quantity can take, as mean ± std can."""
  curves = scale * np.asarray(curves, dtype=float)
  mean = np.nanmean(curves, axis=0)
  few = len(x) <= 15
  ax.plot(x, mean, label=f"{label} (n={curves.shape[0]})", color=color,
          marker="o" if few else None, markersize=3)
  if curves.shape[0] > 1:
    ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=color,
                    alpha=0.15, linewidth=0)


def _finish(fig, axes, integer_x: bool) -> None:
  """One legend for the figure, outside the axes (it never covers data)."""
  from matplotlib.ticker import MaxNLocator
  for ax in np.atleast_1d(axes):
    ax.grid(alpha=0.3)
    if integer_x:
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               title="mean, min–max band", title_fontsize=8)


def _aligned(series: list[tuple[np.ndarray, np.ndarray]]):
  """(x, seeds x len(x)) on the x values every seed has."""
  common = sorted(set.intersection(*(set(x.tolist()) for x, _ in series)))
  return np.array(common), [np.array([dict(zip(x.tolist(), y))[c] for c in common])
                            for x, y in series]


def plot_all(runs: list[dict], out_dir: str) -> list[str]:
  """One PNG per quantity, variants overlaid, seed band shaded; returns the names."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  written = []
  done = [r for r in runs if r["summary"] and "error" not in r["summary"]]
  variants = sorted({r["variant"] for r in done})
  histories = {r["dir"]: eval_history(r["dir"]) for r in done}
  modalities = sorted({k[len("probe_acc_"):] for h in histories.values() if h
                       for k in h[0]["test"] if k.startswith("probe_acc_")})

  colors = variant_colors({r["variant"] for r in runs})

  def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(name)

  def eval_series(variant, split, key):
    return [(np.array([h["epoch"] for h in histories[r["dir"]]]),
             np.array([h[split][key] for h in histories[r["dir"]]]))
            for r in done if r["variant"] == variant and histories[r["dir"]]
            and key in histories[r["dir"]][0][split]]  # unimodal runs lack the others' keys

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, split in zip(axes, ("validation", "test")):
    for variant in variants:
      series = eval_series(variant, split, "accuracy")
      if series:
        _band(ax, *_aligned(series), variant, colors[variant], 100)
    ax.set(title=f"{split} accuracy (fused)", xlabel="epoch", ylabel="accuracy (%)")
  _finish(fig, axes, integer_x=True)
  save(fig, "eval_accuracy.png")

  if modalities:
    fig, axes = plt.subplots(1, len(modalities), figsize=(5.5 * len(modalities), 4), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), modalities):
      for variant in variants:
        series = eval_series(variant, "test", f"probe_acc_{m}")
        if series:
          _band(ax, *_aligned(series), variant, colors[variant], 100)
      ax.set(title=f"test probe accuracy: {m}", xlabel="epoch", ylabel="accuracy (%)")
    _finish(fig, axes, integer_x=True)
    save(fig, "probe_accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in variants:
      series = eval_series(variant, "test", "utilization_gap")
      if series:
        _band(ax, *_aligned(series), variant, colors[variant], 100)
    ax.set(title="utilization gap (test probes, max − min)", xlabel="epoch",
           ylabel="gap (percentage points)")
    _finish(fig, ax, integer_x=True)
    save(fig, "utilization_gap.png")

  plotted = signal_plots()
  signals = {r["dir"]: train_signals(r["dir"], [p for p, _ in plotted]) for r in done}
  for prefix, title in plotted:
    tags = sorted({t for s in signals.values() for t in s if t.startswith(prefix)})
    values = [s[t][1] for s in signals.values() for t in tags if t in s]
    if not tags or np.ptp(np.concatenate(values)) == 0:
      continue  # absent, or one constant for every run (tau = 1 of joint training)
    scale = 100 if "accuracy" in title else 1  # accuracies in %, as in the tables
    fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4), sharey=True)
    for ax, tag in zip(np.atleast_1d(axes), tags):
      for variant in variants:
        series = [signals[r["dir"]][tag] for r in done
                  if r["variant"] == variant and tag in signals[r["dir"]]]
        if series:
          _band(ax, *_aligned(series), variant, colors[variant], scale)
      ax.set(title=f"{title}: {tag[len(prefix):]}", xlabel="step",
             ylabel=f"{title} (%)" if scale == 100 else title)
    _finish(fig, axes, integer_x=True)
    save(fig, "train_" + prefix.removeprefix("train/").strip("/_").replace("/", "_") + ".png")
  return written


RANKING_PNG = "ranking.png"


def ranked(rows: list[dict]) -> list[dict]:
  """The variants with results, best test accuracy at best validation first."""
  return sorted((r for r in rows if r["seeds"] and not np.isnan(r[SIGNIFICANCE_COLUMN])),
                key=lambda r: -r[SIGNIFICANCE_COLUMN])


def plot_ranking(rows: list[dict], out_dir: str) -> str | None:
  """Every variant's test accuracy at best validation, best first: the mean as a
  bar, ± std as a whisker, each seed as a dot, the compared-with variant's mean
  as a dashed line, and * where the paired difference from it is significant.
  The one figure that stays readable with dozens of variants."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  bars = ranked(rows)[::-1]       # barh draws bottom-up: best on top
  if len(bars) < 2:
    return None
  against = next((r["against"] for r in rows if "against" in r), None)
  fig, ax = plt.subplots(figsize=(7, 0.3 * len(bars) + 1.2))
  y = np.arange(len(bars))
  means = [100 * r[SIGNIFICANCE_COLUMN] for r in bars]
  stds = [100 * (r[SIGNIFICANCE_COLUMN + "_std"] or 0.0) for r in bars]
  colors = ["tab:orange" if r["variant"] == against else
            ("tab:gray" if r["variant"].startswith("unimodal_") else "tab:blue")
            for r in bars]
  ax.barh(y, means, xerr=stds, color=colors, alpha=0.75, error_kw={"lw": 1, "capsize": 2})
  for i, r in enumerate(bars):
    seeds = [100 * v for v in r["seed_values"].values()]
    ax.plot(seeds, [i] * len(seeds), "k.", markersize=3)
    diff = r.get("difference")
    if diff and diff.get("significant"):
      ax.text(max(seeds + [means[i] + stds[i]]) + 0.8, i, "*", va="center", fontsize=9)
  if against is not None:
    base = next(r for r in bars if r["variant"] == against)
    ax.axvline(100 * base[SIGNIFICANCE_COLUMN], color="tab:orange", ls="--", lw=1)
  ax.set_yticks(y, [r["variant"] for r in bars], fontsize=8)
  ax.set(xlabel="test accuracy at best validation (%)",
         title="mean ± std over seeds, dots: seeds"
               + (f"; * paired difference from {against} significant (5 %)" if against else ""))
  ax.title.set_fontsize(8)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, RANKING_PNG), dpi=110, bbox_inches="tight")
  plt.close(fig)
  return RANKING_PNG


def rows_from_report(path: str) -> list[dict]:
  """The rows of an earlier report's report.json (seeds as ints)."""
  try:
    with open(path) as f:
      rows = json.load(f)
    out = []
    for row in rows:
      row = dict(row)
      row["seeds"] = [int(s) for s in row["seeds"]]
      row["seed_values"] = {int(s): float(v) for s, v in row["seed_values"].items()}
      row["incomplete"] = []
      out.append(row)
  except FileNotFoundError:
    raise FileNotFoundError(f"--rows_from {path}: no such file") from None
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
    raise ValueError(f"--rows_from {path}: not a report.json written by launch.report "
                     f"({type(err).__name__}: {err})") from None
  return out


def merge_rows(run_rows: list[dict], earlier: list[dict], source: str,
               columns: list[str], against: str | None = None) -> list[dict]:
  """The earlier report's rows with the runs' rows in place of (and after) them.

  An earlier row is only comparable if its compared-with variant is among the
  runs with the same per-seed values (the same code and seeds reproduce it to
  the digit); its paired difference is recomputed against the runs' row."""
  fresh = {r["variant"]: r for r in run_rows}
  against = against or (DEFAULT_NAME if DEFAULT_NAME in fresh else None)
  if against is None:
    raise ValueError(f"--rows_from {source}: the runs have no variant to compare with "
                     "(name one with --against)")
  old = {r["variant"]: r for r in earlier}
  if against not in old:
    raise ValueError(f"--rows_from {source}: it has no {against} row to check the runs against")
  want, have = old[against]["seed_values"], fresh[against]["seed_values"]
  if set(want) != set(have) or any(abs(want[s] - have[s]) > 1e-9 for s in want):
    raise ValueError(f"--rows_from {source}: its {against} ({want}) differs from these runs' "
                     f"({have}); the rows are not comparable")
  merged = []
  for row in earlier:
    if row["variant"] in fresh:
      merged.append(fresh.pop(row["variant"]))
      continue
    row = {**{c: math.nan for col in columns for c in (col, col + "_std")}, **row,
           "imported_from": source}
    if row["variant"] != against:
      row["against"] = against
      row["difference"] = paired_difference(row["seed_values"], have)
    merged.append(row)
  return merged + list(fresh.values())


def write_report(directories, out_dir: str, against: str | None = None,
                 rows_from: str | None = None, curves: bool = True) -> list[dict]:
  """Tables and plots of every run under `directories` into `out_dir`; returns
  the rows. `against`: the variant every other is compared with (default
  `methods.DEFAULT_NAME` when present). `rows_from`: an earlier report's
  report.json whose rows join the table and the ranking (not the curves,
  whose histories it does not hold), see `merge_rows`. `curves=False` draws
  only the ranking and leaves the folder's other plots as they are (adding
  rows to an earlier report in its own folder keeps its runs' curves)."""
  skipped: list[tuple] = []
  runs = load_runs(directories, skipped)
  for path, why, other in skipped:
    log(f"report: skipped {path}: {why}" + (f" ({other})" if other else ""))
  modalities = modalities_of(runs)
  rows = table(runs, against, modalities)
  if rows_from:
    columns = [c for group in column_groups(modalities) for c, _ in group]
    rows = merge_rows(rows, rows_from_report(rows_from), rows_from, columns, against)
  os.makedirs(out_dir, exist_ok=True)
  if curves:
    plot_all(runs, out_dir)
  plot_ranking(rows, out_dir)
  write_tables(rows, out_dir, directories, modalities, curves_redrawn=curves, skipped=skipped)
  return rows
