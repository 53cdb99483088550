"""How well a modality's features separate the classes without a classifier:
min-max scaling, k-means and cluster purity, in NumPy (host side, between
epochs).

Diagnosing & Re-learning (asgml_jax/methods/relearning.py) compares this
purity on the training and validation features of each encoder. Its
reference uses scikit-learn (`MinMaxScaler(feature_range=(-1, 1))`,
`KMeans(n_clusters=C, random_state=0)`); the project does not depend on
scikit-learn, so the same three steps are written here: the scaler exactly,
k-means as scikit-learn's default (k-means++ seeding, one run — its
`n_init="auto"` for k-means++ —, Lloyd iterations until the centres move less
than tol × the mean feature variance, at most 300). The seeding draws are not
scikit-learn's, so cluster assignments can differ from it on data without a
clear cluster structure; purity on separable features does not.
"""

from __future__ import annotations

import numpy as np


def min_max_scale(x: np.ndarray, low: float = -1.0, high: float = 1.0) -> np.ndarray:
  """Each column mapped to [low, high] (scikit-learn's MinMaxScaler: a constant
  column maps to `low`)."""
  x = np.asarray(x, np.float64)
  lo, hi = x.min(0), x.max(0)
  span = np.where(hi - lo == 0, 1.0, hi - lo)
  return (x - lo) / span * (high - low) + low


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  centres = [x[rng.integers(len(x))]]
  dist = np.sum((x - centres[0]) ** 2, 1)
  for _ in range(1, k):
    total = dist.sum()
    pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=dist / total)
    centres.append(x[pick])
    dist = np.minimum(dist, np.sum((x - x[pick]) ** 2, 1))
  return np.stack(centres)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 300,
           tol: float = 1e-4) -> np.ndarray:
  """Cluster index of every row of `x` (N, D) among `k` clusters."""
  x = np.asarray(x, np.float64)
  if len(x) < k:
    raise ValueError(f"kmeans: {len(x)} examples cannot form {k} clusters")
  rng = np.random.default_rng(seed)
  centres = _kmeans_plus_plus(x, k, rng)
  threshold = tol * float(np.mean(np.var(x, 0)))
  sq_norms = np.sum(x ** 2, 1)
  for _ in range(max_iter):
    d = sq_norms[:, None] - 2 * x @ centres.T + np.sum(centres ** 2, 1)[None, :]
    assign = np.argmin(d, 1)
    new = np.stack([x[assign == j].mean(0) if np.any(assign == j) else centres[j]
                    for j in range(k)])
    shift = float(np.sum((new - centres) ** 2))
    centres = new
    if shift <= threshold:
      break
  d = sq_norms[:, None] - 2 * x @ centres.T + np.sum(centres ** 2, 1)[None, :]
  return np.argmin(d, 1)


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
  """Fraction of examples whose label is their cluster's most common label
  (ties: the smallest label)."""
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  voted = np.empty_like(labels)
  for c in np.unique(clusters):
    members = clusters == c
    values, counts = np.unique(labels[members], return_counts=True)
    voted[members] = values[np.argmax(counts)]
  return float(np.mean(voted == labels))


def feature_purity(features: np.ndarray, labels: np.ndarray, num_classes: int,
                   seed: int = 0) -> float:
  """Purity of k-means (k = classes) on min-max-scaled features."""
  return purity(labels, kmeans(min_max_scale(features), num_classes, seed=seed))
