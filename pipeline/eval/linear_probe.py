"""Linear probe of a frozen encoder (DESIGN.md section 4; MAMP's linear evaluation).

Usage::

    result = probe_cached(train_feats, train_labels, test_feats, test_labels, params.eval)
    result = probe_paper(encoder, train_dataset, train_labels, test_feats, test_labels,
                         params.eval, ckpt_dir=..., fingerprint=..., tracker=tracker)
    result["top1"], result["mean_class_acc"], result["confusion"], result["curve"]

The head is BatchNorm1d(D, affine=False) + Linear (as in MAE/MAMP linear probing), trained
with SGD (momentum 0.9, no weight decay), the learning rate set every iteration on a cosine
from `probe_lr` to 0 (`pipeline.training.loop.lr_at`), `probe_epochs` epochs of `probe_batch_size`
(full batches: a batch of one would break BatchNorm; reshuffled every epoch). Two modes:
- `cached`: on the cached test-transform features of the train split, a plain loop over a
  feature tensor. Seconds to a minute; the evaluate stage's default; no augmentation.
- `paper`: through `pipeline.training.loop.fit`, every epoch re-crops and re-rotates the train split
  (the pretraining transform) and runs the frozen encoder, as the paper does. Costs one
  encoder forward over the train split per epoch; checkpoints each epoch and resumes.
Both report the last epoch: the public release picks the epoch by test accuracy, which we
do not (DESIGN.md section 4, honest model selection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core import dist
from pipeline.core.config import EvalConfig
from pipeline.core.errors import DataError
from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader
from pipeline.models.encoder import Encoder
from pipeline.training.loop import LoopConfig, fit, lr_at


class LinearProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)  # standardises features; no learned scale
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (N, D) -> (N, classes)
        return self.fc(self.bn(x))


class FrozenEncoderProbe(nn.Module):
    """Encoder (frozen, no graph kept) + probe: the module `fit` trains in paper mode."""

    def __init__(self, encoder: Encoder, probe: LinearProbe):
        super().__init__()
        self.encoder, self.probe = encoder.requires_grad_(False), probe

    def train(self, mode: bool = True) -> FrozenEncoderProbe:
        super().train(mode)
        self.encoder.eval()   # frozen means frozen: no train-mode behaviour in the encoder
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (N, M, T, V, C) -> (N, classes)
        with torch.no_grad():
            f = self.encoder.forward_features(x)          # (N, D), in the loop's precision
        # the head in fp32 (its BatchNorm statistics), as `_score` runs it on test features
        with torch.autocast(x.device.type, enabled=False):
            return self.probe(f.float())


def loop_config(cfg: EvalConfig) -> LoopConfig:
    return LoopConfig(epochs=cfg.probe_epochs, lr=cfg.probe_lr, min_lr=0.0, schedule="cosine",
                      optimizer="sgd", momentum=0.9, seed=cfg.seed, precision=cfg.precision)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """A cached probe step is a few tens of MFLOP: on CPU, thread hand-offs cost more than
    they save (measured 4x slower with 2 threads on a busy 2-core machine)."""
    old = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _class_codes(train_labels: np.ndarray, test_labels: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted train classes, and both label arrays as codes 0..C-1."""
    classes = np.unique(train_labels)
    unseen = np.setdiff1d(np.unique(test_labels), classes)
    if len(unseen):
        raise DataError(f"linear probe: test labels {unseen[:5].tolist()} have no train "
                        f"samples; the store's train and test splits must share classes")
    return classes, np.searchsorted(classes, train_labels), np.searchsorted(classes, test_labels)


def _new_probe(dim: int, num_classes: int, seed: int) -> LinearProbe:
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global stream alone
        torch.manual_seed(seed)
        return LinearProbe(dim, num_classes)


