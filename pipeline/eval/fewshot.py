"""Few-shot evaluation on classes never seen in pretraining or tuning (DESIGN.md section 4).

Usage::

    release = release_fewshot(train_f, train_y, test_f, test_y, ks=[1, 2, 5])   # {k: acc}
    episodic = episodic_fewshot(feats, labels, ways=[5, 0], shots=[1, 5], n_query=15,
                                episodes=600, seed=0)
    episodic["fewshot_5way_1shot_proto_mean"], episodic["fewshot_5way_1shot_proto_ci95"]

Two protocols:
- The public STARS release (`knn_eval.py` run on its few-shot data file): cosine kNN with the
  novel-class samples of the train split as the labelled bank and those of the test split
  as queries, k in {1, 2, 5}. Its reported 63.5 / 62.2 / 65.7 are this number.
- Episodic N-way K-shot: per episode, N novel classes (0 = all), K support and `n_query`
  query samples per class, disjoint; classified by nearest prototype (cosine to the mean of
  the L2-normalised support features, as ProtoNet at test time) and by 1-NN over the
  support set. Reported as mean and 95% interval over episodes:
  ci95 = 1.96 * std(acc) / sqrt(episodes), std over episodes with ddof = 0 (the usual
  few-shot convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.checks import check_episodes
from pipeline.eval.knn import knn_accuracy


def release_fewshot(bank_feats: np.ndarray, bank_labels: np.ndarray, query_feats: np.ndarray,
                    query_labels: np.ndarray, ks: Sequence[int],
                    device: str | torch.device | None = None) -> dict[int, float]:
    """The public release's protocol: kNN accuracy of novel test samples on novel train."""
    return knn_accuracy(bank_feats, bank_labels, query_feats, query_labels, ks, device=device)


class EpisodeSampler:
    """Seeded N-way K-shot episodes over `labels`; indices, not features.

    `sample(episodes)` returns support (E, N, K) and query (E, N, Q) indices into `labels`,
    row n of both belonging to the same class, support and query disjoint. The same seed
    gives the same episodes.
    """

    def __init__(self, labels: np.ndarray, n_way: int, k_shot: int, n_query: int, seed: int):
        check_episodes(labels, n_way, k_shot, n_query)
        self.order = np.argsort(labels, kind="stable")            # indices grouped by class
        classes, self.starts, self.counts = np.unique(labels[self.order], return_index=True,
                                                      return_counts=True)
        self.n_way = n_way or len(classes)                       # 0 = every class
        self.k_shot, self.n_query = k_shot, n_query
        self.rng = np.random.default_rng(seed)

    def _distinct(self, n: np.ndarray, m: int) -> np.ndarray:
        """Per row, m distinct integers from [0, n) in random order: Floyd's algorithm
        vectorised over rows (m steps; no (rows, n) random array). n (R,) -> (R, m)."""
        out = np.empty((len(n), m), dtype=np.int64)
        for i in range(m):
            top = n - m + i
            t = self.rng.integers(0, top + 1)
            taken = (out[:, :i] == t[:, None]).any(axis=1)
            out[:, i] = np.where(taken, top, t)
        # Floyd's subset is uniform but its order is not: shuffle before the support/query cut
        return np.take_along_axis(out, self.rng.random(out.shape).argsort(axis=1), axis=1)

    def sample(self, episodes: int) -> tuple[np.ndarray, np.ndarray]:
        n_cls = len(self.counts)
        ways = self.rng.random((episodes, n_cls)).argsort(axis=1)[:, :self.n_way]   # (E, N)
        picks = self._distinct(self.counts[ways].ravel(), self.k_shot + self.n_query)
        picks = picks.reshape(episodes, self.n_way, -1) + self.starts[ways][..., None]
        idx = self.order[picks]                                  # (E, N, K + Q)
        return idx[..., :self.k_shot], idx[..., self.k_shot:]


def mean_ci95(accs: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-interval 1.96 * std / sqrt(n) (normal approximation, ddof 0)."""
    return float(np.mean(accs)), float(1.96 * np.std(accs) / np.sqrt(len(accs)))


@torch.no_grad()
def episode_accuracies(feats: torch.Tensor, support: np.ndarray, query: np.ndarray,
                       chunk: int | None = None) -> dict[str, np.ndarray]:
    """Per-episode accuracy of nearest-prototype and 1-NN; feats (N, D) L2-normalised.

    Episodes are batched `chunk` at a time (default: ~64 MB of gathered query features), so
    600 episodes are a handful of large tensor ops rather than thousands of small ones.
    """
    E, N, K = support.shape
    Q = query.shape[2]
    chunk = chunk or max(1, (1 << 24) // (N * (K + Q) * feats.shape[1]))
    target = torch.arange(N, device=feats.device).repeat_interleave(Q)          # (N*Q,)
    accs = {"proto": [], "nn1": []}
    for s in range(0, E, chunk):
        sup = feats[torch.from_numpy(support[s:s + chunk]).to(feats.device)]    # (e, N, K, D)
        qry = feats[torch.from_numpy(query[s:s + chunk]).to(feats.device)]      # (e, N, Q, D)
        qry = qry.flatten(1, 2)                                                  # (e, N*Q, D)
        proto = F.normalize(sup.mean(dim=2), dim=-1)                             # (e, N, D)
        pred = (qry @ proto.transpose(1, 2)).argmax(-1)                          # (e, N*Q)
        accs["proto"].append((pred == target).float().mean(1))
        nearest = (qry @ sup.flatten(1, 2).transpose(1, 2)).argmax(-1)          # (e, N*Q)
        accs["nn1"].append((nearest // K == target).float().mean(1))            # class of it
    return {name: torch.cat(a).cpu().numpy() for name, a in accs.items()}


def episodic_fewshot(feats: np.ndarray, labels: np.ndarray, ways: Sequence[int],
                     shots: Sequence[int], n_query: int, episodes: int, seed: int,
                     device: str | torch.device | None = None) -> dict[str, float]:
    """Flat metrics `fewshot_{N}way_{K}shot_{proto|nn1}_{mean|ci95}` (N = "all" for 0)."""
    f = F.normalize(torch.as_tensor(feats, dtype=torch.float32, device=device), dim=1)
    out = {}
    for n_way in ways:
        for k_shot in shots:
            sampler = EpisodeSampler(labels, n_way, k_shot, n_query, seed)
            support, query = sampler.sample(episodes)
            name = f"fewshot_{n_way or 'all'}way_{k_shot}shot"
            for clf, accs in episode_accuracies(f, support, query).items():
                out[f"{name}_{clf}_mean"], out[f"{name}_{clf}_ci95"] = mean_ci95(accs)
    return out
