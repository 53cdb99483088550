"""How well a modality's features separate the classes without a classifier:
min-max scaling, k-means and cluster purity (host side, between epochs).

Diagnosing & Re-learning (asgml_jax/methods/relearning.py) compares this
purity on the training and validation features of each encoder. Its
reference (BalanceBenchmark `ReLearning_trainer.py` `reinit_score`; the
paper's code the same) calls scikit-learn:
`MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)`, then
`KMeans(n_clusters=C, random_state=0).fit_predict(...)`, then its own
`purity_score`. This module calls the same two scikit-learn estimators with
the same arguments (scikit-learn's greedy k-means++ seeding from
RandomState(0), one run, Lloyd iterations), on the features as float32 as
the reference's `.cpu().numpy()` gives them; `purity` is `purity_score`.
BalanceBenchmark pins scikit-learn 1.4.2, whose KMeans defaults
(`n_init="auto"`: one run for k-means++) are those of the pinned version
here; `n_init` is passed explicitly so a later default cannot change it.
"""

from __future__ import annotations

import numpy as np


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
  """Fraction of examples whose label is their cluster's most common label
  (ties: the smallest label), the reference's `purity_score`."""
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  voted = np.empty_like(labels)
  for c in np.unique(clusters):
    members = clusters == c
    values, counts = np.unique(labels[members], return_counts=True)
    voted[members] = values[np.argmax(counts)]
  return float(np.mean(voted == labels))


def kmeans_clusters(features: np.ndarray, num_classes: int) -> np.ndarray:
  """Cluster index of every row: scikit-learn's KMeans(k = classes,
  random_state=0) on MinMaxScaler(-1, 1) features."""
  # scikit-learn is imported here, not at module level: it is only needed
  # when a Re-learning diagnosis runs, and importing it costs about a second.
  from sklearn.cluster import KMeans
  from sklearn.preprocessing import MinMaxScaler
  x = np.asarray(features)
  if len(x) < num_classes:
    raise ValueError(f"kmeans: {len(x)} examples cannot form {num_classes} clusters")
  scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)
  return KMeans(n_clusters=num_classes, random_state=0, n_init="auto").fit_predict(scaled)


def feature_purity(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Purity of k-means (k = classes) on min-max-scaled features."""
  return purity(labels, kmeans_clusters(features, num_classes))
