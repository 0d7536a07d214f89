"""The evaluate stage: MAMP and STARS encoders side by side under every protocol.

Usage (stages/evaluate.py)::

    run_evaluate(params, store_dir, mamp_ckpt, stars_ckpt, features_dir, probe_dir,
                 metrics_path, plots_dir, tracker)

Per checkpoint: test-transform features of four parts of the store (base-class train and
test splits, novel-class train and test splits), cached in `features_dir/<model>_<part>.npz`
and reused only while checkpoint, store and model params are unchanged; then kNN (bank =
train, queries = test), the linear probe (`eval.probe_mode`), few-shot (the release's kNN:
bank = novel train, queries = novel test; episodes over all novel samples of both splits)
and cluster quality of the test features. Few-shot is never silently off: with
`eval.fewshot: true` a store without novel classes fails before any work (params are checked
the same way when loaded); with `false` the novel parts are skipped and the metrics say so.

Model selection (`eval.select`): `last` reports the last probe epoch and the tuned
checkpoint given; `val` the probe epoch best on a held-out part of the train features
(`eval.val_fraction`) and the tune stage's `best.pt` (best validation kNN); `test` the probe
epoch best on test and the `best.pt` picked by test kNN, the release's reporting: then every
metric name ends in `_testsel`, so no table or MLflow chart shows it as an honest number.

Outputs: `metrics_path` = {"mamp": {...}, "stars": {...}, "delta": {stars - mamp},
"probe_mode", "select", "chance", "fewshot": {"enabled", "reason"}, "provenance":
{"mlflow_run_id", "mlflow_models": {model: id}}} with the same flat keys for both models (each
model's metrics are linked to the MLflow model that pretrain / tune logged from its checkpoint);
the wall time in `timing.json` beside it; DVC plots
`plots_dir/<model>_{confusion,per_class,probe_curve}.csv`; the same numbers to the tracker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core import dist
from pipeline.core.config import EvalConfig, Params, to_dict
from pipeline.core.errors import UserError
from pipeline.core.io import atomic_write_json, atomic_write_text, file_sha256
from pipeline.core.stage import write_timing
from pipeline.core.tracking import Prefixed
from pipeline.data.checks import check_data_params
from pipeline.data.dataset import SkeletonDataset
from pipeline.data.store import Store
from pipeline.data.transforms import TestTransform, TrainTransform
from pipeline.eval.clusters import cluster_metrics
from pipeline.eval.features import extract_features, load_encoder, load_features, save_features
from pipeline.eval.fewshot import episodic_fewshot, release_fewshot
from pipeline.eval.knn import knn_accuracy
from pipeline.eval.linear_probe import probe_cached, probe_paper
from pipeline.eval.validation import split_validation
from pipeline.training import checkpoint

MODELS = ("mamp", "stars")
# part name -> Store.select arguments
PARTS = {"train": ("train", False), "test": ("test", False),
         "novel_train": ("train", True), "novel_test": ("test", True)}
Features = tuple[np.ndarray, np.ndarray, np.ndarray]   # feats (N, D), labels, store rows
TEST_SELECTED = "_testsel"   # the suffix of every metric under eval.select: test


_NONE: Features = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))


def fewshot_status(params: Params, store: Store) -> dict[str, Any]:
    """{"enabled", "reason"}; raises UserError (before any work) when few-shot is on and the
    store has no novel-class samples."""
    if not params.eval.fewshot:
        d = params.data
        why = ("synth.novel_classes is 0" if d.source == "synthetic" and not
               params.synth.novel_classes else
               "data.novel_dir (the NTU-120 files of the novel classes) is not set"
               if d.source == "ntu60" and not d.novel_dir else
               f"data.source {d.source} holds no classes unseen in pretraining"
               if d.source not in ("synthetic", "ntu60") else "switched off")
        return {"enabled": False, "reason": f"eval.fewshot: off; {why}"}
    if not len(store.select(novel=True)):
        raise UserError(f"eval.fewshot needs novel classes: {store.dir} has none; set "
                        f"data.novel_dir to the NTU-120 .skeleton folder (and rerun "
                        f"preprocess), or eval.fewshot: off")
    return {"enabled": True, "reason": f"{len(store.select(novel=True))} novel-class samples"}


def model_features(params: Params, store: Store, ckpt: Path, name: str, features_dir: Path,
                   ) -> tuple[dict[str, Features], str]:
    """Features of every part for one checkpoint (cached), and the checkpoint's sha256."""
    ckpt_sha = file_sha256(ckpt)
    parts, encoder = {}, None
    for part, (split, novel) in PARTS.items():
        if novel and not params.eval.fewshot:
            continue
        rows = store.select(split=split, novel=novel)
        key = json.dumps({"checkpoint": ckpt_sha, "store": store.meta.get("fingerprint"),
                          "part": part, "model": to_dict(params.model),
                          "precision": params.eval.precision}, sort_keys=True)
        path = features_dir / f"{name}_{part}.npz"
        cached = load_features(path, key) if path.is_file() else None
        if cached is None:
            if encoder is None:
                encoder = load_encoder(ckpt, params.model)
            dataset = SkeletonDataset(store, rows, TestTransform(params.model.frames))
            cached = extract_features(encoder, dataset, params.eval.batch_size, dist.device(),
                                      params.eval.loader_workers, params.eval.precision)
            save_features(path, *cached, key=key)
        parts[part] = cached
    return parts, ckpt_sha


