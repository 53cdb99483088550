"""OGM-GE's per-step signals in the AV-Digits ablation: how often each modality
is the 'dominant' one, the score ratio, the coefficient it gets.

`python docs/results/av_digits_ogm_ablation/diagnose.py <sweep dir> <out dir>`
reads the TensorBoard scalars of every OGM arm (logged every step:
--config.log_every_steps=1) and writes `ogm_diagnostics.md` and
`ogm_coefficient_steps.png` into <out dir>.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from asgml_jax.report import train_signals


def arm_runs(sweep: str) -> dict[str, list[str]]:
  runs = {}
  for path in sorted(glob.glob(os.path.join(sweep, "*", "seed_*", "config.json"))):
    with open(path) as f:
      config = json.load(f)
    finished = os.path.exists(os.path.join(os.path.dirname(path), "summary.json"))
    if config["method"]["name"] in ("ogm", "ogm_ge") and finished:
      runs.setdefault(config["label"], []).append(os.path.dirname(path))
  return runs


def diagnostics(run: str) -> dict:
  s = train_signals(run, ["ogm/"])
  ca, cv = s["ogm/coeff_audio"][1], s["ogm/coeff_visual"][1]
  ratio = s["ogm/score_ratio_audio"][1]
  audio_ahead = ca < 1.0
  dominant_coeff = np.minimum(ca, cv)
  flips = np.mean(audio_ahead[1:] != audio_ahead[:-1])
  return {"audio_ahead": float(audio_ahead.mean()), "flip_rate": float(flips),
          "ratio_median": float(np.median(ratio)),
          "ratio_iqr": (float(np.percentile(ratio, 25)), float(np.percentile(ratio, 75))),
          "dominant_coeff": float(dominant_coeff.mean()),
          "mean_coeff": {"audio": float(ca.mean()), "visual": float(cv.mean())},
          "steps": s["ogm/coeff_audio"][0], "ca": ca, "cv": cv, "ratio": ratio}


def main(sweep: str, out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = arm_runs(sweep)
  lines = ["| arm | seeds | steps with audio ahead | dominant flips per step | "
           "score ratio audio/visual, median (IQR) | mean coefficient of the one ahead | "
           "mean coefficient audio / visual |", "|---|---|---|---|---|---|---|"]
  per_arm = {}
  for arm, members in runs.items():
    d = [diagnostics(r) for r in members]
    per_arm[arm] = d
    mean = lambda k: np.mean([x[k] for x in d])
    iqr = np.mean([x["ratio_iqr"] for x in d], axis=0)
    lines.append(
        f"| {arm} | {len(d)} | {100 * mean('audio_ahead'):.0f} % | {mean('flip_rate'):.2f} | "
        f"{mean('ratio_median'):.3f} ({iqr[0]:.2f}–{iqr[1]:.2f}) | {mean('dominant_coeff'):.3f} | "
        f"{np.mean([x['mean_coeff']['audio'] for x in d]):.3f} / "
        f"{np.mean([x['mean_coeff']['visual'] for x in d]):.3f} |")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "ogm_diagnostics.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))

  show = [a for a in ("ogm_ge", "ogm_ge_continuous") if a in per_arm]
  fig, axes = plt.subplots(len(show) + 1, 1, figsize=(11, 3.2 * (len(show) + 1)))
  for ax, arm in zip(axes, show):
    d = per_arm[arm][0]
    sl = slice(0, 93)   # the first 3 epochs (31 steps each)
    ax.step(d["steps"][sl], d["ca"][sl], where="post", label="audio")
    ax.step(d["steps"][sl], d["cv"][sl], where="post", label="visual", alpha=0.8)
    ax.set(title=f"{arm}, {os.path.basename(runs[arm][0])}: OGM coefficient per step "
                 "(first 3 epochs)", xlabel="step", ylabel="coefficient", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  ax = axes[-1]
  for arm in show:
    ratios = np.concatenate([x["ratio"] for x in per_arm[arm]])
    ax.hist(ratios, bins=60, range=(0.5, 1.5), alpha=0.5, label=f"{arm} (all seeds, all steps)")
  ax.axvline(1.0, color="k", lw=0.8)
  ax.set(title="score ratio audio / visual (OGM's batch sums of true-class probability)",
         xlabel="ratio", ylabel="steps")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "ogm_coefficient_steps.png"), dpi=110)


if __name__ == "__main__":
  main(*sys.argv[1:3])
