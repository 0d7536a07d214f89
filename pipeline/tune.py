"""STARS tuning (stage `tune`): nearest-neighbour contrastive tuning of the second half of the
MAMP encoder, through the one training loop.

Usage (from `stages/tune.py`, alone or under torchrun)::

    metrics = run_tune(params, Path("data/processed"), Path("models/pretrain/last.pt"),
                       Path("models/tune"), Path("metrics/tune.json"), Path("plots/tune"), tracker)

Trains on the train split's base classes minus a stratified validation split
(`tune.val_fraction`), which gives a kNN top-1 curve (validation queries against the rest of
train) after every epoch: the release picks its epoch by *test* accuracy, we never look at test
here (DESIGN.md section 4). Writes `<ckpt_dir>/last.pt` (kind "stars") every epoch, resuming
from it when data, pretrained weights and config match, and `best.pt` (best validation kNN)
beside it when `tune.keep_best`. A checkpoint's "model" is the `STARS` state dict: the encoder
under its published names plus `head.*` and `queue.*`, so `eval.features.load_encoder` reads
it as it reads a MAMP one. Rank 0 writes `metrics/tune.json` and `plots/tune/curves.csv`
(epoch counted from 0, as in the pretraining plot), and logs the final encoder to MLflow as
`stars-encoder`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.core import dist
from pipeline.core.config import Params, to_dict
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.stage import write_outputs, write_timing
from pipeline.data.checks import check_data_params
from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader
from pipeline.data.store import Store
from pipeline.data.transforms import TestTransform
from pipeline.eval.features import extract_features, log_encoder
from pipeline.eval.knn import knn_predict
from pipeline.models.stars import STARS
from pipeline.training import checkpoint
from pipeline.training.groups import set_head_only, tuning_param_groups
from pipeline.training.loop import LoopConfig, fit, seed_everything
from pipeline.training.views import ViewTransform


def split_validation(rows: np.ndarray, labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of `rows` (labels aligned) into (train, val), both sorted: each class
    gives round(fraction * n) samples to val, at least 1 and at most n - 1 (so it stays in the
    kNN bank), none when fraction is 0 or the class has a single sample."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rows[labels == c]
        if fraction == 0 or len(members) < 2:
            continue
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        val.append(rng.permutation(members)[:k])
    val_rows = np.sort(np.concatenate(val)) if val else np.array([], dtype=rows.dtype)
    return np.setdiff1d(rows, val_rows), val_rows


def stars_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loss of one batch: x (N, M, T, V, C) serves both views; (N, 2, M, T, V, C) holds two."""
    x = batch["x"]
    if x.dim() == 6:
        return model(x[:, 0], batch["index"], x[:, 1]), {}
    return model(x, batch["index"]), {}


def _load_pretrained(model: STARS, path: Path) -> str:
    """Encoder weights from a MAMP checkpoint (decoder keys ignored), read by rank 0 and sent
    to the others (only node 0 holds it); returns their `weights_digest`. Errors name the file."""
    state = dist.broadcast_object(checkpoint.load(path)["model"] if dist.is_main() else None)
    try:
        model.load_encoder(state)
    except (KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: does not fit the configured encoder ({first}); set the "
                        f"`model:` section of params.yaml to the pretrained sizes") from None
    return checkpoint.weights_digest(state)


