"""Is a variant's difference from a reference real? A paired t-test over seeds.

Runs of two variants with the same seed share the seed's data order and (for
the same model) its initial parameters, so the per-seed differences
d_s = x_variant(s) - x_reference(s) remove the seed-to-seed variance that
dominates with 3-5 seeds; an unpaired comparison of the two means would
call far fewer real differences. With n paired seeds:

    mean = avg(d),  se = std(d, ddof=1) / sqrt(n),  t = mean / se  (n - 1 dof)
    95 % interval: mean ± t_{0.975, n-1} * se;  p: two-sided

The t-test assumes the differences are roughly normal, which cannot be
checked with 3-5 seeds; it is what papers with few seeds report, and the
interval says more than the p-value. No correction for comparing many
variants is applied: with 17 variants about one "significant" row is
expected by chance at 5 %. Fewer than 2 pairs give no test.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95


def paired_difference(variant: dict[int, float], reference: dict[int, float]) -> dict:
  """{seed: value} of two variants -> n, mean difference, 95 % interval, p,
  significant (p < 0.05); NaNs where fewer than 2 seeds pair up."""
  from scipy import stats  # ~0.5 s: only when a report tests differences
  seeds = sorted(set(variant) & set(reference))
  d = np.array([variant[s] - reference[s] for s in seeds], dtype=float)
  out = {"n": len(seeds), "mean": float(d.mean()) if len(d) else math.nan,
         "low": math.nan, "high": math.nan, "p": math.nan, "significant": False}
  if len(d) < 2:
    return out
  se = float(d.std(ddof=1)) / math.sqrt(len(d))
  if se == 0.0:  # every seed moved by exactly the same amount
    out.update(low=out["mean"], high=out["mean"], p=0.0 if out["mean"] else 1.0)
  else:
    half = float(stats.t.ppf(0.5 + LEVEL / 2, len(d) - 1)) * se
    t = out["mean"] / se
    out.update(low=out["mean"] - half, high=out["mean"] + half,
               p=float(2 * stats.t.sf(abs(t), len(d) - 1)))
  out["significant"] = bool(out["p"] < 1 - LEVEL)
  return out