@torch.no_grad()
def _score(probe: LinearProbe, classes: np.ndarray, test_feats: np.ndarray,
           test_codes: np.ndarray) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and confusion (rows: true class) on the test set."""
    probe.eval()
    device = next(probe.parameters()).device
    logits = probe(torch.as_tensor(test_feats, dtype=torch.float32, device=device)).cpu()
    y = torch.from_numpy(test_codes)
    top5 = logits.topk(min(5, len(classes)), dim=1).indices        # (N, 5)
    pred = top5[:, 0].numpy()
    n = len(classes)
    confusion = np.bincount(test_codes * n + pred, minlength=n * n).reshape(n, n)
    with np.errstate(invalid="ignore"):
        per_class = np.diag(confusion) / confusion.sum(1)          # nan: class not in test
    return {
        "top1": float((top5[:, 0] == y).float().mean()),
        "top5": float((top5 == y[:, None]).any(1).float().mean()),
        "mean_class_acc": float(np.nanmean(per_class)),
        "per_class_acc": per_class.tolist(),
        "classes": classes.tolist(),
        "confusion": confusion,
        "predictions": classes[pred],
    }


def probe_cached(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, cfg: EvalConfig,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train on cached train-split features; score the last epoch on the test split."""
    device = torch.device(device)
    classes, train_codes, test_codes = _class_codes(train_labels, test_labels)
    x_all = torch.as_tensor(train_feats, dtype=torch.float32, device=device)   # (N, D)
    y_all = torch.as_tensor(train_codes, device=device)
    n, bs = len(x_all), cfg.probe_batch_size
    iters = max(n // bs, 1)
    loop = loop_config(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)

    probe = _new_probe(x_all.shape[1], len(classes), cfg.seed).to(device).train()
    opt = torch.optim.SGD(probe.parameters(), lr=cfg.probe_lr, momentum=loop.momentum)
    curve = []
    with _one_cpu_thread(device):
        for epoch in range(cfg.probe_epochs):
            order = torch.randperm(n, generator=gen).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            for i in range(iters):
                lr = lr_at(epoch + i / iters, loop)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[i * bs:(i + 1) * bs]
                logits = probe(x_all[idx])
                loss = F.cross_entropy(logits, y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # summed on device: one host read per epoch, not per step
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == y_all[idx]).sum()
            seen = min(iters * bs, n)
            curve.append({"epoch": epoch, "loss": float(loss_sum) / seen,
                          "train_acc": float(correct) / seen, "lr": lr})
    return {"mode": "cached", **_score(probe, classes, test_feats, test_codes), "curve": curve}


def probe_paper(encoder: Encoder, train_dataset: SkeletonDataset, train_labels: np.ndarray,
                test_feats: np.ndarray, test_labels: np.ndarray, cfg: EvalConfig, *,
                ckpt_dir: Path, config: dict, fingerprint: str, tracker: Any,
                workers: int = 0) -> dict[str, Any]:
    """Train through the frozen encoder with `fit` on `train_dataset` (built with the train
    transform; `train_labels` are its labels in order); score the last epoch on the cached
    test-transform features. Checkpoints go to `ckpt_dir` (resumed if `fingerprint` matches).
    """
    classes, _, test_codes = _class_codes(train_labels, test_labels)
    model = FrozenEncoderProbe(encoder, _new_probe(test_feats.shape[1], len(classes), cfg.seed))
    lookup = torch.as_tensor(classes)

    def step_fn(m: nn.Module, batch: Mapping[str, torch.Tensor]):
        logits = m(batch["x"])
        y = torch.searchsorted(lookup.to(logits.device), batch["label"])
        acc = (logits.argmax(1) == y).float().mean()
        return F.cross_entropy(logits.float(), y), {"train_acc": acc}

    def loader_factory(epoch: int):
        sampler = GlobalBatchSampler(len(train_dataset), cfg.probe_batch_size,
                                     rank=dist.rank(), world=dist.world_size(), seed=cfg.seed,
                                     epoch=epoch)
        return make_loader(train_dataset, sampler, workers)

    history = fit(model, step_fn, [{"params": list(model.probe.parameters())}],
                  loader_factory, loop_config(cfg), ckpt_dir=ckpt_dir, kind="probe",
                  config=config, fingerprint=fingerprint, tracker=tracker)
    curve = [{"epoch": h["epoch"], "loss": h["loss"], "train_acc": h["train_acc"],
              "lr": h["lr"]} for h in history]
    return {"mode": "paper", **_score(model.probe, classes, test_feats, test_codes),
            "curve": curve}
