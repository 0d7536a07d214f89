"""MAMP pretraining (stage `pretrain`): masked motion prediction on the train split's base
classes, through the one training loop.

Usage (from `stages/pretrain.py`, alone or under torchrun)::

    metrics = run_pretrain(params, Path("data/processed"), Path("models/pretrain"),
                           Path("metrics/pretrain.json"), Path("plots/pretrain"), tracker)

Writes `<ckpt_dir>/last.pt` (kind "mamp") every epoch, resuming from it when data and
config match; rank 0 writes `metrics/pretrain.json` and `plots/pretrain/loss.csv` and logs
the final encoder to MLflow as `mamp-encoder`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.core import dist
from pipeline.core.config import Params, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.stage import write_outputs, write_timing
from pipeline.data.checks import check_data_params
from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader
from pipeline.data.store import Store
from pipeline.data.transforms import TrainTransform
from pipeline.eval.features import log_encoder
from pipeline.models.mamp import MAMP
from pipeline.training import checkpoint
from pipeline.training.groups import MAMP_NO_DECAY, decay_groups
from pipeline.training.loop import LoopConfig, fit, seed_everything


def mamp_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loss of one batch; the masks come from the per-sample seeds."""
    return model(batch["x"], batch["seed"]), {}


def run_pretrain(params: Params, store_dir: Path, ckpt_dir: Path, metrics_path: Path,
                 plots_dir: Path, tracker: Any) -> dict[str, float]:
    """Pretrain MAMP for `pretrain.epochs` epochs; returns the results (written to
    `metrics_path`) and the timing (written to `timing.json` beside it) in one dict."""
    cfg, model_cfg = params.pretrain, params.model
    world = dist.world_size()
    if cfg.batch_size % world:
        raise ConfigError(f"pretrain.batch_size: {cfg.batch_size} is invalid: must be "
                          f"divisible by the number of processes ({world})")
    store = Store.open(store_dir)
    check_data_params(params, store, "pretrain")
    tracker.log_dataset(store_dir, store.meta["dataset"], store.meta["fingerprint"], "train")
    rows = store.select(split="train", novel=False)
    dataset = SkeletonDataset(store, rows, TrainTransform(
        frames_out=model_cfg.frames, crop_min=cfg.crop_min, crop_floor=cfg.crop_floor,
        rotate=cfg.rotate))

    sampler = GlobalBatchSampler(len(rows), cfg.batch_size, dist.rank(), world, seed=cfg.seed)
    loader = make_loader(dataset, sampler, workers=cfg.loader_workers,
                         pin_memory=torch.cuda.is_available())

    def loader_factory(epoch: int) -> DataLoader:
        sampler.set_epoch(epoch)    # batches are drawn in this process: workers persist
        return loader

    seed_everything(cfg.seed)   # the same initial weights on every rank and every run
    model = MAMP(model_cfg, cfg.mask_ratio, cfg.tau)
    loop = LoopConfig(epochs=cfg.epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                      warmup_epochs=cfg.warmup_epochs, schedule="cosine", optimizer="adamw",
                      betas=(0.9, 0.95), clip_grad=cfg.clip_grad, seed=cfg.seed,
                      compile=cfg.compile, precision=cfg.precision)
    config = {"model": to_dict(model_cfg), "pretrain": to_dict(cfg)}
    start = time.perf_counter()
    history = fit(model, mamp_step, decay_groups(model, cfg.weight_decay, skip=MAMP_NO_DECAY),
                  loader_factory, loop, ckpt_dir=ckpt_dir, kind="mamp", config=config,
                  fingerprint=checkpoint.fingerprint(store.meta["fingerprint"], config),
                  tracker=tracker)
    wall = time.perf_counter() - start

    speed = statistics.median(h["samples_per_s"] for h in history)
    metrics = {"final_loss": history[-1]["loss"]}
    timing = {"epochs": len(history), "train_samples": len(rows),
              "global_batch": cfg.batch_size, "processes": world,
              "median_samples_per_s": speed,
              "parameters": sum(p.numel() for p in model.parameters()),
              "encoder_parameters": sum(p.numel() for n, p in model.named_parameters()
                                        if not n.startswith(("decoder", "mask_token"))),
              "tokens_per_sample": model.num_tokens, "kept_tokens": model.num_keep,
              "wall_time_s": wall}
    write_outputs(metrics_path, metrics, Path(plots_dir) / "loss.csv", history,
                  ["epoch", "loss", "lr"], tracker)
    write_timing(metrics_path, "pretrain", timing, tracker)
    log_encoder(tracker, Path(ckpt_dir) / "last.pt", model_cfg, "mamp-encoder", step=len(history))
    return metrics | timing
