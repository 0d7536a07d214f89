"""Fine-tuning (stage `finetune`): encoder + classification head trained end to end from the
MAMP and the STARS checkpoints, under the protocols of MAMP's evaluation code that the STARS
release ships, through the one training loop.

Usage (from `stages/finetune.py`, alone or under torchrun)::

    metrics = run_finetune(params, Path("data/processed"), Path("data/processed_transfer"),
                           {"mamp": Path("models/pretrain/last.pt"),
                            "stars": Path("models/tune/last.pt")},
                           Path("models/finetune"), Path("metrics/finetune.json"), tracker)

Protocols (`finetune.protocols`):
- `full`: the store's labelled train split (base classes), scored on its test split;
- `semi`: a seeded, class-stratified `fraction` of that train split
  (`pipeline.data.subsets`), one run per fraction and seed, reported as mean and std;
- `transfer`: the `transfer` group's target store (its own classes and splits).
Recipe (MAMP `main_finetune.py`, `finetune_t120_layer8_decay.yaml`, `script_finetune.sh`):
AdamW (0.9, 0.999), weight decay 0.05 except on 1-d parameters, layer-wise lr decay, drop
path, label smoothing, linear warm-up then cosine to `min_lr` per iteration, train-time crop +
rotation (the pretraining transform), test-time 95 % centre crop. Each run checkpoints to
`<ckpt_dir>/<model>/<run>/last.pt` and resumes from it. Every run is scored at its last epoch
on the test split: the release keeps the epoch with the best *test* accuracy, which we do not
(DESIGN.md section 4, honest model selection).

Wall times (total and per run) go to `timing.json` beside the metrics (`write_timing`).
`metrics_path` = {"mamp": {"full": {...}, "semi": {"<fraction>": {...}}, "transfer": {...}},
"stars": {...}, "delta": {stars - mamp}, "chance": {...}, ...}; top-1, top-5 and mean
per-class accuracy are fractions (semi: `<metric>_mean` / `<metric>_std` over the seeds,
and every seed's run under `runs`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core import dist
from pipeline.core.config import Params, to_dict
from pipeline.core.errors import DataError, UserError
from pipeline.core.io import atomic_write_json, file_sha256
from pipeline.core.stage import write_timing
from pipeline.core.tracking import Prefixed
from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader
from pipeline.data.store import Store
from pipeline.data.subsets import stratified_subset
from pipeline.data.transforms import TestTransform, TrainTransform
from pipeline.models.classifier import Classifier
from pipeline.training import checkpoint
from pipeline.training.groups import layer_decay_groups
from pipeline.training.loop import LoopConfig, autocast, fit, seed_everything

MODELS = ("mamp", "stars")
METRICS = ("top1", "top5", "mean_class_acc")
# finetune keys that say which runs exist, not what one run computes: kept out of its fingerprint
_RUN_SET = ("protocols", "label_fractions", "seeds", "loader_workers")


@dataclass(frozen=True)
class Task:
    """The data of one fine-tuning run: train and test rows of `store`, and the classes."""

    store: Store
    train_rows: np.ndarray
    test_rows: np.ndarray
    classes: np.ndarray          # sorted labels; the head's output i is class classes[i]


def make_task(store: Store, train_rows: np.ndarray, test_rows: np.ndarray) -> Task:
    """A task whose classes are the train split's; test labels must be among them."""
    labels = store.index["label"].to_numpy()
    classes = np.unique(labels[train_rows])
    unseen = np.setdiff1d(np.unique(labels[test_rows]), classes)
    if len(unseen):
        raise DataError(f"{store.dir}: test labels {unseen[:5].tolist()} have no train samples; "
                        f"the train and test splits must share classes")
    return Task(store, np.asarray(train_rows), np.asarray(test_rows), classes)


def _load_pretrained(model: Classifier, path: Path) -> None:
    """Encoder weights from a MAMP or STARS checkpoint; errors name the file."""
    try:
        model.load_encoder(checkpoint.load(path)["model"])
    except (KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: does not fit the configured encoder ({first}); set the "
                        f"`model:` section of params.yaml to the pretrained sizes") from None


