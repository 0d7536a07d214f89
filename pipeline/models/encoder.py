"""The skeleton transformer encoder shared by MAMP pretraining, STARS tuning and evaluation.

Usage::

    from pipeline.models.encoder import Encoder
    enc = Encoder(params.model)
    feats = enc.forward_features(x)      # x: (N, M, T, V, C) -> (N, D)

Parameter names and shapes are those of the published MAMP code (maoyunyao/MAMP,
`model/transformer.py`), so its checkpoints load with no renaming:
`joints_embed.proj.*`, `pos_embed`, `temp_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}.*`, `norm.*`. Reads bottom-up: attention, MLP, block, embedding, encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import ModelConfig


def init_linear_and_norm(m: nn.Module) -> None:
    """The release's init: xavier-uniform Linear weights, zero biases, unit LayerNorm.
    (The Conv2d embedding keeps PyTorch's default init, as in the release.)"""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (global, no mask), fused through SDPA."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape                                          # B sequences, L tokens
        H = self.heads
        qkv = self.qkv(x).view(B, L, 3, H, D // H)                 # (B, L, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)             # 3 x (B, H, L, D/H)
        y = F.scaled_dot_product_attention(q, k, v)                # (B, H, L, D/H), scale (D/H)^-0.5
        y = y.transpose(1, 2).reshape(B, L, D)                     # heads side by side: (B, L, D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (timm): in training, zero a residual branch for a random `p` of the
    samples and scale the kept ones by 1 / (1 - p); the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep


class Block(nn.Module):
    """Pre-LN transformer block; `drop_path` > 0 adds stochastic depth to both residual
    branches (fine-tuning), 0 leaves a plain identity there, as the release does."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class SkeletonEmbed(nn.Module):
    """One token per joint per `t_patch` frames: Conv2d with kernel = stride = (t_patch, 1)."""

    def __init__(self, dim: int, t_patch: int, in_channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=(t_patch, 1), stride=(t_patch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)                                  # (B, T, V, C) -> (B, C, T, V)
        x = self.proj(x)                                           # (B, D, T', V), T' = T / t_patch
        return x.permute(0, 2, 3, 1)                               # (B, T', V, D)


class Encoder(nn.Module):
    """Skeleton ViT: joint x t_patch-frame tokens, learned temporal and joint embeddings, pre-LN
    blocks with full attention over all T' x V tokens of one actor, final LayerNorm.
    Actors are encoded separately (folded into the batch), as in the release."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.frames % cfg.t_patch == 0, "model.frames must be a multiple of model.t_patch"
        self.cfg = cfg
        self.grid_t = cfg.frames // cfg.t_patch                     # T'
        self.grid_v = cfg.joints                                    # V
        self.num_tokens = self.grid_t * self.grid_v                 # L
        D = cfg.dim
        self.joints_embed = SkeletonEmbed(D, cfg.t_patch)
        # stochastic depth rises linearly over the blocks, 0 at the first (the release's rule)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(D, cfg.heads, cfg.mlp_ratio, rates[i])
                                    for i in range(cfg.depth))
        self.norm = nn.LayerNorm(D)
        self.temp_embed = nn.Parameter(torch.zeros(1, self.grid_t, 1, D))   # one per time step
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.grid_v, D))    # one per joint
        nn.init.trunc_normal_(self.temp_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_linear_and_norm)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, T, V, C) -> (N*M, T', V, D) tokens with temporal and joint embeddings added."""
        N, M, T, V, C = x.shape
        if (T, V) != (self.cfg.frames, self.cfg.joints):
            raise ValueError(f"input has {T} frames x {V} joints; the model is configured for "
                             f"{self.cfg.frames} x {self.cfg.joints} (model.frames, model.joints)")
        x = x.reshape(N * M, T, V, C)                               # actors folded into the batch
        x = self.joints_embed(x)                                    # (N*M, T', V, D)
        return x + self.temp_embed + self.pos_embed

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, T, V, C) -> (N*M, L, D) final-LayerNorm tokens, L = T' * V (time-major)."""
        x = self.embed(x)
        NM, Tp, V, D = x.shape
        x = x.reshape(NM, Tp * V, D)                                # (N*M, L, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, T, V, C) -> (N, D): mean of the final tokens over actors, time and joints.
        Absent actors (all-zero input) are included in the mean, as in the release's
        `ActionHeadLinprobe` (mean over dims M, T', V), so published features are reproduced."""
        N, M = x.shape[:2]
        tokens = self.forward_tokens(x)                             # (N*M, L, D)
        return tokens.reshape(N, M * self.num_tokens, -1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
