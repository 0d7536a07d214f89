"""Fine-tuning on tiny stores: overfitting, resume, the semi and transfer protocols."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import parse_params
from pipeline.core.errors import UserError
from pipeline.core.tracking import NullTracker
from pipeline.data.preprocess import preprocess
from pipeline.data.store import Store
from pipeline.data.synthetic.pku_writer import generate_pku
from pipeline.finetune import finetune_one, make_task, run_finetune
from pipeline.models.mamp import MAMP
from pipeline.training import checkpoint
from tests.conftest import write_store as write_tiny_store

TINY = {"model": {"depth": 2, "dim": 16, "heads": 2, "frames": 8, "t_patch": 4,
                  "decoder_depth": 1, "decoder_dim": 16, "decoder_heads": 2},
        "finetune": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "head_hidden": 16,
                     "loader_workers": 0, "label_fractions": [0.3, 0.6], "seeds": [0, 1]},
        "transfer": {"synth_classes": 3, "synth_performers": 3},
        "synth": {"min_frames": 12, "max_frames": 20},
        "eval": {"batch_size": 8}}


def params(**groups):
    return parse_params({**TINY, **{g: {**TINY.get(g, {}), **v} for g, v in groups.items()}})


def write_store(out: Path, per_class: int = 8) -> Path:
    """3 classes with class-specific motion: `per_class` train + 2 test samples each."""
    rng = np.random.default_rng(0)

    def samples():
        for label in range(3):
            for k in range(per_class + 2):
                t = np.arange(10 + k)[:, None, None, None]
                frames = (0.3 * np.sin(t * (label + 1) / 3.0)
                          + rng.normal(0, 0.02, (len(t), 2, 25, 3)))
                frames[:, 1] = 0.0                                  # one actor
                yield f"c{label}s{k}", label, "train" if k < per_class else "test", frames

    return write_tiny_store(out, samples(), ["a", "b", "c"])


def write_mamp(path: Path, p) -> Path:
    torch.manual_seed(0)
    checkpoint.save(path, checkpoint.make("mamp", MAMP(p.model, mask_ratio=0.5), config={}))
    return path


@pytest.mark.slow
def test_fine_tuning_overfits_eight_samples(tmp_path):
    p = params(finetune={"epochs": 40, "batch_size": 8, "lr": 3e-3, "drop_path": 0.0,
                         "head_dropout": 0.0, "label_smoothing": 0.0},
               pretrain={"crop_min": 1.0, "rotate": 0.0})
    store = Store.open(write_store(tmp_path / "store", per_class=3))
    rows = store.select(split="train")[:8]
    task = make_task(store, rows, rows)                   # scored on the samples it learns
    out = finetune_one(p, task, write_mamp(tmp_path / "mamp.pt", p), tmp_path / "ckpt", 0,
                       NullTracker())
    assert out["top1"] == 1.0 and out["final_loss"] < 0.3
    assert (out["epochs"], out["train_samples"], out["classes"]) == (40, 8, 3)
    last = checkpoint.load(tmp_path / "ckpt" / "last.pt")
    assert last["kind"] == "finetune" and "head.fc1.weight" in last["model"]


@pytest.mark.slow
def test_resume_mid_fine_tune_gives_identical_weights(tmp_path):
    p = params(finetune={"epochs": 3})
    store = Store.open(write_store(tmp_path / "store"))
    task = make_task(store, store.select(split="train"), store.select(split="test"))
    mamp = write_mamp(tmp_path / "mamp.pt", p)
    reference = finetune_one(p, task, mamp, tmp_path / "uninterrupted", 0, NullTracker())

    class Killed(Exception):
        pass

    class KilledAfterSecondEpoch(NullTracker):
        def log_metrics(self, metrics, step=0):      # fit logs after saving last.pt
            if step == 1:
                raise Killed

    with pytest.raises(Killed):
        finetune_one(p, task, mamp, tmp_path / "killed", 0, KilledAfterSecondEpoch())
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["epoch"] == 2
    resumed = finetune_one(p, task, mamp, tmp_path / "killed", 0, NullTracker())
    a, b = (checkpoint.load(tmp_path / d / "last.pt") for d in ("uninterrupted", "killed"))
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert resumed["top1"] == reference["top1"]


def target_store(tmp: Path, p) -> Path:
    """The synthetic PKU-MMD II target, through the real PKU reader."""
    generate_pku(p.synth, p.transfer, tmp / "pku")
    data = p.transfer.as_data()
    preprocess(data.__class__(**{**data.__dict__, "raw_dir": str(tmp / "pku")}), p.preprocess,
               tmp / "target")
    return tmp / "target"


def test_transfer_fine_tunes_on_a_synthetic_pku_target_end_to_end(tmp_path):
    p = params(finetune={"protocols": ["transfer"], "epochs": 1})
    store = write_store(tmp_path / "store")
    mamp = write_mamp(tmp_path / "mamp.pt", p)
    m = run_finetune(p, store, target_store(tmp_path, p), {"mamp": mamp, "stars": mamp},
                     tmp_path / "ckpt", tmp_path / "finetune.json", NullTracker())
    assert json.loads((tmp_path / "finetune.json").read_text()) == m
    assert m["transfer_target"] == {"source": "pku2", "benchmark": "xsub",
                                    "raw_dir": "data/raw/synthetic_pku", "classes": 3,
                                    "train_samples": 18, "test_samples": 9}
    for model in ("mamp", "stars"):
        assert set(m[model]) == {"transfer"}
        assert m[model]["transfer"]["classes"] == 3
        assert 0 <= m[model]["transfer"]["top1"] <= m[model]["transfer"]["top5"] == 1.0
    assert m["chance"] == {"transfer": pytest.approx(1 / 3)}


def test_a_subset_smaller_than_a_batch_fails_before_any_training(tmp_path):
    p = params(finetune={"protocols": ["full", "semi"], "label_fractions": [0.1],
                         "batch_size": 8})
    store = write_store(tmp_path / "store")
    mamp = write_mamp(tmp_path / "mamp.pt", p)
    with pytest.raises(UserError, match="finetune.batch_size: 8 is more than the 3 training "
                                        "samples of run semi_0.1_seed0"):
        run_finetune(p, store, tmp_path / "none", {"mamp": mamp, "stars": mamp},
                     tmp_path / "ckpt", tmp_path / "finetune.json", NullTracker())
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_every_protocol_for_both_models(tmp_path):
    p = params()
    store = write_store(tmp_path / "store")
    mamp = write_mamp(tmp_path / "mamp.pt", p)
    m = run_finetune(p, store, target_store(tmp_path, p), {"mamp": mamp, "stars": mamp},
                     tmp_path / "ckpt", tmp_path / "finetune.json", NullTracker())
    for model in ("mamp", "stars"):
        assert set(m[model]) == {"full", "semi", "transfer"}
        assert m[model]["full"]["train_samples"] == 24
        assert set(m[model]["semi"]) == {"0.3", "0.6"}
        for fraction, n in (("0.3", 6), ("0.6", 15)):          # round(f * 8) per class x 3
            semi = m[model]["semi"][fraction]
            assert set(semi["runs"]) == {"seed0", "seed1"} and semi["train_samples"] == n
            tops = [r["top1"] for r in semi["runs"].values()]
            assert semi["top1_mean"] == pytest.approx(np.mean(tops))
            assert semi["top1_std"] == pytest.approx(np.std(tops, ddof=1))
    # each seed fine-tunes on its own subset, recorded in its checkpoint
    rows = {s: checkpoint.load(tmp_path / f"ckpt/stars/semi_0.3_seed{s}/last.pt")["config"]
            ["rows"] for s in (0, 1)}
    assert rows[0] != rows[1]
    assert set(m["delta"]) >= {"full_top1", "transfer_top1", "semi_0.3_top1_mean"}
    assert m["chance"] == {"full": pytest.approx(1 / 3), "transfer": pytest.approx(1 / 3)}
