"""Parameters that only the data can validate, checked right after a runner opens its store,
before any training or feature extraction. Each failure is one ConfigError naming one key.

Usage (each runner, right after `Store.open`)::

    check_data_params(params, store, "pretrain")
    check_data_params(params, store, "tune", tune_split=(train_rows, val_rows))
    check_data_params(params, store, "evaluate")

What is checked: pretrain and tune batch sizes against the samples they train on (a global
batch must fit, as batches drop the remainder), `tune.val_k` against the validation kNN bank,
`eval.knn_k` against the base-class train split (the kNN bank), `eval.probe_batch_size` in
paper mode against the same split, `eval.fewshot_knn_k` against the novel-class train split,
and `eval.fewshot_ways` / `fewshot_shots` / `fewshot_queries` against the novel classes and
their sample counts (`check_episodes`, which the episode sampler also uses).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.data.store import Store


def check_episodes(labels: np.ndarray, n_way: int, k_shot: int, n_query: int) -> None:
    """N-way K-shot episodes with `n_query` queries per class fit the labelled samples
    (`n_way` 0 = every class): else a ConfigError naming the key to change."""
    classes, counts = np.unique(labels, return_counts=True)
    if not 2 <= (n_way or len(classes)) <= len(classes):
        raise ConfigError(f"eval.fewshot_ways: {n_way} is invalid: {len(classes)} novel "
                          f"classes are available (use 2..{len(classes)}, or 0 for all)")
    smallest = int(np.argmin(counts))
    have = int(counts[smallest])
    if k_shot + n_query > have:
        key, value = (("eval.fewshot_shots", k_shot) if k_shot >= have
                      else ("eval.fewshot_queries", n_query))
        raise ConfigError(f"{key}: {value} is too many: novel class {classes[smallest]} has "
                          f"{have} samples, fewer than {k_shot} shots + {n_query} queries")


def check_data_params(params: Params, store: Store,
                      stage: Literal["pretrain", "tune", "evaluate"],
                      tune_split: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Check `stage`'s data-dependent parameters against `store` (tune: against its
    (train, validation) rows)."""
    base_train = len(store.select(split="train", novel=False))
    limits: list[tuple[str, int, int, str]] = []  # key, value, at most, what bounds it
    if stage == "pretrain":
        limits.append(("pretrain.batch_size", params.pretrain.batch_size, base_train,
                       "base-class training samples (one global batch must fit)"))
    elif stage == "tune":
        train, val = tune_split
        limits.append(("tune.batch_size", params.tune.batch_size, len(train),
                       "tuning samples after the validation split (one global batch must fit)"))
        if len(val):
            limits.append(("tune.val_k", params.tune.val_k, len(train),
                           "samples in the validation kNN bank (train minus validation)"))
    else:
        cfg = params.eval
        limits.append(("eval.knn_k", max(cfg.knn_k), base_train,
                       "samples in the kNN bank (base-class train split)"))
        if cfg.probe_mode == "paper":
            limits.append(("eval.probe_batch_size", cfg.probe_batch_size, base_train,
                           "base-class training samples (one batch must fit)"))
        novel_train = len(store.select(split="train", novel=True))
        if cfg.fewshot and novel_train and len(store.select(split="test", novel=True)):
            limits.append(("eval.fewshot_knn_k", max(cfg.fewshot_knn_k), novel_train,
                           "samples in the few-shot kNN bank (novel-class train split)"))
    for key, value, most, what in limits:
        if value > most:
            fix = f"use at most {most}" if most else "check the data and rerun preprocess"
            raise ConfigError(f"{key}: {value} is invalid: the store {store.dir} holds {most} "
                              f"{what}; {fix}")
    if stage == "evaluate":
        labels = store.index["label"].to_numpy()[store.select(novel=True)]
        if len(labels) and params.eval.fewshot:
            for n_way in params.eval.fewshot_ways:
                check_episodes(labels, n_way, max(params.eval.fewshot_shots),
                               params.eval.fewshot_queries)
