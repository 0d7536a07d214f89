"""SkeletonDataset and GlobalBatchSampler: per-sample seeds independent of the world size."""

import numpy as np
import pytest
import torch

from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader, sample_seed
from pipeline.data.store import SampleMeta, Store, StoreWriter
from pipeline.data.transforms import TrainTransform


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "store", dataset="synthetic", benchmark="xsub",
                     class_names=["a", "b", "c"]) as w:
        for i in range(10):
            meta = SampleMeta(name=f"s{i}", label=i % 3, performer=1, camera=1, setup=1,
                              replication=1, split="train" if i < 7 else "test")
            w.add(meta, rng.normal(size=(20 + i, 2, 25, 3)))
    return Store.open(tmp_path / "store")


def test_item_has_shapes_types_and_row_index(store):
    ds = SkeletonDataset(store, store.select(split="test"), TrainTransform(frames_out=16))
    item = ds[(1, 1234)]
    assert item["x"].shape == (2, 16, 25, 3) and item["x"].dtype == torch.float32
    assert item["index"].item() == 8 and item["label"].item() == 8 % 3
    assert item["label"].dtype == item["index"].dtype == item["seed"].dtype == torch.int64
    assert item["seed"].item() == 1234 and len(ds) == 3


def test_same_seed_gives_same_sample_and_other_seed_differs(store):
    ds = SkeletonDataset(store, np.arange(10), TrainTransform(frames_out=16))
    assert torch.equal(ds[(4, 7)]["x"], ds[(4, 7)]["x"])
    assert not torch.equal(ds[(4, 7)]["x"], ds[(4, 8)]["x"])


def _batches(n, global_batch, world, **kw):
    return [list(GlobalBatchSampler(n, global_batch, rank, world, **kw)) for rank in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_union_of_rank_batches_equals_the_single_process_batch(world):
    (single,) = _batches(37, 8, 1, seed=3, epoch=2)
    ranks = _batches(37, 8, world, seed=3, epoch=2)
    assert len(single) == 4 and all(len(r) == 4 for r in ranks)
    for b, batch in enumerate(single):
        assert [item for r in ranks for item in r[b]] == batch  # contiguous slices, same seeds
        assert all(len(r[b]) == 8 // world for r in ranks)


def test_order_is_a_permutation_that_changes_with_the_epoch():
    e0 = [p for batch in GlobalBatchSampler(40, 8, epoch=0, seed=1) for p, _ in batch]
    e1 = [p for batch in GlobalBatchSampler(40, 8, epoch=1, seed=1) for p, _ in batch]
    assert sorted(e0) == sorted(e1) == list(range(40)) and e0 != e1
    sampler = GlobalBatchSampler(40, 8, epoch=0, seed=1)
    sampler.set_epoch(1)
    assert [p for batch in sampler for p, _ in batch] == e1


def test_seeds_depend_on_seed_epoch_and_position_only():
    batch = next(iter(GlobalBatchSampler(10, 4, seed=5, epoch=3, shuffle=False)))
    assert batch == [(k, sample_seed(5, 3, k)) for k in range(4)]
    assert len({sample_seed(5, 3, k) for k in range(1000)}) == 1000
    assert sample_seed(5, 3, 0) != sample_seed(5, 4, 0) != sample_seed(6, 3, 0)


def test_drop_last_false_keeps_the_short_batch_split_across_ranks():
    ranks = _batches(10, 4, 2, shuffle=False, drop_last=False)
    assert [[p for p, _ in b] for b in ranks[0]] == [[0, 1], [4, 5], [8]]
    assert [[p for p, _ in b] for b in ranks[1]] == [[2, 3], [6, 7], [9]]


def test_global_batch_must_divide_by_world():
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(10, 6, 0, 4)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_match_direct_indexing(store, workers):
    ds = SkeletonDataset(store, store.select(split="train"), TrainTransform(frames_out=16))
    sampler = GlobalBatchSampler(len(ds), 4, seed=0, epoch=0)
    loader = make_loader(ds, sampler, workers=workers)
    assert loader.persistent_workers == (workers > 0)
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["x"].shape == (4, 2, 16, 25, 3)
    expected = [ds[key] for key in next(iter(sampler))]
    assert torch.equal(batches[0]["x"], torch.stack([e["x"] for e in expected]))
    assert batches[0]["seed"].tolist() == [e["seed"].item() for e in expected]