def linear_probe(params: Params, store: Store, feats: dict[str, Features], ckpt: Path,
                 ckpt_sha: str, name: str, probe_dir: Path, tracker: Any) -> dict[str, Any]:
    """`eval.probe_mode` probe, its epoch picked by `eval.select`; paper mode checkpoints
    every epoch to `probe_dir/<model>/` (a persistent DVC output, so a killed probe resumes)."""
    cfg = params.eval
    (train_f, train_y, train_rows), (test_f, test_y, _) = feats["train"], feats["test"]
    select = None
    if cfg.select == "test":
        select = (test_f, test_y)
    elif cfg.select == "val":   # held out of the probe's training set
        fit_idx, val_idx = split_validation(np.arange(len(train_y)), train_y, cfg.val_fraction,
                                            cfg.seed)
        select = (train_f[val_idx], train_y[val_idx])
        train_f, train_y, train_rows = train_f[fit_idx], train_y[fit_idx], train_rows[fit_idx]
    if cfg.probe_mode == "cached":
        return probe_cached(train_f, train_y, test_f, test_y, cfg, dist.device(), select)
    pre = params.pretrain
    augment = TrainTransform(params.model.frames, pre.crop_min, pre.crop_floor, pre.rotate)
    dataset = SkeletonDataset(store, train_rows, augment)
    config = {"eval": to_dict(cfg), "model": to_dict(params.model), "encoder": ckpt_sha,
              "augment": to_dict(augment)}
    return probe_paper(load_encoder(ckpt, params.model), dataset, train_y, test_f, test_y, cfg,
                       ckpt_dir=probe_dir / name, config=config,
                       fingerprint=checkpoint.fingerprint(store.meta["fingerprint"], config),
                       tracker=Prefixed(tracker, f"{name}/probe/"),
                       workers=cfg.loader_workers, select=select)


def protocol_metrics(feats: dict[str, Features], probe: dict[str, Any], cfg: EvalConfig,
                     device: Any = None) -> dict[str, float]:
    """Flat metrics of one model: kNN, linear probe, few-shot (if novel data), clusters."""
    (train_f, train_y, _), (test_f, test_y, _) = feats["train"], feats["test"]
    out = {f"knn_top1_k{k}": acc for k, acc in
           knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn_k, device).items()}
    out.update({"linear_top1": probe["top1"], "linear_top5": probe["top5"],
                "linear_mean_class_acc": probe["mean_class_acc"]})
    if cfg.select != "last":
        out["linear_epoch"] = probe["epoch"]
    (nb_f, nb_y, _), (nq_f, nq_y, _) = feats.get("novel_train", _NONE), feats.get("novel_test",
                                                                                  _NONE)
    if len(nb_y) and len(nq_y):
        out.update({f"fewshot_knn_k{k}": acc for k, acc in
                    release_fewshot(nb_f, nb_y, nq_f, nq_y, cfg.fewshot_knn_k, device).items()})
    if len(nb_y) + len(nq_y):
        out.update(episodic_fewshot(np.concatenate([nb_f, nq_f]), np.concatenate([nb_y, nq_y]),
                                    cfg.fewshot_ways, cfg.fewshot_shots, cfg.fewshot_queries,
                                    cfg.fewshot_episodes, cfg.seed, device))
    out.update(cluster_metrics(test_f, test_y, cfg.seed))
    return out


def compare(per_model: dict[str, dict[str, float]], probe_mode: str, chance: float,
            select: str = "last") -> dict[str, Any]:
    """The evaluate.json layout: both models, their difference, and context. Under
    select "test" every metric name gets the suffix `_testsel`."""
    if select == "test":
        per_model = {m: {k + TEST_SELECTED: v for k, v in d.items()}
                     for m, d in per_model.items()}
    mamp, stars = per_model["mamp"], per_model["stars"]
    if mamp.keys() != stars.keys():
        raise ValueError(f"MAMP and STARS metrics differ in keys: "
                         f"{sorted(mamp.keys() ^ stars.keys())}")
    return {"mamp": mamp, "stars": stars,
            "delta": {k: stars[k] - mamp[k] for k in mamp},
            "probe_mode": probe_mode, "select": select, "chance": chance}


