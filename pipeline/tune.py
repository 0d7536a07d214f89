"""STARS tuning (stage `tune`): nearest-neighbour contrastive tuning of the second half of the
MAMP encoder, through the one training loop.

Usage (from `stages/tune.py`, alone or under torchrun)::

    metrics = run_tune(params, Path("data/processed"), Path("models/pretrain/last.pt"),
                       Path("models/tune"), Path("metrics/tune.json"), Path("plots/tune"), tracker)

Trains on the train split's base classes minus a stratified validation split
(`tune.val_fraction`), which gives a kNN top-1 curve (validation queries against the rest of
train) after every epoch. The release picks its epoch by *test* accuracy; we look at test only
when `eval.select: test` asks for that (then `test_knn` joins the curve and picks `best.pt`;
DESIGN.md section 4). Writes `<ckpt_dir>/last.pt` (kind "stars") every epoch, resuming
from it when data, pretrained weights and config match, and `best.pt` (best validation kNN,
or test kNN under `eval.select: test`) beside it when `tune.keep_best` or `eval.select` is not
last. `tune.head_warmup_epochs` > 0 runs the release's two stages as two runs of the loop: the
head alone (checkpoints in `<ckpt_dir>/head/`), then the tuned blocks, norm and head with a
fresh optimizer, from the first stage's head, BatchNorm statistics and full queue (its best
epoch when `eval.select` is not last, as the release's README takes the best checkpoint). A checkpoint's "model" is the `STARS` state dict: the encoder
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
from pipeline.core.config import Params, TuneConfig, to_dict
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.stage import write_outputs, write_timing
from pipeline.data.checks import check_data_params
from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader
from pipeline.data.store import Store
from pipeline.data.transforms import TestTransform
from pipeline.eval.features import extract_features, log_encoder
from pipeline.eval.knn import knn_predict
from pipeline.eval.validation import split_validation
from pipeline.models.stars import STARS
from pipeline.training import checkpoint
from pipeline.training.groups import set_head_only, tuning_param_groups
from pipeline.training.loop import LoopConfig, fit, seed_everything
from pipeline.training.views import ViewTransform


def stars_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loss of one batch: x (N, M, T, V, C) serves both views; (N, 2, M, T, V, C) holds two."""
    x = batch["x"]
    if x.dim() == 6:
        return model(x[:, 0], batch["index"], x[:, 1]), {}
    return model(x, batch["index"]), {}


def loop_config(cfg: TuneConfig, epochs: int, best_metric: str | None = None) -> LoopConfig:
    """The release's optimizer and step: AdamW betas (0.9, 0.95) at a constant lr (per-group
    scales from `tuning_param_groups`), clipping `tune.clip_mode`."""
    return LoopConfig(epochs=epochs, lr=cfg.lr, schedule="constant", optimizer="adamw",
                      betas=(0.9, 0.95), clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                      seed=cfg.seed, compile=cfg.compile, precision=cfg.precision,
                      best_metric=best_metric)


