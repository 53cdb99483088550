"""The report on hand-made run directories: the paired difference over seeds
flags a known difference as significant and a zero difference not, with the
numbers a paired t-test gives; each variant keeps one colour in every figure."""

import json
import math
import os

import numpy as np
import pytest

from asgml_jax import report
from asgml_jax.config_schema import base_config
from asgml_jax.significance import paired_difference
from configs.variants import apply_variant


def test_paired_difference_matches_the_t_test_by_hand():
  variant = {0: 0.62, 1: 0.60, 2: 0.65, 3: 0.61, 4: 0.64}
  reference = {0: 0.58, 1: 0.57, 2: 0.60, 3: 0.59, 4: 0.60, 9: 0.99}  # seed 9 has no pair
  d = np.array([0.04, 0.03, 0.05, 0.02, 0.04])
  se = d.std(ddof=1) / math.sqrt(5)
  t = d.mean() / se
  out = paired_difference(variant, reference)
  assert out["n"] == 5 and out["mean"] == pytest.approx(0.036)
  # t_{0.975, 4} = 2.776445 (tables); the t(4) CDF in closed form:
  # F(t) = 1/2 + 3/8 * t / sqrt(a) * (1 - t^2 / (12 a)), a = 1 + t^2 / 4
  assert out["low"] == pytest.approx(0.036 - 2.776445 * se, abs=1e-6)
  assert out["high"] == pytest.approx(0.036 + 2.776445 * se, abs=1e-6)
  a = 1 + t * t / 4
  cdf = 0.5 + 3 / 8 * t / math.sqrt(a) * (1 - t * t / (12 * a))
  assert t == pytest.approx(7.0602, abs=1e-3)
  assert out["p"] == pytest.approx(2 * (1 - cdf), rel=1e-6)
  assert out["significant"]


