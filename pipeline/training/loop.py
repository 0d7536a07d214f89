"""The one training loop, shared by MAMP pretraining, STARS tuning and the paper-mode linear
probe. It runs alone or under `torchrun` (see `pipeline.core.launch`) without changes.

Usage::

    cfg = LoopConfig(epochs=20, lr=1e-3, min_lr=5e-4, warmup_epochs=2, betas=(0.9, 0.95))
    history = fit(model, step_fn, decay_groups(model, 0.05, skip={"pos_embed"}),
                  loader_factory, cfg, ckpt_dir=Path("models/pretrain"), kind="mamp",
                  config=to_dict(params), fingerprint=fp, tracker=tracker)

`step_fn(model, batch) -> (loss, logs)` receives the DDP-wrapped (and maybe compiled) module
and must call `model(...)`, its forward: DDP arms its gradient all-reduce in forward.
`loader_factory(epoch)` builds the epoch's loader, so its sampler reshuffles per epoch; its
length must be the same on every rank.

What the loop guarantees (after MAE's engine_pretrain.py and nanoGPT's train.py):
- lr is a pure function of the fractional epoch, set every iteration, times each group's
  `lr_scale` (per-block learning rates);
- the torch and Python generators are re-seeded from (seed, epoch, rank) at every epoch, so
  a resumed run is bit-identical to an uninterrupted one without replaying generator state;
- the logged loss is the mean over all ranks, so 1 and N processes draw the same curve;
- a non-finite loss raises `TrainingDiverged` before anything is saved;
- `<ckpt_dir>/last.pt` is written atomically by rank 0 after every epoch, and a run whose
  fingerprint matches resumes from it (rank 0 reads it and sends it to the other ranks, so
  only node 0 needs `ckpt_dir`), continuing the MLflow run whose id it keeps in
  `extra["mlflow_run_id"]`; `best.pt` (when `best_metric` is set) is separate;
- an interrupt (Ctrl-C, SIGTERM) leaves as `Interrupted` naming the epoch it stopped in;
- when stderr is not a terminal (a log file, CI) each epoch leaves one summary line there,
  since the progress bar does not.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from pipeline.core import dist
from pipeline.core.errors import Interrupted, UserError
from pipeline.training import checkpoint

StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
EpochEndFn = Callable[[int, nn.Module], Mapping[str, Any]]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass(frozen=True)
class LoopConfig:
    """Everything `fit` needs besides the model, the data and where to write."""

    epochs: int
    lr: float                                   # base lr; each group scales it by `lr_scale`
    min_lr: float = 0.0                         # where the cosine ends
    warmup_epochs: float = 0.0                  # linear warm-up from 0 (either schedule)
    schedule: Literal["cosine", "constant"] = "cosine"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)   # AdamW
    momentum: float = 0.9                       # SGD
    clip_grad: float = 0.0                      # max global grad norm; 0 disables
    seed: int = 0
    compile: bool = False
    find_unused_parameters: bool = False        # DDP; only for models that skip parameters
    best_metric: str | None = None              # key of on_epoch_end's dict that picks best.pt
    best_mode: Literal["max", "min"] = "max"
    log_every: int = 10                         # steps between host reads of the loss
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on any device (`autocast`)


def lr_at(epoch: float, cfg: LoopConfig) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then constant or half-cosine
    from `lr` to `min_lr` at `epochs` (MAE util/lr_sched.py)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))



def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The one mixed-precision switch (training steps, features): bf16 autocast on whatever
    device runs, CPU included, for "bf16"; a no-op for "fp32". bf16 keeps fp32's exponent
    range, so no loss scaler is needed. Parameters, and hence optimizer state, stay fp32;
    the models pin their numerically sensitive parts to fp32 themselves."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_optimizer(groups: Sequence[Mapping[str, Any]], cfg: LoopConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or SGD over the groups' trainable parameters; frozen parameters
    and emptied groups are dropped so no optimizer state is kept for them."""
    kept = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            kept.append({**g, "params": params})
    if not kept:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(kept, lr=cfg.lr, betas=cfg.betas,
                                 fused=device.type == "cuda")
    return torch.optim.SGD(kept, lr=cfg.lr, momentum=cfg.momentum)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices) and Python's `random`; numpy is never used globally here
    (per-sample generators come from the dataset's seeds)."""
    torch.manual_seed(seed)
    random.seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Offset by rank so ranks draw different noise, like nanoGPT's seed_offset.
    return seed + 1_000_003 * (epoch + 1) + dist.rank()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch
    for v in values:
        if isinstance(v, (torch.Tensor, Mapping, list, tuple)):
            return _batch_size(v)
    raise TypeError(f"cannot count the samples of a batch of type {type(batch).__name__}")


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where they cost nothing (CPU); the global flags are restored.

    Deterministic mode also fills every new tensor with NaN by default; that fill is 3-12%
    of a pretraining step (profiled) and adds nothing when the kernels are deterministic.
    """
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    if device.type == "cpu" and not before[0]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


@dataclass
class _Progress:
    """Where training stands; restored from `last.pt` on resume."""

    epoch: int = 0            # epochs completed
    step: int = 0             # optimizer steps taken
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    run_id: str | None = None  # the MLflow run that logged the epochs so far


def _resume(path: Path, fingerprint: str, model: nn.Module,
            optimizer: torch.optim.Optimizer) -> _Progress:
    """Rank 0 reads `path` and sends it to every rank: other nodes hold no outputs."""
    ckpt = None
    if dist.is_main() and path.is_file():
        ckpt = checkpoint.load(path)
        if ckpt["fingerprint"] != fingerprint:
            tqdm.write(f"{path}: data or config changed since it was written; starting fresh")
            ckpt = None
        else:
            tqdm.write(f"{path}: resuming after epoch {ckpt['epoch']}")
    ckpt = dist.broadcast_object(ckpt)
    if ckpt is None:
        return _Progress()
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return _Progress(epoch=ckpt["epoch"], step=ckpt["step"],
                     history=list(ckpt["extra"]["history"]), best=ckpt["extra"]["best"],
                     run_id=ckpt["extra"].get("mlflow_run_id"))


def fit(model: nn.Module, step_fn: StepFn, groups: Sequence[Mapping[str, Any]],
        loader_factory: Callable[[int], Iterable], cfg: LoopConfig, *, ckpt_dir: Path,
        kind: str, config: dict, fingerprint: str, tracker: Any,
        on_epoch_end: EpochEndFn | None = None) -> list[dict[str, float]]:
    """Train `model` for `cfg.epochs` epochs (resuming from `<ckpt_dir>/last.pt` when its
    fingerprint matches) and return the per-epoch history, resumed epochs included.

    `on_epoch_end(epoch, model)` runs on every rank with the unwrapped model after each
    epoch; its metrics join the history, and `cfg.best_metric` names the one that picks
    `best.pt`. Only rank 0 writes checkpoints and calls `tracker`.
    """
    device = dist.device()
    model.to(device)
    optimizer = build_optimizer(groups, cfg, device)
    last_path, best_path = Path(ckpt_dir) / "last.pt", Path(ckpt_dir) / "best.pt"
    dist.agree({"data and config fingerprint (data/processed, params.yaml)": fingerprint})
    state = _resume(last_path, fingerprint, model, optimizer)
    if state.run_id and hasattr(tracker, "resume"):
        tracker.resume(state.run_id)   # one run, one curve, across interruptions

    wrapped: nn.Module = model
    if dist.world_size() > 1:
        # Buffers are not broadcast: STARS queues are updated identically on every rank, and
        # BatchNorm statistics are synchronised by SyncBatchNorm where the model wants it.
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=cfg.find_unused_parameters)
    if cfg.compile:
        wrapped = torch.compile(wrapped)

    saved = state.epoch   # epochs in last.pt: where a re-run resumes
    try:
        for epoch in range(state.epoch, cfg.epochs):
            seed_everything(_epoch_seed(cfg.seed, epoch))
            model.train()
            last_good = (f"{last_path} (after epoch {state.epoch}) is kept" if state.epoch
                         else "no checkpoint was written yet")
            with _deterministic(device):
                metrics = _train_one_epoch(wrapped, step_fn, loader_factory(epoch), optimizer,
                                           cfg, epoch, state.step, device, last_good)
            state.step += metrics.pop("steps")
            if on_epoch_end is not None:
                metrics.update({k: float(v) for k, v in on_epoch_end(epoch, model).items()})
            state.history.append(metrics)
            state.epoch = epoch + 1
            improved = False
            if cfg.best_metric is not None:
                if cfg.best_metric not in metrics:
                    raise ValueError(f"best_metric {cfg.best_metric!r} is not among the epoch "
                                     f"metrics {sorted(metrics)}")
                improved = _improved(metrics[cfg.best_metric], state.best, cfg.best_mode)
                if improved:
                    state.best = metrics[cfg.best_metric]
            if dist.is_main():
                run_id = getattr(tracker, "run_id", None) or state.run_id
                ckpt = checkpoint.make(kind, model, optimizer, step=state.step, epoch=state.epoch,
                                       config=config, fingerprint=fingerprint,
                                       extra={"history": state.history, "best": state.best,
                                              "mlflow_run_id": run_id})
                # best.pt before last.pt: a kill in between re-runs this epoch and rewrites both.
                if improved:
                    checkpoint.save(best_path, ckpt)
                checkpoint.save(last_path, ckpt)
                saved = state.epoch
                tracker.log_metrics(metrics, step=epoch)
                if not sys.stderr.isatty():
                    tqdm.write(_summary(metrics, cfg.epochs), file=sys.stderr)
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM as pipeline.core.stage maps it
        raise Interrupted(getattr(exc, "signum", signal.SIGINT), saved + 1) from None
    return state.history


def _summary(metrics: Mapping[str, float], epochs: int) -> str:
    """One line per epoch for logs: `epoch 3/20 loss 0.4312 val_knn 0.6210 lr 1.0e-03 ...`."""
    rest = " ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                    if k not in ("epoch", "loss", "lr", "samples_per_s", "epoch_time_s"))
    return (f"epoch {int(metrics['epoch']) + 1}/{epochs} loss {metrics['loss']:.4f}"
            f"{' ' + rest if rest else ''} lr {metrics['lr']:.1e} "
            f"{metrics['samples_per_s']:.1f} samples/s {metrics['epoch_time_s']:.1f} s")


def _train_one_epoch(model: nn.Module, step_fn: StepFn, loader: Iterable,
                     optimizer: torch.optim.Optimizer, cfg: LoopConfig, epoch: int,
                     step0: int, device: torch.device, last_good: str) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's mean (global) loss and logs, lr, speed."""
    steps = len(loader)
    if steps == 0:
        raise UserError("the training set holds fewer samples than one global batch; "
                        "lower the batch size or add data")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    window: list[torch.Tensor] = []   # per-step [loss, *logs] on device, read every log_every
    totals = None
    keys: list[str] = []
    samples = 0
    lr = 0.0
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not dist.is_main() or not sys.stderr.isatty(), dynamic_ncols=True,
               leave=False)
    start = time.perf_counter()
    for it, batch in enumerate(bar):
        lr = lr_at(epoch + it / steps, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        batch = _to_device(batch, device)
        samples += _batch_size(batch)

        with autocast(device, cfg.precision):
            loss, logs = step_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()

        keys = ["loss", *logs]
        window.append(torch.stack([loss.detach().float(),
                                   *(torch.as_tensor(v, device=device).detach().float()
                                     for v in logs.values())]))
        if (it + 1) % cfg.log_every and it + 1 < steps:
            continue
        # One collective and one host read per window, not per step (MAE syncs every step).
        rows = dist.all_reduce_mean(torch.stack(window)).cpu()      # (window, 1 + len(logs))
        bad = (~torch.isfinite(rows[:, 0])).nonzero()
        if len(bad):
            at = it + 1 - len(window) + int(bad[0])
            raise TrainingDiverged(
                f"loss is {rows[int(bad[0]), 0].item()} at epoch {epoch + 1} step {at + 1} "
                f"(global step {step0 + at + 1}); {last_good}; lower the learning rate "
                "or set clip_grad")
        totals = rows.sum(0) if totals is None else totals + rows.sum(0)
        window.clear()
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{rows[-1, 0].item():.4f}",
                        samples_s=f"{samples * dist.world_size() / elapsed:.1f}")
    elapsed = time.perf_counter() - start
    total_samples = int(dist.all_reduce_sum(torch.tensor(samples, device=device)).item())
    means = (totals / steps).tolist()
    return {"epoch": epoch, **dict(zip(keys, means)), "lr": lr, "steps": steps,
            "samples_per_s": total_samples / elapsed, "epoch_time_s": elapsed}
