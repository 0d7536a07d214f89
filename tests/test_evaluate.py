"""The evaluate stage end to end on a tiny store with tiny MAMP and STARS checkpoints, plus the
metrics schema and the feature cache."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.tracking import NullTracker
from pipeline.data.dataset import SkeletonDataset
from pipeline.data.store import Store
from pipeline.data.transforms import TestTransform
from pipeline.eval.features import extract_features, load_encoder, load_features
from pipeline.evaluate import compare, run_evaluate
from pipeline.models.mamp import MAMP
from pipeline.models.stars import STARS
from pipeline.training import checkpoint
from tests.conftest import write_store as write_tiny_store

TINY = {"model": {"depth": 2, "dim": 16, "heads": 2, "frames": 8, "t_patch": 4,
                  "decoder_depth": 1, "decoder_dim": 16, "decoder_heads": 2},
        "tune": {"predictor_dim": 8, "queue_size": 16},
        "eval": {"knn_k": [1, 2], "probe_epochs": 3, "probe_batch_size": 4,
                 "fewshot_ways": [2, 0], "fewshot_shots": [1], "fewshot_queries": 2,
                 "fewshot_episodes": 20, "fewshot_knn_k": [1, 2], "batch_size": 8}}
NAMES = ["a", "b", "c", "d", "e", "f"]   # a-c base classes, d-f novel


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics, self.artifacts = {}, []

    def log_metrics(self, metrics, step=0, model_id=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path).name)


def write_store(out: Path) -> Path:
    """Per base class 6 train + 3 test samples, per novel class 4 + 4; class-specific motion."""
    rng = np.random.default_rng(0)

    def samples():
        for label in range(6):
            novel = label >= 3
            splits = ["train"] * (4 if novel else 6) + ["test"] * (4 if novel else 3)
            for i, split in enumerate(splits):
                t = rng.integers(12, 20)
                steps = rng.normal(0.01 * (label - 2.5), 0.02, (t, 2, 25, 3))
                frames = np.cumsum(steps, axis=0)
                frames[:, 1] = 0.0
                yield f"s{label}_{i}", label, split, frames

    return write_tiny_store(out, samples(), NAMES, novel_labels=[3, 4, 5])


def save_model(path: Path, kind: str, seed: int, params) -> Path:
    torch.manual_seed(seed)
    model = MAMP(params.model) if kind == "mamp" else STARS(params.model, params.tune)
    checkpoint.save(path, checkpoint.make(kind, model))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params = parse_params(TINY)
    store = write_store(root / "store")
    mamp = save_model(root / "mamp.pt", "mamp", 0, params)
    stars = save_model(root / "stars.pt", "stars", 1, params)
    return root, params, store, mamp, stars


def evaluate(root: Path, params, store, mamp, stars, tracker=None):
    return run_evaluate(params, store, mamp, stars, root / "features", root / "probe",
                        root / "metrics" / "evaluate.json", root / "plots", tracker or
                        RecordingTracker())


@pytest.mark.parametrize("change, key, message", [
    ({"knn_k": [1, 19]}, "eval.knn_k",
     "19 is invalid: the store {store} holds 18 samples in the kNN bank (base-class"),
    ({"fewshot_knn_k": [13]}, "eval.fewshot_knn_k",
     "13 is invalid: the store {store} holds 12 samples in the few-shot kNN bank"),
    ({"probe_mode": "paper", "probe_batch_size": 19}, "eval.probe_batch_size",
     "19 is invalid: the store {store} holds 18 base-class training samples"),
    ({"fewshot_ways": [2, 4]}, "eval.fewshot_ways", "4 is invalid: 3 novel classes"),
    ({"fewshot_shots": [1, 8]}, "eval.fewshot_shots", "8 is too many: novel class 3 has 8"),
    ({"fewshot_queries": 8}, "eval.fewshot_queries", "8 is too many: novel class 3 has 8"),
])
def test_data_dependent_key_is_checked_before_any_feature_extraction(setup, tmp_path, change,
                                                                      key, message):
    _, _, store, mamp, stars = setup
    params = parse_params({**TINY, "eval": {**TINY["eval"], **change}})
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path, params, store, mamp, stars)
    assert str(err.value).startswith(f"{key}: {message.format(store=store)}"), err.value
    assert re.findall(r"\b(?:tune|eval|pretrain)\.\w+", str(err.value)) == [key]
    assert not (tmp_path / "features").exists()  # no feature extracted


def test_compare_gives_both_models_the_same_keys_and_delta_is_the_difference():
    out = compare({"mamp": {"knn_top1_k1": 0.5, "nmi": 0.2},
                   "stars": {"knn_top1_k1": 0.75, "nmi": 0.1}}, "cached", 0.25)
    assert out == {"mamp": {"knn_top1_k1": 0.5, "nmi": 0.2},
                   "stars": {"knn_top1_k1": 0.75, "nmi": 0.1},
                   "delta": {"knn_top1_k1": 0.25, "nmi": pytest.approx(-0.1)},
                   "probe_mode": "cached", "select": "last", "chance": 0.25}
    with pytest.raises(ValueError, match="differ in keys"):
        compare({"mamp": {"a": 1.0}, "stars": {"b": 1.0}}, "cached", 0.5)


def test_compare_names_every_test_selected_metric():
    out = compare({"mamp": {"linear_top1": 0.5}, "stars": {"linear_top1": 0.75}}, "paper", 0.1,
                  select="test")
    assert out["select"] == "test"
    assert out["mamp"] == {"linear_top1_testsel": 0.5}
    assert out["delta"] == {"linear_top1_testsel": 0.25}


def test_select_test_evaluates_the_tuned_best_checkpoint_and_labels_it(setup, tmp_path):
    _, _, store, mamp, stars = setup
    params = parse_params({**TINY, "eval": {**TINY["eval"], "select": "test"}})
    tuned = tmp_path / "tune"
    tuned.mkdir()
    shutil.copy(stars, tuned / "last.pt")
    with pytest.raises(UserError, match="best.pt"):
        evaluate(tmp_path, params, store, mamp, tuned / "last.pt")
    save_model(tuned / "best.pt", "stars", 5, params)        # what tune picked on test
    metrics = evaluate(tmp_path, params, store, mamp, tuned / "last.pt")
    assert metrics["select"] == "test"
    assert set(metrics["stars"]) and all(k.endswith("_testsel") for k in metrics["stars"])
    assert 0 <= metrics["stars"]["linear_epoch_testsel"] < params.eval.probe_epochs
    best = evaluate(tmp_path / "plain", parse_params(TINY), store, mamp, tuned / "best.pt")
    assert best["stars"]["knn_top1_k1"] == metrics["stars"]["knn_top1_k1_testsel"]


def test_run_evaluate_writes_metrics_plots_features_and_tracks_them(setup):
    root, params, store, mamp, stars = setup
    tracker = RecordingTracker()
    metrics = evaluate(root, params, store, mamp, stars, tracker)

    assert json.loads((root / "metrics" / "evaluate.json").read_text()) == metrics
    expected = {"knn_top1_k1", "knn_top1_k2", "linear_top1", "linear_top5",
                "linear_mean_class_acc", "fewshot_knn_k1", "fewshot_knn_k2", "nmi", "ari",
                "silhouette"}
    expected |= {f"fewshot_{w}way_1shot_{c}_{s}" for w in (2, "all") for c in ("proto", "nn1")
                 for s in ("mean", "ci95")}
    assert set(metrics["mamp"]) == set(metrics["stars"]) == set(metrics["delta"]) == expected
    for k in expected:
        assert metrics["delta"][k] == pytest.approx(metrics["stars"][k] - metrics["mamp"][k])
    assert metrics["probe_mode"] == "cached" and metrics["chance"] == pytest.approx(1 / 3)
    assert metrics["fewshot"] == {"enabled": True, "reason": "24 novel-class samples"}

    test_rows = Store.open(store).select(split="test", novel=False)
    for model in ("mamp", "stars"):
        feats, _, rows = load_features(root / "features" / f"{model}_test.npz")
        assert feats.shape == (9, 16) and np.array_equal(rows, test_rows)
        confusion = list(csv.DictReader((root / "plots" / f"{model}_confusion.csv").open()))
        assert len(confusion) == 9 and {r["actual"] for r in confusion} == {"a", "b", "c"}
        assert {r["predicted"] for r in confusion} <= {"a", "b", "c"}
        per_class = list(csv.DictReader((root / "plots" / f"{model}_per_class.csv").open()))
        assert [r["class"] for r in per_class] == ["a", "b", "c"]
        curve = list(csv.DictReader((root / "plots" / f"{model}_probe_curve.csv").open()))
        assert [int(r["epoch"]) for r in curve] == [0, 1, 2] and "train_acc" in curve[0]
    assert tracker.metrics["stars/knn_top1_k1"] == metrics["stars"]["knn_top1_k1"]
    assert tracker.metrics["delta/nmi"] == metrics["delta"]["nmi"]
    assert "evaluate.json" in tracker.artifacts and "stars_confusion.csv" in tracker.artifacts


def test_features_are_reused_until_the_checkpoint_changes(setup, tmp_path):
    _, params, store, mamp, _ = setup
    stars = save_model(tmp_path / "stars.pt", "stars", 1, params)
    evaluate(tmp_path, params, store, mamp, stars)
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").glob("*.npz")}
    assert len(cached) == 8                                   # 2 models x 4 parts

    evaluate(tmp_path, params, store, mamp, stars)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").glob("*.npz")} \
        == cached
    save_model(stars, "stars", 2, params)                     # new STARS weights
    evaluate(tmp_path, params, store, mamp, stars)
    changed = {p.name for p in (tmp_path / "features").glob("*.npz")
               if p.stat().st_mtime_ns != cached[p.name]}
    assert changed == {f"stars_{part}.npz" for part in
                       ("train", "test", "novel_train", "novel_test")}


def test_paper_mode_probe_trains_through_the_encoder(setup, tmp_path):
    _, _, store, mamp, stars = setup
    paper = parse_params({**TINY, "eval": {**TINY["eval"], "probe_mode": "paper",
                                           "probe_epochs": 2}, "pretrain": {"crop_floor": 4}})
    metrics = evaluate(tmp_path, paper, store, mamp, stars)
    assert metrics["probe_mode"] == "paper"
    assert 0.0 <= metrics["stars"]["linear_top1"] <= metrics["stars"]["linear_top5"] <= 1.0
    assert (tmp_path / "probe" / "stars" / "last.pt").is_file()
    curve = list(csv.DictReader((tmp_path / "plots" / "mamp_probe_curve.csv").open()))
    assert len(curve) == 2


def test_encoder_from_a_mamp_checkpoint_drops_the_decoder(setup):
    _, params, store, mamp_path, _ = setup
    torch.manual_seed(0)
    mamp = MAMP(params.model).eval()            # the weights saved in mamp.pt
    encoder = load_encoder(mamp_path, params.model)
    assert not any(k.startswith(("decoder", "mask_token")) for k in encoder.state_dict())
    s = Store.open(store)
    ds = SkeletonDataset(s, s.select(split="test"), TestTransform(params.model.frames))
    feats, _, rows = extract_features(encoder, ds, batch_size=4, device="cpu")
    x = torch.stack([ds[(i, 0)]["x"] for i in range(len(ds))])
    with torch.no_grad():
        np.testing.assert_allclose(feats, mamp.forward_features(x).numpy(), atol=1e-5)
    assert np.array_equal(rows, s.select(split="test"))


def test_checkpoint_of_another_model_size_is_a_user_error(setup):
    mamp = setup[3]
    bigger = parse_params({**TINY, "model": {**TINY["model"], "dim": 32}})
    with pytest.raises(UserError, match="does not match model params"):
        load_encoder(mamp, bigger.model)


def test_fewshot_off_skips_the_novel_classes_and_says_why(setup, tmp_path):
    _, params, store, mamp, stars = setup
    off = dataclasses.replace(params, eval=dataclasses.replace(params.eval, fewshot=False))
    metrics = evaluate(tmp_path, off, store, mamp, stars)
    assert not [k for k in metrics["stars"] if k.startswith("fewshot")]
    assert metrics["fewshot"] == {"enabled": False, "reason": "eval.fewshot: off; switched off"}
    assert not list((tmp_path / "features").glob("*novel*"))


def test_fewshot_on_a_store_without_novel_classes_fails_before_any_work(setup, tmp_path):
    _, params, _, mamp, stars = setup
    rng = np.random.default_rng(0)
    plain = write_tiny_store(tmp_path / "store", [
        (f"s{i}", i % 3, "train" if i < 6 else "test", rng.normal(size=(12, 2, 25, 3)))
        for i in range(9)], NAMES[:3])
    with pytest.raises(UserError, match=r"^eval.fewshot needs novel classes: .*store has none"):
        evaluate(tmp_path, params, plain, mamp, stars)
    assert not (tmp_path / "features").exists()