class _EpochOffset:
    """A tracker that logs a later stage's epochs after the earlier stage's."""

    def __init__(self, tracker: Any, offset: int):
        self.tracker, self.offset = tracker, offset

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        shifted = {**metrics, "epoch": metrics["epoch"] + self.offset} if "epoch" in metrics \
            else metrics
        self.tracker.log_metrics(shifted, step=step + self.offset)


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
        sampler.set_epoch(epoch)
        return loader

    test = TestTransform(model_cfg.frames)   # the evaluation's centre crop
    select = params.eval.select
    test_rows = (store.select(split="test", novel=False) if select == "test"
                 else np.array([], dtype=np.int64))
    validate = len(val_rows) > 0

    def knn_top1(model: torch.nn.Module, rows: np.ndarray, bank: np.ndarray) -> float:
        queries = _sharded_features(model, store, rows, test, cfg.batch_size // world,
                                    cfg.loader_workers, cfg.precision)
        pred = knn_predict(bank, labels[train_rows], queries, [cfg.val_k])[cfg.val_k]
        return float(np.mean(pred == labels[rows]))

    def on_epoch_end(epoch: int, model: torch.nn.Module) -> dict[str, float]:
        if not validate and not len(test_rows):
            return {}
        bank = _sharded_features(model, store, train_rows, test, cfg.batch_size // world,
                                 cfg.loader_workers, cfg.precision)
        out = {"val_knn": knn_top1(model, val_rows, bank)} if validate else {}
        if len(test_rows):   # eval.select: test, the release's reporting (labelled so)
            out["test_knn"] = knn_top1(model, test_rows, bank)
        return out

    best_metric = {"test": "test_knn", "val": "val_knn"}.get(select)
    if best_metric == "val_knn" and not validate:
        raise ConfigError("eval.select: 'val' needs a validation split; set tune.val_fraction > 0")
    if best_metric is None and validate and cfg.keep_best:
        best_metric = "val_knn"
    config = {"model": to_dict(model_cfg), "tune": to_dict(cfg), "select": select}
    if cfg.view == "crop_rotate":
        config["views"] = {k: getattr(params.pretrain, k) for k in ("crop_min", "crop_floor",
                                                                   "rotate")}
    # resume key: the pretrained weights, not the file (a re-run of pretrain that gives the
    # same weights writes other timings into it, and must not restart tuning)
    semantic = {**config, "pretrained": pretrained}
    fingerprint = checkpoint.fingerprint(store.meta["fingerprint"], semantic)
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    warmup = cfg.head_warmup_epochs
    if warmup:   # the release's second stage: the head alone (the encoder gets no gradient)
        set_head_only(groups, True)
        history = fit(model, stars_step, groups, loader_factory,
                      loop_config(cfg, warmup, best_metric), ckpt_dir=Path(ckpt_dir) / "head",
                      kind="stars", config=config, fingerprint=fingerprint, tracker=tracker,
                      on_epoch_end=on_epoch_end)
        if select != "last":   # its best epoch, read by rank 0 and sent to the others
            best = Path(ckpt_dir) / "head" / "best.pt"
            state = dist.broadcast_object(checkpoint.load(best)["model"]
                                          if dist.is_main() and best.is_file() else None)
            if state is not None:
                model.load_state_dict(state)
        set_head_only(groups, False)
    # (the third stage) a fresh optimizer over the tuned blocks, norm and head
    tuned = fit(model, stars_step, groups, loader_factory,
                loop_config(cfg, cfg.epochs - warmup, best_metric), ckpt_dir=ckpt_dir,
                kind="stars", config=config, fingerprint=fingerprint,
                tracker=_EpochOffset(tracker, warmup), on_epoch_end=on_epoch_end)
    history += [{**h, "epoch": h["epoch"] + warmup} for h in tuned]
    wall = time.perf_counter() - start

    # best epochs among the final stage's, whose checkpoints best.pt holds
    curve = [h["val_knn"] for h in history[warmup:] if "val_knn" in h]
    test_curve = [h["test_knn"] for h in history[warmup:] if "test_knn" in h]
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
                        "best_epoch": history[warmup + best]["epoch"], "val_knn_curve": curve})
    if test_curve:   # selected on test: named so wherever it is shown
        best = int(np.argmax(test_curve))
        metrics.update({"knn_top1_testsel": test_curve[best],
                        "best_epoch_testsel": history[warmup + best]["epoch"],
                        "test_knn_curve": test_curve})
    write_outputs(metrics_path, metrics, Path(plots_dir) / "curves.csv", history,
                  ["epoch", "loss", "val_knn"] + (["test_knn"] if test_curve else []), tracker)
    write_timing(metrics_path, "tune", timing, tracker)
    log_encoder(tracker, Path(ckpt_dir) / "last.pt", model_cfg, "stars-encoder", step=len(history))
    return metrics | timing
