"""run_pretrain on a tiny generated store: outputs, resume, and 1 vs 2 processes."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import parse_params
from pipeline.core.tracking import NullTracker
from pipeline.training import checkpoint
from tests.conftest import free_port
from tests.conftest import write_store as write_tiny_store

TINY = {"model": {"depth": 2, "dim": 16, "heads": 2, "frames": 8, "t_patch": 4,
                  "decoder_depth": 1, "decoder_dim": 16, "decoder_heads": 2},
        "pretrain": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1, "loader_workers": 0,
                     "crop_floor": 4}}


def write_store(out: Path, samples: int = 10) -> Path:
    """Random-walk skeletons: 8 train base-class samples, 2 excluded (test / novel)."""
    rng = np.random.default_rng(0)

    def rows():
        for i in range(samples):
            frames = np.cumsum(rng.normal(0, 0.02, (12 + i, 2, 25, 3)), axis=0) + 0.5
            frames[:, 1] = 0.0 if i % 2 else frames[:, 1]          # one-actor samples
            split, label = ("test", 0) if i == 8 else ("train", i % 2)
            yield f"s{i}", 2 if i == 9 else label, split, frames

    return write_tiny_store(out, rows(), ["a", "b", "c"], novel_labels=[2])


def run(tmp: Path, store: Path, **pretrain):
    from pipeline.pretrain import run_pretrain

    params = parse_params({**TINY, "pretrain": {**TINY["pretrain"], **pretrain}})
    return run_pretrain(params, store, tmp / "ckpt", tmp / "metrics" / "pretrain.json",
                        tmp / "plots", NullTracker())


def test_run_pretrain_writes_metrics_plot_and_checkpoint(tmp_path):
    store = write_store(tmp_path / "store")
    metrics = run(tmp_path, store)
    results = json.loads((tmp_path / "metrics" / "pretrain.json").read_text())
    timing = json.loads((tmp_path / "metrics" / "timing.json").read_text())["pretrain"]
    assert set(results) == {"final_loss"} and results | timing == metrics  # no timing in DVC
    assert metrics["epochs"] == 2 and metrics["train_samples"] == 8
    assert (metrics["tokens_per_sample"], metrics["kept_tokens"]) == (50, 4)
    assert np.isfinite(metrics["final_loss"]) and metrics["median_samples_per_s"] > 0
    rows = list(csv.DictReader((tmp_path / "plots" / "loss.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[-1]["loss"]) == metrics["final_loss"]
    ckpt = checkpoint.load(tmp_path / "ckpt" / "last.pt")
    assert (ckpt["kind"], ckpt["epoch"], ckpt["step"]) == ("mamp", 2, 4)
    assert ckpt["config"]["model"]["dim"] == 16 and ckpt["config"]["pretrain"]["epochs"] == 2
    assert "mask_token" in ckpt["model"] and not any(k.startswith("module.")
                                                     for k in ckpt["model"])
    decay_groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in decay_groups] == [0.0, 0.05]
    n_no_decay = len(decay_groups[0]["params"])
    assert n_no_decay == sum(1 for k, v in ckpt["model"].items()
                             if v.ndim <= 1 or k in ("temp_embed", "pos_embed", "mask_token",
                                                     "decoder_temp_embed", "decoder_pos_embed"))


def test_longer_run_resumes_from_the_shorter_one_only_when_config_matches(tmp_path):
    store = write_store(tmp_path / "store")
    first = run(tmp_path, store, loader_workers=0)
    again = run(tmp_path, store, loader_workers=1)        # speed-only key: still resumes
    assert again["final_loss"] == first["final_loss"] and again["epochs"] == 2
    changed = run(tmp_path, store, lr=5e-4)               # a real change starts fresh
    assert changed["final_loss"] != first["final_loss"]


def test_batch_larger_than_the_train_split_names_the_key_before_training(tmp_path):
    from pipeline.core.errors import ConfigError

    store = write_store(tmp_path / "store")
    with pytest.raises(ConfigError) as err:
        run(tmp_path, store, batch_size=16)
    assert str(err.value) == (f"pretrain.batch_size: 16 is invalid: the store {store} holds 8 "
                              f"base-class training samples (one global batch must fit); use "
                              f"at most 8")
    assert not (tmp_path / "ckpt").exists()


SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    sys.path[:0] = [{tests!r}, str(Path({tests!r}).parent)]
    from test_pretrain import TINY
    from pipeline.core import dist
    from pipeline.core.config import DistConfig, parse_params
    from pipeline.core.launch import maybe_relaunch
    from pipeline.pretrain import run_pretrain
    from pipeline.core.tracking import NullTracker


    def main(store, out, nproc, port):
        cfg = DistConfig(nproc=nproc, rdzv_endpoint=f"127.0.0.1:{{port}}")
        maybe_relaunch(cfg, [__file__, str(store), str(out), str(nproc), str(port)], "pretrain")
        dist.init(cfg)
        params = parse_params({{**TINY, "dist": {{"nproc": nproc}}}})
        out = Path(out)
        run_pretrain(params, Path(store), out / "ckpt", out / "pretrain.json", out / "plots",
                     NullTracker())
        dist.teardown()


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
""")


@pytest.mark.slow  # ~20 s: three torch start-ups on two cores
def test_two_processes_pretrain_with_the_same_loss_curve_as_one(tmp_path):
    """Same global batch of 4 split 2 + 2: per-epoch loss equal to rtol 1e-5, final weights
    to atol 1e-5 (only the order of float additions differs) except the attention key bias."""
    import torch

    store = write_store(tmp_path / "store")
    script = tmp_path / "pretrain_script.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    runpy.run_path(str(script))["main"](store, tmp_path / "one", 1, 0)
    proc = subprocess.run([sys.executable, str(script), str(store), str(tmp_path / "two"), "2",
                           str(free_port())], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (checkpoint.load(tmp_path / d / "ckpt" / "last.pt") for d in ("one", "two"))
    loss_one = [h["loss"] for h in one["extra"]["history"]]
    loss_two = [h["loss"] for h in two["extra"]["history"]]
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    assert json.loads((tmp_path / "two" / "timing.json").read_text())["pretrain"]["processes"] == 2
    for k, v in one["model"].items():
        a, b = v.clone(), two["model"][k].clone()
        if k.endswith("attn.qkv.bias"):
            # The key bias has an exactly-zero true gradient (softmax ignores a constant per
            # query); AdamW turns its rounding noise into lr-sized steps, so leave it out.
            D = a.numel() // 3
            a[D:2 * D] = b[D:2 * D] = 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