def test_no_difference_and_too_few_seeds_are_not_significant():
  noisy = paired_difference({0: 0.60, 1: 0.55, 2: 0.62}, {0: 0.58, 1: 0.59, 2: 0.60})
  assert noisy["mean"] == pytest.approx(0.0) and noisy["p"] > 0.9 and not noisy["significant"]
  same = paired_difference({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
  assert same["mean"] == 0 and same["p"] == 1.0 and not same["significant"]
  one = paired_difference({0: 0.9}, {0: 0.1})
  assert one["n"] == 1 and math.isnan(one["p"]) and not one["significant"]


def _run(root, variant, seed, test_acc, epochs=3):
  config = apply_variant(base_config(), variant)
  config.seed = seed
  path = os.path.join(root, variant, f"seed_{seed}")
  os.makedirs(os.path.join(path, "checkpoints", str(epochs), "meta"))
  record = lambda e: {"epoch": e, "seconds": 10.0 if e == 1 else 2.0,
                      "validation": {"accuracy": 0.5, "macro_f1": 0.5, "utilization_gap": 0.1,
                                     "probe_acc_a": 0.4, "probe_acc_b": 0.3},
                      "test": {"accuracy": test_acc, "macro_f1": 0.5, "utilization_gap": 0.1,
                               "unimodal_accuracy_a": 0.45, "unimodal_accuracy_b": 0.35,
                               "probe_acc_a": 0.4, "probe_acc_b": 0.3}}
  history = [record(e) for e in range(1, epochs + 1)]
  with open(os.path.join(path, "checkpoints", str(epochs), "meta", "metadata"), "w") as f:
    json.dump({"epoch": epochs, "history": history}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  final = history[-1]
  summary = {"at_best_val": {"validation": final["validation"], "test": final["test"]},
             "final": {"validation": final["validation"], "test": final["test"]},
             "utilization_gap_last10": {"validation": 0.1, "test": 0.1},
             "convergence_epoch": 2, "seconds_per_epoch": 4.7, "num_epochs": epochs}
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)


def test_report_flags_a_known_difference_and_not_a_zero_one(tmp_path):
  root = str(tmp_path / "grid")
  for seed, base in zip((0, 1, 2, 3), (0.50, 0.55, 0.52, 0.58)):
    _run(root, "baseline", seed, base)
    _run(root, "boost", seed, base + 0.05 + 0.001 * seed)   # better on every seed
    _run(root, "ogm_ge", seed, base + (0.02 if seed % 2 else -0.02))  # no net change
  out = str(tmp_path / "report")
  rows = {r["variant"]: r for r in report.write_report([root], out)}
  assert "difference" not in rows["baseline"]
  boost, ogm = rows["boost"]["difference"], rows["ogm_ge"]["difference"]
  assert boost["n"] == 4 and boost["mean"] == pytest.approx(0.0515) and boost["significant"]
  assert ogm["mean"] == pytest.approx(0.0) and not ogm["significant"]
  # the per-modality columns and the epoch time without the first (compiling) epoch
  assert rows["boost"]["unimodal_acc_a"] == pytest.approx(0.45)
  assert rows["boost"]["probe_acc_b"] == pytest.approx(0.3)
  assert rows["boost"]["seconds_per_epoch"] == pytest.approx(2.0)
  markdown = open(os.path.join(out, "report.md")).read()
  assert "## Difference from `baseline`" in markdown
  assert "| ogm_ge | 4 | +0.00 [" in markdown and "(n.s.)" in markdown.split("| ogm_ge | 4 | +0.00")[1].splitlines()[0]
  boost_line = next(l for l in markdown.splitlines() if l.startswith("| boost | 4 | +5.15 ["))
  assert "(n.s.)" not in boost_line
  assert str(tmp_path) not in markdown  # no machine-local path in a report meant to be committed
  # against another variant, on request
  rows = {r["variant"]: r for r in report.write_report([root], out, against="boost")}
  assert rows["baseline"]["difference"]["mean"] == pytest.approx(-0.0515)
  with pytest.raises(ValueError, match="--against nope: no such variant"):
    report.write_report([root], out, against="nope")


def test_an_earlier_reports_rows_join_the_table_when_its_baseline_is_reproduced(tmp_path):
  old_root, new_root = str(tmp_path / "old"), str(tmp_path / "new")
  bases = (0.50, 0.55, 0.52)
  for seed, base in zip((0, 1, 2), bases):
    _run(old_root, "baseline", seed, base)
    _run(old_root, "ogm_ge", seed, base - 0.05 - 0.001 * seed)
    _run(old_root, "boost", seed, base + 0.01)
    _run(new_root, "baseline", seed, base)                     # the same baseline, rerun
    _run(new_root, "boost", seed, base + 0.03)                 # rerun: replaces the old row
    _run(new_root, "dgl", seed, base + 0.10 + 0.002 * seed)    # new
  old_out = str(tmp_path / "old_report")
  report.write_report([old_root], old_out)
  out = str(tmp_path / "merged")
  rows = report.write_report([new_root], out, rows_from=os.path.join(old_out, "report.json"))
  assert [r["variant"] for r in rows] == ["baseline", "boost", "ogm_ge", "dgl"]
  by = {r["variant"]: r for r in rows}
  assert by["ogm_ge"]["imported_from"] and "imported_from" not in by["dgl"]
  assert by["ogm_ge"]["difference"]["mean"] == pytest.approx(-0.051)     # recomputed, paired
  assert by["boost"]["difference"]["mean"] == pytest.approx(0.03)         # the runs' row
  assert by["dgl"]["difference"]["significant"]
  markdown = open(os.path.join(out, "report.md")).read()
  assert "Rows of an earlier report" in markdown and "| ogm_ge | 3 |" in markdown
  assert str(tmp_path) not in markdown
  assert os.path.exists(os.path.join(out, report.RANKING_PNG))
  # into the earlier report's own folder, without redrawing its runs' curves
  before = {n: os.path.getmtime(os.path.join(old_out, n)) for n in os.listdir(old_out)
            if n.endswith(".png") and n != report.RANKING_PNG}
  report.write_report([new_root], old_out, rows_from=os.path.join(old_out, "report.json"),
                      curves=False)
  assert before == {n: os.path.getmtime(os.path.join(old_out, n)) for n in before}
  assert "were left as an earlier report drew them" in open(os.path.join(old_out,
                                                                         "report.md")).read()
  # a baseline that is not reproduced: refused in one line
  other = str(tmp_path / "other")
  for seed, base in zip((0, 1, 2), (0.50, 0.55, 0.60)):
    _run(other, "baseline", seed, base)
  with pytest.raises(ValueError, match="differs from these runs'.*not comparable"):
    report.write_report([other], out, rows_from=os.path.join(old_out, "report.json"))
  with pytest.raises(ValueError, match="not a report.json"):
    report.write_report([new_root], out, rows_from=os.path.join(old_root, "baseline", "seed_0",
                                                                "summary.json"))


def test_every_variant_keeps_one_colour_and_none_is_reused_beyond_ten():
  names = [f"v{i:02d}" for i in range(17)]
  colors = report.variant_colors(names)
  assert len(set(colors.values())) == 17
  assert report.variant_colors(reversed(names)) == colors  # independent of order
  assert len(set(report.variant_colors([f"x{i}" for i in range(25)]).values())) == 25


def test_the_ranking_puts_the_best_variant_first_and_leads_the_plots(tmp_path):
  root = str(tmp_path / "grid")
  for seed in (0, 1, 2):
    _run(root, "baseline", seed, 0.50 + 0.01 * seed)
    _run(root, "boost", seed, 0.60 + 0.01 * seed)
    _run(root, "ogm_ge", seed, 0.40 + 0.01 * seed)
  out = str(tmp_path / "report")
  rows = report.write_report([root], out)
  assert [r["variant"] for r in report.ranked(rows)] == ["boost", "baseline", "ogm_ge"]
  assert os.path.getsize(os.path.join(out, report.RANKING_PNG)) > 5000
  plots = open(os.path.join(out, "report.md")).read().split("## Plots")[1]
  images = [line for line in plots.splitlines() if line.startswith("![")]
  assert images[0] == "![ranking](ranking.png)" and len(images) == len(set(images))


def test_each_run_counts_once(tmp_path, capsys):
  """A `latest -> seed_0` link, a link to a parent, a backup copy of a seed's
  folder and an unrelated config.json do not add seeds: the report reads each
  (variant, seed) once and says what it passed over."""
  import shutil
  root = str(tmp_path / "grid")
  for seed, acc in zip((0, 1), (0.5, 0.7)):
    _run(root, "baseline", seed, acc)
  os.symlink(os.path.join(root, "baseline", "seed_0"), os.path.join(root, "baseline", "latest"))
  os.symlink(root, os.path.join(root, "baseline", "up"))
  shutil.copytree(os.path.join(root, "baseline", "seed_1"), os.path.join(root, "zz_backup"))
  os.makedirs(os.path.join(root, "notes"))
  with open(os.path.join(root, "notes", "config.json"), "w") as f:
    json.dump({"theme": "dark"}, f)
  os.makedirs(os.path.join(root, "broken"))
  with open(os.path.join(root, "broken", "config.json"), "w") as f:
    f.write("{not json")
  out = str(tmp_path / "report")
  rows = report.write_report([root, os.path.join(root, "baseline")], out)
  assert [(r["variant"], r["seeds"]) for r in rows] == [("baseline", [0, 1])]
  assert rows[0]["test_acc_at_best_val"] == pytest.approx(0.6)
  printed = capsys.readouterr().out
  for why in ("latest: a symbolic link (not followed)", "up: a symbolic link (not followed)",
              "zz_backup: the same variant (baseline) and seed (1) as the folder read",
              "notes: its config.json is not a run config of this library",
              "broken: its config.json cannot be read"):
    assert f"report: skipped {root}" in printed and why in printed, why
  markdown = open(os.path.join(out, "report.md")).read()
  assert "Not read (each run counts once): " in markdown and str(tmp_path) not in markdown
