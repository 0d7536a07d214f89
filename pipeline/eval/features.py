"""Frozen-encoder features: load an encoder from a checkpoint, extract pooled features, cache.

Usage::

    encoder = load_encoder("models/tune/last.pt", params.model)
    feats, labels, indices = extract_features(encoder, dataset, batch_size=256, device="cpu")
    save_features("features/stars_test.npz", feats, labels, indices, key=cache_key)
    feats, labels, indices = load_features("features/stars_test.npz")
    model_id = log_encoder(tracker, "models/tune/last.pt", params.model, "stars-encoder", step)

`dataset` is a `pipeline.data.dataset.SkeletonDataset` built with the test transform; it is
read in order once (the test transform draws no randomness).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.config import ModelConfig
from pipeline.core.errors import UserError
from pipeline.core.io import atomic_path, file_sha256
from pipeline.data.dataset import GlobalBatchSampler, SkeletonDataset, make_loader
from pipeline.models.encoder import Encoder
from pipeline.training import checkpoint
from pipeline.training.loop import autocast

# Keys of a pretraining/tuning checkpoint that are not part of the encoder: the MAMP decoder
# and mask token (published key names), and the STARS head and queue.
_NOT_ENCODER = ("decoder", "mask_token", "head.", "queue")


def load_encoder(ckpt_path: str | Path, model_cfg: ModelConfig) -> Encoder:
    """The `Encoder` whose weights are `checkpoint["model"]` minus decoder/head keys."""
    state = checkpoint.load(ckpt_path)["model"]
    state = {k: v for k, v in state.items() if not k.startswith(_NOT_ENCODER)}
    encoder = Encoder(model_cfg)
    expected = encoder.state_dict()
    wrong = ([f"missing {k}" for k in expected if k not in state]
             + [f"unexpected {k}" for k in state if k not in expected]
             + [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state and state[k].shape != v.shape])
    if wrong:
        raise UserError(f"{ckpt_path}: does not match model params ({'; '.join(wrong[:3])}); "
                        f"the model group of params.yaml must be the one it was trained with")
    encoder.load_state_dict(state)
    return encoder.eval()


def log_encoder(tracker: Any, ckpt_path: str | Path, model_cfg: ModelConfig,
                name: str, step: int) -> str | None:
    """Log the checkpoint's encoder as an MLflow model of the tracker's run (input example:
    two zero clips (2, M, T, V, 3): the signature holds the shapes, and a batch of 2 keeps
    the exported batch size free); tagged with the
    checkpoint's sha256, which the evaluate stage uses to link its metrics. MLflow links the
    run's metrics of `step` to the model: pass the step of the final metrics. Returns the
    model id (None when not tracked)."""
    if tracker.run_id is None:
        return None
    encoder = load_encoder(ckpt_path, model_cfg)
    example = np.zeros((2, model_cfg.actors, model_cfg.frames, model_cfg.joints, 3), np.float32)
    return tracker.log_model(encoder, name, example, step=step,
                             tags={"checkpoint_sha256": file_sha256(ckpt_path)})


def extract_features(encoder: Encoder, dataset: SkeletonDataset, batch_size: int,
                     device: str | torch.device, workers: int = 0, precision: str = "fp32",
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features of every sample: feats float32 (N, D), labels (N,), indices (N,);
    computed under the training loop's `autocast` in `precision` ("fp32" or "bf16")."""
    # in order, every sample once; the per-sample seeds go unused by the test transform
    sampler = GlobalBatchSampler(len(dataset), batch_size, shuffle=False, drop_last=False)
    loader = make_loader(dataset, sampler, workers)
    encoder = encoder.to(device).eval()
    feats, labels, indices = [], [], []
    with torch.inference_mode(), autocast(device, precision):
        for batch in loader:
            x = batch["x"].to(device, non_blocking=True)      # (N, M, T, V, C)
            feats.append(encoder.forward_features(x).float().cpu())  # (N, D)
            labels.append(batch["label"])
            indices.append(batch["index"])
    if not feats:
        return (np.zeros((0, encoder.cfg.dim), np.float32), np.zeros(0, np.int64),
                np.zeros(0, np.int64))
    return (torch.cat(feats).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy())


def save_features(path: str | Path, feats: np.ndarray, labels: np.ndarray,
                  indices: np.ndarray, key: str = "") -> None:
    """Write features atomically; `key` identifies what they were computed from."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, feats=feats, labels=labels, indices=indices, key=np.array(key))


def load_features(path: str | Path, key: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(feats, labels, indices) from `save_features`; None if `key` is given and differs."""
    with np.load(path, allow_pickle=False) as z:
        if key is not None and str(z["key"]) != key:
            return None
        return z["feats"], z["labels"], z["indices"]
