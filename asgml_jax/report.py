"""Sweep reports: mean ± std over seeds per variant, as tables (md/CSV/JSON) and plots.

Reads ordinary run directories (a single run's or a sweep's
<variant>/seed_<s>): `summary.json` for the run summary (SPEC §7), the
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

from asgml_jax.methods import stack as method_stack
from asgml_jax.run_dir import CONFIG_FILE, SUMMARY_FILE

# (column, path in summary.json, title)
COLUMNS = (
    ("best_val_acc", ("at_best_val", "validation", "accuracy"), "best val acc"),
    ("test_acc_at_best_val", ("at_best_val", "test", "accuracy"), "test acc @ best val"),
    ("test_f1_at_best_val", ("at_best_val", "test", "macro_f1"), "test macro-F1 @ best val"),
    ("final_test_acc", ("final", "test", "accuracy"), "final test acc"),
    ("final_test_f1", ("final", "test", "macro_f1"), "final test macro-F1"),
    ("utilization_gap_last10", ("utilization_gap_last10", "test"), "probe gap (test, last 10)"),
    ("convergence_epoch", ("convergence_epoch",), "convergence epoch"),
    ("seconds_per_epoch", ("seconds_per_epoch",), "s / epoch / seed"),
)


def signal_plots() -> tuple[tuple[str, str], ...]:
  """(TensorBoard tag prefix, title) of the train signals plotted per modality:
  the probes', the update schedule's and every registered method's."""
  return method_stack.plots()


def find_runs(directories) -> list[str]:
  """Every run directory (one holding config.json) under the given directories."""
  runs = set()
  for top in directories:
    if not os.path.isdir(top):
      raise FileNotFoundError(f"{top}: no such directory")
    for path in glob.glob(os.path.join(top, "**", CONFIG_FILE), recursive=True):
      runs.add(os.path.dirname(os.path.abspath(path)))
  if not runs:
    raise FileNotFoundError(f"no run directories (with {CONFIG_FILE}) under "
                            f"{', '.join(directories)}")
  return sorted(runs)


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


def load_runs(directories) -> list[dict]:
  runs = []
  for path in find_runs(directories):
    with open(os.path.join(path, CONFIG_FILE)) as f:
      config = json.load(f)
    summary_path = os.path.join(path, SUMMARY_FILE)
    summary = None
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        summary = json.load(f)
    runs.append({"dir": path, "config": config, "summary": summary, "seed": config["seed"]})
  mixed = len({r["config"]["dataset"]["name"] for r in runs}) > 1
  for run in runs:
    run["variant"] = _variant(run["config"], mixed)
  return runs


def mean_std(values) -> tuple[float, float]:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return float("nan"), float("nan")
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table(runs: list[dict]) -> list[dict]:
  """One row per variant: n seeds and mean/std of every column."""
  by_variant = defaultdict(list)
  for run in runs:
    by_variant[run["variant"]].append(run)
  rows = []
  for variant, members in by_variant.items():
    done = [r for r in members if r["summary"] and "error" not in r["summary"]]
    row = {"variant": variant, "seeds": sorted(r["seed"] for r in done),
           "incomplete": sorted(r["dir"] for r in members if r not in done)}
    for column, path, _ in COLUMNS:
      row[column], row[column + "_std"] = mean_std([_get(r["summary"], path) for r in done])
    rows.append(row)
  return rows


def _fmt(mean: float, std: float, column: str) -> str:
  if math.isnan(mean):
    return "-"
  if column.endswith(("acc", "f1", "_val")) or "gap" in column:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"
  return f"{mean:.1f} ± {std:.1f}"