def _sharded_features(model: STARS, store: Store, rows: np.ndarray, transform: TestTransform,
                      batch_size: int, workers: int, precision: str) -> np.ndarray:
    """Features (len(rows), D) of `rows`, each process computing one contiguous shard (the
    last padded with repeats) and all of them gathered, so every process gets all."""
    world, n = dist.world_size(), len(rows)
    per = -(-n // world)
    shard = rows[np.minimum(np.arange(dist.rank() * per, (dist.rank() + 1) * per), n - 1)]
    feats, _, _ = extract_features(model, SkeletonDataset(store, shard, transform),
                                   batch_size=batch_size, device=dist.device(), workers=workers,
                                   precision=precision)
    gathered = dist.all_gather_no_grad(torch.from_numpy(feats).to(dist.device()))
    return gathered[:n].cpu().numpy()


def run_tune(params: Params, store_dir: Path, pretrain_ckpt: Path, ckpt_dir: Path,
             metrics_path: Path, plots_dir: Path, tracker: Any) -> dict[str, Any]:
    """Tune for `tune.epochs` epochs; returns the results (written to `metrics_path`) and
    the timing (written to `timing.json` beside it) in one dict."""
    cfg, model_cfg = params.tune, params.model
    world = dist.world_size()
    if cfg.batch_size % world:
        raise ConfigError(f"tune.batch_size: {cfg.batch_size} is invalid: must be divisible "
                          f"by the number of processes ({world})")
    if cfg.head_warmup_epochs >= cfg.epochs:
        raise ConfigError(f"tune.head_warmup_epochs: {cfg.head_warmup_epochs} is invalid: must "
                          f"be < tune.epochs ({cfg.epochs}), which counts the warm-up")
    store = Store.open(store_dir)
    tracker.log_dataset(store_dir, store.meta["dataset"], store.meta["fingerprint"], "train")
    base = store.select(split="train", novel=False)
    labels = store.index["label"].to_numpy()
    train_rows, val_rows = split_validation(base, labels[base], cfg.val_fraction, cfg.val_seed)
    check_data_params(params, store, "tune", tune_split=(train_rows, val_rows))

    views = ViewTransform(cfg.view, model_cfg.frames, mask_ratio=cfg.view_mask_ratio,
                          t_patch=model_cfg.t_patch, crop_min=params.pretrain.crop_min,
                          crop_floor=params.pretrain.crop_floor, rotate=params.pretrain.rotate)
    dataset = SkeletonDataset(store, train_rows, views)
    sampler = GlobalBatchSampler(len(train_rows), cfg.batch_size, dist.rank(), world,
                                 seed=cfg.seed)
    loader = make_loader(dataset, sampler, workers=cfg.loader_workers,
                         pin_memory=torch.cuda.is_available())

    seed_everything(cfg.seed)   # the same head on every rank and every run
    model = STARS(model_cfg, cfg)
    pretrained = _load_pretrained(model, pretrain_ckpt)
    groups = tuning_param_groups(model, cfg, model_cfg.depth)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def loader_factory(epoch: int) -> DataLoader:
        # The epoch boundary is where the head-only warm-up ends (also on resume).
        set_head_only(groups, epoch < cfg.head_warmup_epochs)
        sampler.set_epoch(epoch)
        return loader

    test = TestTransform(model_cfg.frames)   # the evaluation's centre crop
    validate = len(val_rows) > 0

    def on_epoch_end(epoch: int, model: torch.nn.Module) -> dict[str, float]:
        if not validate:
            return {}
        bank = _sharded_features(model, store, train_rows, test, cfg.batch_size // world,
                                 cfg.loader_workers, cfg.precision)
        queries = _sharded_features(model, store, val_rows, test, cfg.batch_size // world,
                                    cfg.loader_workers, cfg.precision)
        pred = knn_predict(bank, labels[train_rows], queries, [cfg.val_k])[cfg.val_k]
        return {"val_knn": float(np.mean(pred == labels[val_rows]))}

    loop = LoopConfig(epochs=cfg.epochs, lr=cfg.lr, schedule="constant", optimizer="adamw",
                      betas=(0.9, 0.95), clip_grad=cfg.clip_grad, seed=cfg.seed,
                      compile=cfg.compile, precision=cfg.precision,
                      # head warm-up: the encoder gets no gradient, which DDP must be told
                      find_unused_parameters=cfg.head_warmup_epochs > 0,
                      best_metric="val_knn" if validate and cfg.keep_best else None)
    config = {"model": to_dict(model_cfg), "tune": to_dict(cfg)}
    if cfg.view == "crop_rotate":
        config["views"] = {k: getattr(params.pretrain, k) for k in ("crop_min", "crop_floor",
                                                                   "rotate")}
    # resume key: the pretrained weights, not the file (a re-run of pretrain that gives the
    # same weights writes other timings into it, and must not restart tuning)
    semantic = {**config, "pretrained": pretrained}
    start = time.perf_counter()
    history = fit(model, stars_step, groups, loader_factory, loop, ckpt_dir=ckpt_dir,
                  kind="stars", config=config,
                  fingerprint=checkpoint.fingerprint(store.meta["fingerprint"], semantic),
                  tracker=tracker, on_epoch_end=on_epoch_end)
    wall = time.perf_counter() - start

    curve = [h["val_knn"] for h in history if "val_knn" in h]
    metrics: dict[str, Any] = {"final_loss": history[-1]["loss"]}
    timing = {
        "epochs": len(history), "train_samples": len(train_rows), "val_samples": len(val_rows),
        "global_batch": cfg.batch_size, "processes": world,
        "median_samples_per_s": statistics.median(h["samples_per_s"] for h in history),
        "trainable_parameters": trainable,
        "frozen_parameters": sum(p.numel() for p in model.parameters()) - trainable,
        "wall_time_s": wall}
    if curve:
        best = int(np.argmax(curve))   # first maximum, as fit's strict improvement keeps it
        metrics.update({"val_knn_last": curve[-1], "val_knn_best": curve[best],
                        "best_epoch": history[best]["epoch"], "val_knn_curve": curve})
    write_outputs(metrics_path, metrics, Path(plots_dir) / "curves.csv", history,
                  ["epoch", "loss", "val_knn"], tracker)
    write_timing(metrics_path, "tune", timing, tracker)
    log_encoder(tracker, Path(ckpt_dir) / "last.pt", model_cfg, "stars-encoder", step=len(history))
    return metrics | timing