@torch.no_grad()
def score(model: nn.Module, task: Task, frames: int, batch_size: int,
          workers: int = 0, precision: str = "fp32") -> dict[str, float]:
    """Top-1, top-5 and mean per-class accuracy of `model` on the test rows (test transform).
    Each process scores every world-th row; the confusion counts are summed over processes."""
    device, n = dist.device(), len(task.classes)
    shard = task.test_rows[dist.rank()::dist.world_size()]
    dataset = SkeletonDataset(task.store, shard, TestTransform(frames))
    loader = make_loader(dataset, GlobalBatchSampler(len(shard), batch_size, shuffle=False,
                                                     drop_last=False), workers)
    lookup = torch.as_tensor(task.classes, device=device)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)   # rows: true class
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    model.eval()
    for batch in loader:
        with autocast(device, precision):
            logits = model(batch["x"].to(device)).float()               # (N, classes)
        y = torch.searchsorted(lookup, batch["label"].to(device))
        top = logits.topk(min(5, n), dim=1).indices                     # (N, 5)
        confusion += torch.bincount(y * n + top[:, 0], minlength=n * n)
        top5 += (top == y[:, None]).any(1).sum()
    confusion = dist.all_reduce_sum(confusion).reshape(n, n).cpu().numpy()
    total = confusion.sum()
    support = confusion.sum(1)
    per_class = np.diag(confusion)[support > 0] / support[support > 0]
    return {"top1": float(np.trace(confusion) / total),
            "top5": float(dist.all_reduce_sum(top5).item() / total),
            "mean_class_acc": float(per_class.mean())}


def finetune_one(params: Params, task: Task, pretrained: Path, ckpt_dir: Path, seed: int,
                 tracker: Any) -> dict[str, Any]:
    """Fine-tune from `pretrained` on the task's train rows for `finetune.epochs` epochs
    (resuming from `<ckpt_dir>/last.pt` when it matches), then score the last epoch."""
    cfg, model_cfg, pre = params.finetune, params.model, params.pretrain
    world = dist.world_size()
    if len(task.train_rows) < cfg.batch_size:
        raise UserError(f"{task.store.dir}: {len(task.train_rows)} fine-tuning samples, fewer "
                        f"than one global batch (finetune.batch_size {cfg.batch_size}); lower "
                        f"the batch size or raise finetune.label_fractions")
    augment = TrainTransform(model_cfg.frames, pre.crop_min, pre.crop_floor, pre.rotate)
    dataset = SkeletonDataset(task.store, task.train_rows, augment)
    sampler = GlobalBatchSampler(len(task.train_rows), cfg.batch_size, dist.rank(), world,
                                 seed=seed)
    loader = make_loader(dataset, sampler, workers=cfg.loader_workers,
                         pin_memory=torch.cuda.is_available())

    def loader_factory(epoch: int):
        sampler.set_epoch(epoch)
        return loader

    seed_everything(seed)   # the same head on every rank and every run
    model = Classifier(model_cfg, len(task.classes), cfg.head_dropout, cfg.head_hidden,
                       drop_path=cfg.drop_path)
    _load_pretrained(model, pretrained)
    lookup = torch.as_tensor(task.classes)

    def step(m: nn.Module, batch: dict[str, torch.Tensor]):
        logits = m(batch["x"])
        y = torch.searchsorted(lookup.to(logits.device), batch["label"])
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean()}

    loop = LoopConfig(epochs=cfg.epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                      warmup_epochs=cfg.warmup_epochs, schedule="cosine", optimizer="adamw",
                      betas=(0.9, 0.999), clip_grad=cfg.clip_grad, seed=seed,
                      compile=cfg.compile, precision=cfg.precision)
    rows = hashlib.sha256(np.asarray(task.train_rows, np.int64).tobytes()).hexdigest()[:16]
    config = {"model": to_dict(model_cfg),
              "finetune": {k: v for k, v in to_dict(cfg).items() if k not in _RUN_SET},
              "augment": to_dict(augment), "seed": seed, "rows": rows,
              "classes": task.classes.tolist()}
    fingerprint = checkpoint.fingerprint(task.store.meta["fingerprint"],
                                         {**config, "pretrained": file_sha256(pretrained)})
    groups = layer_decay_groups(model, model_cfg.depth, cfg.layer_decay, cfg.weight_decay)
    history = fit(model, step, groups, loader_factory, loop, ckpt_dir=ckpt_dir,
                  kind="finetune", config=config, fingerprint=fingerprint, tracker=tracker)
    scores = score(model, task, model_cfg.frames, params.eval.batch_size, cfg.loader_workers,
                   cfg.precision)
    return {**scores, "final_loss": history[-1]["loss"], "epochs": len(history),
            "train_samples": len(task.train_rows), "test_samples": len(task.test_rows),
            "classes": len(task.classes)}


