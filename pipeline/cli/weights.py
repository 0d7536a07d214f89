"""Import the published MAMP / STARS weights as our checkpoints, and export them back.

Usage (the CLI's `import-weights`)::

    from pipeline.cli.weights import import_weights
    summary = import_weights("mamp", "mamp_ntu60_xsub.pth", "models/imported/mamp.pt", params.model)

Published layouts (DESIGN.md §6):
- MAMP: `torch.save({"model": state_dict, "optimizer", "epoch", "scaler", "args": Namespace})`;
  the state dict has exactly the keys of `pipeline.models.mamp.MAMP`, so it is kept unchanged.
- STARS: a plain state dict: `encoder_student.<encoder key>`,
  `encoder_student.head.{projector.0, predictor.0, predictor.1, predictor.3}.*`, and the
  buffers `queue` (D, K), `queue_ptr`, `queue_id`. Ours is the state dict of
  `pipeline.models.stars.STARS`: encoder keys at top level, `head.*`, `queue.{queue,queue_id,
  queue_ptr}` with the queue stored (K, D).

Files are only ever read with `torch.load(weights_only=True)`: a checkpoint that would run code
when unpickled is refused before anything is written. Every key and shape is checked against
the configured model, so a wrong `model:` section of params.yaml fails naming the key and both
shapes, not at some later `load_state_dict`. Output goes through `pipeline.training.checkpoint.save`
(one schema, atomic write).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline.core.config import ModelConfig, TuneConfig
from pipeline.core.errors import UserError
from pipeline.core.io import atomic_path
from pipeline.models.mamp import MAMP
from pipeline.models.stars import STARS
from pipeline.training import checkpoint

ENCODER_PREFIX = "encoder_student."            # published STARS prefix of the encoder ...
HEAD_PREFIX = "encoder_student.head."           # ... and of its head
QUEUE_KEYS = ("queue", "queue_id", "queue_ptr")  # published top-level buffers -> ours `queue.*`


# ------------------------------------------------------------------ safe loading


def _plain(value: Any) -> Any:
    """A published `args` value as plain data (str for anything exotic), safe to re-save."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# --------------------------------------------------------------------- checking


