"""Optimizer parameter groups: weight-decay sets, layer-wise lr decay, frozen blocks.

Usage::

    groups = decay_groups(mamp, 0.05, params.pretrain.decay_exempt)   # pretraining
    groups = tuning_param_groups(stars, params.tune, params.model.depth)  # freezes the rest
    groups = layer_decay_groups(classifier, depth, 0.8, 0.05)         # fine-tuning: all layers
    fit(model, step_fn, groups, ...)                                # pipeline.training.loop
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.core.config import TuneConfig

# The embeddings and the mask token (MAMP and its decoder): exempt under "bias_norm_embed".
EMBEDDINGS = ("temp_embed", "pos_embed", "mask_token", "decoder_temp_embed",
              "decoder_pos_embed")


def decay_exempt(name: str, p: nn.Parameter, exempt: str) -> bool:
    """Whether `p` gets no weight decay under `exempt` (pretrain/tune.decay_exempt):
    "none"; "bias_norm": biases and every tensor with ndim <= 1 (MAE/MAMP, the release);
    "bias_norm_embed": those and the embeddings and mask token."""
    if exempt == "none":
        return False
    if p.ndim <= 1 or name.endswith(".bias"):
        return True
    return exempt == "bias_norm_embed" and name in EMBEDDINGS


def decay_groups(model: nn.Module, weight_decay: float,
                 exempt: str = "bias_norm") -> list[dict[str, Any]]:
    """Decay / no-decay groups over the trainable parameters only (see `decay_exempt`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if decay_exempt(name, p, exempt) else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def layer_of(name: str, depth: int) -> int:
    """Layer id for lr decay (MAE/BEiT numbering): embeddings 0, block i -> i + 1, final
    norm and head depth + 1. Block i thus gets decay ** (depth - i)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("norm.", "head.")):
        return depth + 1
    return 0


def layer_decay_groups(model: nn.Module, depth: int, layer_decay: float, weight_decay: float,
                       first_layer: int = 0, exempt: str = "bias_norm") -> list[dict]:
    """AdamW groups with layer-wise lr decay (BEiT/MAE `param_groups_lrd`) over the layers
    `first_layer`..depth + 1 (`layer_of`); parameters of lower layers are frozen
    (requires_grad False), so no gradient is computed for them. A parameter of layer l gets
    lr_scale layer_decay ** (depth + 1 - l); no weight decay on the tensors `exempt` names
    (`decay_exempt`). Each group carries `lr_scale` (which
    `pipeline.training.loop.fit` multiplies by the scheduled lr), `layer`, `head` and `names`.
    """
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, p in model.named_parameters():
        layer = layer_of(name, depth)
        p.requires_grad_(layer >= first_layer)
        if layer < first_layer:
            continue
        is_head = name.startswith("head.")
        skip_decay = decay_exempt(name, p, exempt)
        key = (layer, is_head, skip_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "layer": layer, "head": is_head,
                           "lr_scale": layer_decay ** (depth + 1 - layer),
                           "weight_decay": 0.0 if skip_decay else weight_decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def tuning_param_groups(model: nn.Module, cfg: TuneConfig, depth: int) -> list[dict]:
    """Freeze all but the tuned part of `model` and return AdamW parameter groups.

    Tuned: the top `cfg.tuned_blocks` blocks (-1: blocks depth/2 .. depth-1, the paper's
    "second half"), the final norm and the head; `cfg.full` tunes every block and the
    embeddings. The rest gets requires_grad False (the release meant to do this but wrote
    `required_grad`). Block i gets lr cfg.lr * cfg.layer_decay ** (depth - i); norm and head
    cfg.lr; weight decay cfg.weight_decay except on the tensors `cfg.decay_exempt` names
    (`layer_decay_groups`; each group's `lr` is its initial value).
    """
    n_tuned = depth if cfg.full else (depth // 2 if cfg.tuned_blocks < 0 else cfg.tuned_blocks)
    first = 0 if cfg.full else depth - n_tuned + 1
    groups = layer_decay_groups(model, depth, cfg.layer_decay, cfg.weight_decay, first,
                                exempt=cfg.decay_exempt)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return groups


def set_head_only(groups: list[dict], head_only: bool) -> None:
    """Head warm-up switch (the release's 20-epoch variant), flipped at epoch boundaries.

    While on, only the head's groups require gradients: the encoder's groups stay in the
    optimizer (build it with the switch off) but get no gradient, so AdamW skips them (no
    update, no weight decay, moments untouched until they join) and their backward pass is
    not computed. Under DDP this needs find_unused_parameters, which leaves the gradients of
    globally unused parameters at None.
    """
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(g["head"] or not head_only)