def _summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1; 0 for one run) of each metric over the seeds."""
    out: dict[str, Any] = {}
    for key in METRICS:
        values = np.array([r[key] for r in runs.values()])
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out["train_samples"] = runs[next(iter(runs))]["train_samples"]
    return {**out, "runs": runs}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {"a/b/c": number} for the tracker (lists and strings left out)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _delta(mamp: dict[str, Any], stars: dict[str, Any]) -> dict[str, float]:
    """STARS - MAMP per protocol (semi: on the means)."""
    out = {}
    for protocol in ("full", "transfer"):
        if protocol in mamp:
            out.update({f"{protocol}_{k}": stars[protocol][k] - mamp[protocol][k]
                        for k in METRICS})
    for fraction, m in mamp.get("semi", {}).items():
        out.update({f"semi_{fraction}_{k}_mean": stars["semi"][fraction][f"{k}_mean"]
                    - m[f"{k}_mean"] for k in METRICS})
    return out


def run_finetune(params: Params, store_dir: Path, target_dir: Path,
                 checkpoints: dict[str, Path], ckpt_dir: Path, metrics_path: Path,
                 tracker: Any) -> dict[str, Any]:
    """Every protocol of `finetune.protocols` for both models; writes and returns metrics."""
    cfg = params.finetune
    for ckpt in checkpoints.values():
        if not Path(ckpt).is_file():
            raise UserError(f"{ckpt}: checkpoint not found; run the stage that writes it "
                            "(dvc repro pretrain / tune) or import published weights")
    store = Store.open(store_dir)
    labels = store.index["label"].to_numpy()
    train = store.select(split="train", novel=False)
    tasks: dict[str, tuple[Task, int]] = {}   # run name -> (task, training seed)
    if "full" in cfg.protocols or "semi" in cfg.protocols:
        full = make_task(store, train, store.select(split="test", novel=False))
        if "full" in cfg.protocols:
            tasks["full"] = (full, cfg.seed)
        if "semi" in cfg.protocols:
            for fraction in cfg.label_fractions:
                for s in cfg.seeds:
                    rows = stratified_subset(train, labels[train], fraction, s)
                    # every class of the full split, so the head is the same size
                    tasks[f"semi_{fraction:g}_seed{s}"] = (
                        Task(store, rows, full.test_rows, full.classes), cfg.seed + s)
    if "transfer" in cfg.protocols:
        target = Store.open(target_dir)
        tasks["transfer"] = (make_task(target, target.select(split="train"),
                                       target.select(split="test")), cfg.seed)
    for name, (task, _) in tasks.items():   # fail before any training, not after hours
        if len(task.train_rows) < cfg.batch_size:
            raise UserError(f"finetune.batch_size: {cfg.batch_size} is more than the "
                            f"{len(task.train_rows)} training samples of run {name}; lower it "
                            f"or raise finetune.label_fractions")

    per_model: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}
    start = time.perf_counter()
    for model_name in MODELS:
        results: dict[str, Any] = {}
        for name, (task, seed) in tasks.items():
            t0 = time.perf_counter()
            run = finetune_one(params, task, Path(checkpoints[model_name]),
                               Path(ckpt_dir) / model_name / name, seed,
                               Prefixed(tracker, f"{model_name}/{name}/"))
            timing[f"{model_name}_{name}_s"] = time.perf_counter() - t0
            if name.startswith("semi_"):
                fraction, s = name.removeprefix("semi_").split("_seed")
                results.setdefault("semi", {}).setdefault(fraction, {})[f"seed{s}"] = run
            else:
                results[name] = run
        if "semi" in results:
            results["semi"] = {f: _summary(runs) for f, runs in results["semi"].items()}
        per_model[model_name] = results

    chance = {name: 1.0 / len(task.classes) for name, (task, _) in tasks.items()
              if not name.startswith("semi_")}
    metrics: dict[str, Any] = {
        **per_model, "delta": _delta(per_model["mamp"], per_model["stars"]),
        "chance": chance, "protocols": list(cfg.protocols), "epochs": cfg.epochs,
        "label_fractions": list(cfg.label_fractions), "seeds": list(cfg.seeds)}
    if "transfer" in tasks:
        t = tasks["transfer"][0]
        metrics["transfer_target"] = {"source": params.transfer.source,
                                      "benchmark": params.transfer.benchmark,
                                      "raw_dir": params.transfer.raw_dir,
                                      "classes": len(t.classes),
                                      "train_samples": len(t.train_rows),
                                      "test_samples": len(t.test_rows)}
    if dist.is_main():
        atomic_write_json(metrics_path, metrics)
        tracker.log_metrics(_flat({k: metrics[k] for k in (*MODELS, "delta", "chance")}))
        tracker.log_artifact(metrics_path, "finetune")
    write_timing(Path(metrics_path), "finetune",
                 {"wall_time_s": time.perf_counter() - start, "processes": dist.world_size(),
                  **timing}, tracker)
    return metrics
