"""Cluster quality of features, the paper's central claim (STARS forms semantic clusters,
MAMP does not), which the paper shows only as a t-SNE picture.

Usage::

    cluster_metrics(test_feats, test_labels, seed=0)   # {"nmi", "ari", "silhouette"}

- k-means (scikit-learn, `n_init` fixed restarts, seeded) with k = the number of true classes
  on L2-normalised features (so Euclidean k-means ranks like cosine); NMI and ARI of its
  assignment against the labels.
- Silhouette (cosine distance) of the *true* classes: how compact and separated the classes
  are in feature space, independent of k-means' luck. Computed on a seeded random subsample
  above `silhouette_max` samples (it is quadratic in N).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.preprocessing import normalize


def cluster_metrics(feats: np.ndarray, labels: np.ndarray, seed: int, n_init: int = 10,
                    silhouette_max: int = 10_000) -> dict[str, float]:
    """NMI and ARI of k-means vs labels, and cosine silhouette of the labels."""
    x = normalize(np.asarray(feats, dtype=np.float32))
    n_classes = len(np.unique(labels))
    assigned = KMeans(n_clusters=n_classes, n_init=n_init, random_state=seed).fit_predict(x)
    sample = silhouette_max if len(x) > silhouette_max else None
    return {
        "nmi": float(normalized_mutual_info_score(labels, assigned)),
        "ari": float(adjusted_rand_score(labels, assigned)),
        "silhouette": float(silhouette_score(x, labels, metric="cosine", sample_size=sample,
                                             random_state=seed)),
    }
