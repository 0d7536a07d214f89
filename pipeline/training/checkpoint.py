"""The one checkpoint schema, written atomically and read back safely.

Usage::

    ckpt = checkpoint.make("mamp", model, optimizer, step=s, epoch=e, config=cfg_dict,
                           fingerprint=checkpoint.fingerprint(store.meta["fingerprint"], cfg_dict))
    checkpoint.save(ckpt_dir / "last.pt", ckpt)      # temp file + rename (pipeline.core.io)
    ckpt = checkpoint.load(ckpt_dir / "last.pt")     # weights_only: tensors and plain data only

Schema (every key always present)::

    kind         "mamp" | "stars" | "probe" | ...
    model        state dict of the unwrapped, uncompiled module (published key names)
    optimizer    optimizer state dict, or None
    scaler       GradScaler state dict, or None (bf16 autocast needs no loss scaling)
    step, epoch  optimizer steps taken and epochs completed
    config       plain dict of the parameters that produced it
    fingerprint  data fingerprint + config hash: resume only when it matches
    extra        dict, e.g. {"history": [...per-epoch metrics...], "best": ...}
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.errors import UserError
from pipeline.core.io import atomic_path

KEYS = ("kind", "model", "optimizer", "scaler", "step", "epoch", "config", "fingerprint",
        "extra")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers, so saved
    keys never carry `module.` or `_orig_mod.` prefixes."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# Keys that change how fast training runs, not what it computes: a change keeps resume.
NOT_FINGERPRINTED = frozenset({"loader_workers"})


def fingerprint(data_fingerprint: str, config: dict) -> str:
    """`<data fingerprint>:<sha256 of the config as canonical JSON>` (first 16 hex digits);
    the `NOT_FINGERPRINTED` keys of each config group are left out."""
    semantic = {group: ({k: v for k, v in values.items() if k not in NOT_FINGERPRINTED}
                        if isinstance(values, dict) else values)
                for group, values in config.items()}
    blob = json.dumps(semantic, sort_keys=True, default=str).encode()
    return f"{data_fingerprint}:{hashlib.sha256(blob).hexdigest()[:16]}"


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values, in sorted name order: the
    identity of the weights, whatever else the file holds (history, timings, optimizer)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make(kind: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
         step: int = 0, epoch: int = 0, config: dict | None = None, fingerprint: str = "",
         scaler: Any = None, extra: dict | None = None) -> dict[str, Any]:
    """A checkpoint dict in the schema above, from live objects."""
    return {"kind": kind,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": step,
            "epoch": epoch,
            "config": config or {},
            "fingerprint": fingerprint,
            "extra": extra or {}}


def save(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write atomically: a killed process leaves the previous file intact."""
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint is missing keys {missing}")
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def _reason(exc: Exception) -> str:
    """The informative line of a torch.load error (torch wraps it in paragraphs and colours)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    inner = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = inner.group(1) if inner else (text.splitlines()[0] if text else type(exc).__name__)
    return line.split(". ")[0].strip()


def safe_torch_load(path: str | Path, allow: Sequence[type] = ()) -> Any:
    """`torch.load(weights_only=True)` on CPU, `allow` added to its allow-list; every failure
    (missing, corrupt, or a pickle that would run code) becomes a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found; run the stage that writes it "
                        "first, or check the path")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))           # e.g. posix.system
        if found is None:  # bad bytes rather than an object that would run code
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({_reason(exc)}); "
                            "delete it or re-create it") from None
        raise UserError(f"{path}: refused: it holds a Python object ({found.group(1)}) that a "
                        "weights-only load does not allow and that could run code; only "
                        "tensors and plain containers are accepted") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, AttributeError, TypeError, ValueError,
            OSError) as exc:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_reason(exc)}); delete "
                        "it or re-create it") from None


def load(path: str | Path) -> dict[str, Any]:
    """Read a pipeline checkpoint safely (no code runs from the file) and check its schema."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in KEYS):
        raise UserError(f"{path}: not a pipeline checkpoint (expected keys {', '.join(KEYS)}); "
                        "import published weights with `python -m pipeline import-weights`")
    return ckpt
