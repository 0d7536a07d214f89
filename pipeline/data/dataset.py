"""Torch Dataset over a packed store, and a batch sampler whose randomness ignores the world size.

Usage::

    ds = SkeletonDataset(store, store.select(split="train", novel=False), TrainTransform(120))
    sampler = GlobalBatchSampler(len(ds), global_batch=128, rank=rank, world=world,
                                 seed=cfg.seed, epoch=0)
    loader = make_loader(ds, sampler, workers=cfg.loader_workers, pin_memory=cuda)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:   # {"x": (N, M, T, V, C), "label", "index", "seed"}
            ...

Every global batch is the same whatever the number of processes: the order is a permutation
drawn from (seed, epoch), each rank takes a contiguous slice of every global batch, and each
sample's seed is a hash of (seed, epoch, position in the global order). Augmentation and
masking noise come only from that seed, so a run on 1 process and on 4 sees the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.data.store import Store

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at `position` of epoch `epoch`'s global order."""
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class SkeletonDataset(Dataset):
    """`ds[(row_pos, seed)]` -> transformed sample `rows[row_pos]` of the store."""

    def __init__(self, store: Store, rows: np.ndarray, transform: Transform):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.labels = store.index["label"].to_numpy(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        row_pos, seed = key
        i = int(self.rows[row_pos])
        x = self.transform(self.store.sample(i), np.random.default_rng(seed))  # (M, T, V, C)
        return {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "label": torch.tensor(self.labels[i], dtype=torch.int64),
                "index": torch.tensor(i, dtype=torch.int64),
                "seed": torch.tensor(seed, dtype=torch.int64)}


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's contiguous slice of each global batch as (position, seed) pairs."""

    def __init__(self, n: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0,
                 epoch: int = 0, shuffle: bool = True, drop_last: bool = True):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world {world}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.epoch, self.shuffle, self.drop_last = seed, epoch, shuffle, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.global_batch
        return (self.n + self.global_batch - 1) // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        for b in range(len(self)):
            lo = b * self.global_batch
            size = min(self.global_batch, self.n - lo)
            # A short last batch (drop_last=False) is split as evenly as possible.
            bounds = np.linspace(0, size, self.world + 1).round().astype(int)
            positions = range(lo + bounds[self.rank], lo + bounds[self.rank + 1])
            yield [(int(order[k]), sample_seed(self.seed, self.epoch, k)) for k in positions]


def make_loader(dataset: SkeletonDataset, sampler: GlobalBatchSampler, workers: int,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader over `sampler`'s batches; workers persist across epochs."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0)