def _expected_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple]:
    with torch.device("meta"):                       # shapes only: no memory, no init cost
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _check_state(state: Any, expected: dict[str, tuple], src: Path,
                 published: Callable[[str], str] = str) -> None:
    """Same keys, tensors everywhere, same shapes; else a UserError naming the key(s) as the
    file spells them (`published` maps our key name back to the file's)."""
    if not isinstance(state, dict):
        raise UserError(f"{src}: expected a state dict (mapping of names to tensors), "
                        f"found {type(state).__name__}")
    missing = [published(k) for k in expected if k not in state]
    unexpected = [published(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + \
                ([f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise UserError(f"{src}: keys do not match the configured model: {'; '.join(parts)} "
                        f"(check model.depth / model.decoder_depth in params.yaml)")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{src}: {published(key)} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise UserError(f"{src}: {published(key)} has shape {tuple(value.shape)} in the file "
                            f"but {shape} in the configured model; set the `model:` section of "
                            f"params.yaml to the published sizes")


def _check_heads(args: Any, cfg: ModelConfig, src: Path) -> bool:
    """Head counts leave no trace in shapes: compare with the published args when present.
    The release's decoder uses the encoder's `num_heads`. Returns whether it was checked."""
    model_args = getattr(args, "model_args", None)
    if not isinstance(model_args, dict) or "num_heads" not in model_args:
        return False
    heads = model_args["num_heads"]
    for key, ours in (("model.heads", cfg.heads), ("model.decoder_heads", cfg.decoder_heads)):
        if ours != heads:
            raise UserError(f"{src}: the published model uses num_heads={heads} but {key} is "
                            f"{ours}; set {key}: {heads} in params.yaml")
    return True


# ------------------------------------------------------------ STARS key mapping


def _stars_from_published(state: dict) -> dict:
    """Published STARS names -> `pipeline.models.stars.STARS` names; the queue (D, K) -> (K, D).
    Keys of neither layout keep their name (and are then reported as unexpected)."""
    ours = {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIX):
            ours["head." + key[len(HEAD_PREFIX):]] = value
        elif key.startswith(ENCODER_PREFIX):
            ours[key[len(ENCODER_PREFIX):]] = value
        elif key in QUEUE_KEYS:
            ours["queue." + key] = value.T.contiguous() if key == "queue" else value
        else:
            ours[key] = value
    return ours


def _stars_published_name(key: str) -> str:
    if key.startswith("head."):
        return HEAD_PREFIX + key[len("head."):]
    if key.startswith("queue."):
        return key[len("queue."):]
    return ENCODER_PREFIX + key


def _stars_to_published(state: dict) -> dict:
    return {_stars_published_name(k): v.T.contiguous() if k == "queue.queue" else v
            for k, v in state.items()}


# ----------------------------------------------------------------------- import


def _our_checkpoint(kind: str, model: dict, cfg: ModelConfig, epoch: int, src: Path,
                    extra: dict) -> dict:
    """Our schema (pipeline/training/checkpoint.py) with nothing to resume: no optimizer and a
    fingerprint that matches no training run."""
    return {"kind": kind, "model": model, "optimizer": None, "scaler": None, "step": 0,
            "epoch": epoch, "config": {"model": dataclasses.asdict(cfg)},
            "fingerprint": "", "extra": extra, "source": f"imported:{src}"}


def _epochs_done(epoch: Any, args: dict, src: Path) -> int:
    """Epochs a published MAMP checkpoint completed: the release saves the 0-based epoch
    index; the STARS repository's copy saves the string 'last' after the final epoch, whose
    count is then the `epochs` argument (0 when the file does not record it)."""
    if epoch == "last":
        return args.get("epochs") if isinstance(args.get("epochs"), int) else 0
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return epoch + 1
    raise UserError(f"{src}: 'epoch' is {epoch!r}; expected an epoch index or 'last'")


def _import_mamp(src: Path, cfg: ModelConfig) -> tuple[dict, dict]:
    ckpt = checkpoint.safe_torch_load(src, allow=[argparse.Namespace])
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{src}: not a MAMP checkpoint: expected a dict with a 'model' state "
                        f"dict (use --format stars for STARS weights)")
    state = ckpt["model"]
    # The mask ratio changes no shape; 0.5 is valid for every token count.
    _check_state(state, _expected_shapes(lambda: MAMP(cfg, mask_ratio=0.5)), src)
    heads_checked = _check_heads(ckpt.get("args"), cfg, src)
    args = _plain(ckpt["args"]) if ckpt.get("args") is not None else {}
    published_epoch = ckpt.get("epoch", -1)
    epochs = _epochs_done(published_epoch, args, src)
    out = _our_checkpoint("mamp", dict(state), cfg, epochs, src,
                          {"published_args": args, "published_epoch": published_epoch})
    summary = {"heads_checked": heads_checked, "epochs": epochs,
               "mask_ratio": args.get("mask_ratio"), "tau": args.get("motion_aware_tau")}
    return out, summary


def _import_stars(src: Path, cfg: ModelConfig, predictor_dim: int) -> tuple[dict, dict]:
    published = checkpoint.safe_torch_load(src)
    if not isinstance(published, dict) or not any(
            isinstance(k, str) and k.startswith(ENCODER_PREFIX) for k in published):
        raise UserError(f"{src}: not a STARS checkpoint: expected a state dict with "
                        f"'{ENCODER_PREFIX}*' keys (use --format mamp for MAMP weights)")
    queue = published.get("queue")
    if not isinstance(queue, torch.Tensor) or queue.dim() != 2 or queue.shape[0] != cfg.dim:
        shape = tuple(queue.shape) if isinstance(queue, torch.Tensor) else None
        raise UserError(f"{src}: queue has shape {shape} in the file; expected "
                        f"(model.dim, queue size) = ({cfg.dim}, K), the release's layout")
    queue_size = queue.shape[1]
    tune = TuneConfig(predictor_dim=predictor_dim, queue_size=queue_size)
    state = _stars_from_published(published)
    _check_state(state, _expected_shapes(lambda: STARS(cfg, tune)), src, _stars_published_name)
    out = _our_checkpoint("stars", state, cfg, 0, src,
                          {"predictor_dim": predictor_dim, "queue_size": queue_size})
    return out, {"predictor_dim": predictor_dim, "queue_size": queue_size}


def import_weights(fmt: Literal["mamp", "stars"], src: str | Path, dst: str | Path,
                   model_cfg: ModelConfig, predictor_dim: int = 4096) -> dict:
    """Check a published checkpoint against `model_cfg` (and, for STARS, the head width
    `predictor_dim` = tune.predictor_dim) and write it in our schema at `dst`: kind "mamp"
    (model = MAMP state dict) or "stars" (model = STARS state dict). Atomic; nothing is
    written if any check fails. Returns a summary for the CLI."""
    src, dst = Path(src), Path(dst)
    if fmt == "mamp":
        out, summary = _import_mamp(src, model_cfg)
    elif fmt == "stars":
        out, summary = _import_stars(src, model_cfg, predictor_dim)
    else:
        raise UserError(f"unknown weights format {fmt!r}: must be 'mamp' or 'stars'")
    checkpoint.save(dst, out)
    return {"format": fmt, "source": str(src), "written": str(dst), "kind": out["kind"],
            "tensors": len(out["model"]), **summary}


# ----------------------------------------------------------------------- export


def _ours(ckpt: str | Path | dict, kind: str) -> dict:
    obj = ckpt if isinstance(ckpt, dict) else checkpoint.load(ckpt)
    if obj.get("kind") != kind:
        raise UserError(f"{ckpt if not isinstance(ckpt, dict) else 'checkpoint'}: expected one "
                        f"of our '{kind}' checkpoints, found kind {obj.get('kind')!r}")
    return obj


def _save_published(obj: Any, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        torch.save(obj, tmp)


def export_mamp(ckpt: str | Path | dict, dst: str | Path) -> None:
    """Our "mamp" checkpoint -> the release's layout {"model", "epoch", "args"}. Optimizer and
    scaler are left out: ours do not match the release's parameter groups, and the release
    restores them only when present."""
    obj = _ours(ckpt, "mamp")
    m = obj["config"]["model"]
    pretrain = obj["config"].get("pretrain", {})
    model_args = {"dim_in": 3, "dim_feat": m["dim"], "decoder_dim_feat": m["decoder_dim"],
                  "depth": m["depth"], "decoder_depth": m["decoder_depth"],
                  "num_heads": m["heads"], "mlp_ratio": m["mlp_ratio"],
                  "num_frames": m["frames"], "num_joints": m["joints"], "patch_size": 1,
                  "t_patch_size": m["t_patch"], "qkv_bias": True, "norm_skes_loss": True}
    args = argparse.Namespace(model="model_mamp.transformer.Transformer", model_args=model_args,
                              mask_ratio=pretrain.get("mask_ratio"),
                              motion_aware_tau=pretrain.get("tau"))
    _save_published({"model": obj["model"], "epoch": obj["epoch"] - 1, "args": args}, dst)


def export_stars(ckpt: str | Path | dict, dst: str | Path) -> None:
    """Our "stars" checkpoint (a STARS state dict) -> the release's plain state dict."""
    _save_published(_stars_to_published(_ours(ckpt, "stars")["model"]), dst)