def write_tables(rows: list[dict], out_dir: str, sources) -> None:
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(out_dir, "report.csv"), "w", newline="") as f:
    fields = ["variant", "n_seeds"] + [c for col, _, _ in COLUMNS for c in (col, col + "_std")]
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({"variant": row["variant"], "n_seeds": len(row["seeds"]),
                       **{k: row[k] for k in fields[2:]}})
  lines = ["# Sweep report", "",
           "Mean ± sample std over seeds; accuracies, F1 and the probe utilization gap in %. "
           "Model selection is on validation (\"@ best val\"); \"final\" is the last epoch.",
           "", "Runs read from: " + ", ".join(f"`{s}`" for s in sources), "",
           "| variant | seeds | " + " | ".join(title for _, _, title in COLUMNS) + " |",
           "|---|---|" + "---|" * len(COLUMNS)]
  for row in rows:
    lines.append(f"| {row['variant']} | {len(row['seeds'])} | " + " | ".join(
        _fmt(row[c], row[c + "_std"], c) for c, _, _ in COLUMNS) + " |")
  incomplete = [d for row in rows for d in row["incomplete"]]
  if incomplete:
    lines += ["", "Left out (no summary yet, or stopped): " + ", ".join(f"`{d}`" for d in incomplete)]
  seeds = sorted({s for row in rows for s in row["seeds"]})
  lines += ["", f"Seeds: {', '.join(map(str, seeds))}.", "", "## Plots", ""]
  for name in sorted(os.listdir(out_dir)):
    if name.endswith(".png"):
      lines.append(f"![{name[:-4]}]({name})")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _band(ax, x, curves, label):
  """Mean line and a ±std band over seeds (curves: seeds x len(x))."""
  curves = np.asarray(curves, dtype=float)
  mean = np.nanmean(curves, axis=0)
  line, = ax.plot(x, mean, label=f"{label} (n={curves.shape[0]})")
  if curves.shape[0] > 1:
    std = np.nanstd(curves, axis=0, ddof=1)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)


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

  def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
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
        _band(ax, *_aligned(series), variant)
    ax.set(title=f"{split} accuracy (fused)", xlabel="epoch", ylabel="accuracy")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  save(fig, "eval_accuracy.png")

  if modalities:
    fig, axes = plt.subplots(1, len(modalities), figsize=(5.5 * len(modalities), 4), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), modalities):
      for variant in variants:
        series = eval_series(variant, "test", f"probe_acc_{m}")
        if series:
          _band(ax, *_aligned(series), variant)
      ax.set(title=f"test probe accuracy: {m}", xlabel="epoch", ylabel="accuracy")
      ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    save(fig, "probe_accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in variants:
      series = eval_series(variant, "test", "utilization_gap")
      if series:
        _band(ax, *_aligned(series), variant)
    ax.set(title="utilization gap (test probes, max - min)", xlabel="epoch", ylabel="gap")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "utilization_gap.png")

  plotted = signal_plots()
  signals = {r["dir"]: train_signals(r["dir"], [p for p, _ in plotted]) for r in done}
  for prefix, title in plotted:
    tags = sorted({t for s in signals.values() for t in s if t.startswith(prefix)})
    values = [s[t][1] for s in signals.values() for t in tags if t in s]
    if not tags or np.ptp(np.concatenate(values)) == 0:
      continue  # absent, or one constant for every run (tau = 1 of joint training)
    fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4), sharey=True)
    for ax, tag in zip(np.atleast_1d(axes), tags):
      for variant in variants:
        series = [signals[r["dir"]][tag] for r in done
                  if r["variant"] == variant and tag in signals[r["dir"]]]
        if series:
          _band(ax, *_aligned(series), variant)
      ax.set(title=f"{title}: {tag[len(prefix):]}", xlabel="step")
      ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    save(fig, "train_" + prefix.removeprefix("train/").strip("/_").replace("/", "_") + ".png")
  return written


def write_report(directories, out_dir: str) -> list[dict]:
  """Tables and plots of every run under `directories` into `out_dir`; returns the rows."""
  runs = load_runs(directories)
  os.makedirs(out_dir, exist_ok=True)
  rows = table(runs)
  plot_all(runs, out_dir)
  write_tables(rows, out_dir, directories)
  return rows