def write_plots(plots_dir: Path, name: str, probe: dict[str, Any], test_labels: np.ndarray,
                class_names: list[str]) -> list[Path]:
    """DVC plots of one model's probe: per-sample confusion (actual, predicted class names,
    for the `confusion` template), per-class accuracy, per-epoch curve."""
    def names(labels) -> list[str]:
        return [class_names[int(i)] if int(i) < len(class_names) else f"class {int(i)}"
                for i in labels]

    tables = {
        "confusion": pd.DataFrame({"actual": names(test_labels),
                                   "predicted": names(probe["predictions"])}),
        "per_class": pd.DataFrame({"class": names(probe["classes"]),
                                   "accuracy": probe["per_class_acc"],
                                   "support": probe["confusion"].sum(1)}),
        "probe_curve": pd.DataFrame(probe["curve"]),
    }
    paths = []
    for kind, df in tables.items():
        path = plots_dir / f"{name}_{kind}.csv"
        atomic_write_text(path, df.to_csv(index=False))
        paths.append(path)
    return paths


def run_evaluate(params: Params, store_dir: str | Path, mamp_ckpt: str | Path,
                 stars_ckpt: str | Path, features_dir: str | Path, probe_dir: str | Path,
                 metrics_path: str | Path, plots_dir: str | Path,
                 tracker: Any) -> dict[str, Any]:
    """Evaluate both checkpoints; write metrics, plots and features (and the paper-mode
    probe's checkpoints); return the metrics."""
    start = time.perf_counter()
    for ckpt in (Path(mamp_ckpt), Path(stars_ckpt)):
        if not ckpt.is_file():
            raise UserError(f"{ckpt}: checkpoint not found; run the stage that writes it "
                            "(dvc repro pretrain / tune) or import published weights")
    if params.eval.select != "last":   # the tune stage's pick (val or test kNN)
        stars_ckpt = Path(stars_ckpt).with_name("best.pt")
        if not stars_ckpt.is_file():
            raise UserError(f"{stars_ckpt}: not found; eval.select: {params.eval.select} "
                            "uses the tune stage's best checkpoint: re-run the tune stage")
    store = Store.open(store_dir)
    check_data_params(params, store, "evaluate")
    fewshot = fewshot_status(params, store)
    tracker.log_dataset(store_dir, store.meta["dataset"], store.meta["fingerprint"], "eval")
    features_dir, probe_dir, plots_dir = Path(features_dir), Path(probe_dir), Path(plots_dir)
    probe_dir.mkdir(parents=True, exist_ok=True)   # a DVC output, empty in cached mode
    class_names = list(store.meta.get("class_names", []))
    per_model, plot_files, chance, model_ids = {}, [], 0.0, {}
    for name, ckpt in zip(MODELS, (Path(mamp_ckpt), Path(stars_ckpt))):
        feats, ckpt_sha = model_features(params, store, ckpt, name, features_dir)
        probe = linear_probe(params, store, feats, ckpt, ckpt_sha, name, probe_dir, tracker)
        per_model[name] = protocol_metrics(feats, probe, params.eval, dist.device())
        plot_files += write_plots(plots_dir, name, probe, feats["test"][1], class_names)
        chance = 1.0 / len(probe["classes"])
        # The model that pretrain / tune logged from this very checkpoint, if any.
        model_ids[name] = tracker.find_model(checkpoint_sha256=ckpt_sha)
    metrics = {**compare(per_model, params.eval.probe_mode, chance, params.eval.select),
               "fewshot": fewshot}
    # The report attaches to this run, and `make register` registers these models.
    metrics["provenance"] = {"mlflow_run_id": tracker.run_id, "mlflow_models": model_ids}
    atomic_write_json(metrics_path, metrics)

    for name in MODELS:   # each model's metrics linked to its logged model (MLflow 3)
        tracker.log_metrics({f"{name}/{k}": v for k, v in metrics[name].items()}, step=0,
                            model_id=model_ids[name])
    tracker.log_metrics({f"delta/{k}": v for k, v in metrics["delta"].items()}
                        | {"chance": chance}, step=0)
    for path in (Path(metrics_path), *plot_files):
        tracker.log_artifact(path, "evaluate")
    write_timing(Path(metrics_path), "evaluate", {"wall_time_s": time.perf_counter() - start},
                 tracker)
    return metrics
