"""MAMP: masked motion prediction (Mao et al., ICCV 2023), the pretraining stage of STARS.

Usage::

    from pipeline.models.mamp import MAMP
    model = MAMP(params.model, params.pretrain.mask_ratio, params.pretrain.tau)
    loss = model(x, seeds)           # x: (N, M, T, V, C), seeds: int64 (N,) -> scalar
    feats = model.forward_features(x)  # the encoder alone, for evaluation

`MAMP` subclasses `Encoder`, so encoder parameters keep their top-level names and the published
MAMP state dict (maoyunyao/MAMP, `model_mamp/transformer.py`) loads with no renaming. Split
into MAE's named steps: patchify, masking, encoder, decoder, loss. The masking noise of each
sample comes only from its seed, so masks do not depend on how a batch is split over processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import ModelConfig
from pipeline.core.errors import ConfigError
from pipeline.models.encoder import Block, Encoder, init_linear_and_norm


class MAMP(Encoder):
    """Encoder + light decoder predicting the motion of masked tokens."""

    def __init__(self, cfg: ModelConfig, mask_ratio: float = 0.9, tau: float = 0.8):
        super().__init__(cfg)
        if self.grid_t < 2:
            raise ConfigError(f"model.frames / model.t_patch = {self.grid_t} is invalid for "
                              f"MAMP: needs at least 2 token time steps to measure motion")
        self.mask_ratio = mask_ratio
        self.tau = tau
        # The release's formula: int(750 * (1 - 0.9)) = 74, because the product is 74.999...
        self.num_keep = int(self.num_tokens * (1 - mask_ratio))
        if not 1 <= self.num_keep < self.num_tokens:
            raise ConfigError(f"pretrain.mask_ratio: {mask_ratio} keeps {self.num_keep} of "
                              f"{self.num_tokens} tokens; must keep at least 1 and mask at "
                              f"least 1 (or raise model.frames / model.joints)")
        Dd = cfg.decoder_dim
        self.decoder_embed = nn.Linear(cfg.dim, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd)
        self.decoder_temp_embed = nn.Parameter(torch.zeros(1, self.grid_t, 1, Dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, self.grid_v, Dd))
        self.decoder_pred = nn.Linear(Dd, cfg.t_patch * 3)           # t_patch frames x xyz
        for p in (self.mask_token, self.decoder_temp_embed, self.decoder_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(init_linear_and_norm)

    # ----------------------------------------------------------------- target

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V, C) -> (B, L, t_patch * C), tokens time-major like the embedding's output."""
        B, T, V, C = x.shape
        u = self.cfg.t_patch
        x = x.reshape(B, T // u, u, V, C)                           # (B, T', u, V, C)
        x = x.permute(0, 1, 3, 2, 4)                                # (B, T', V, u, C)
        return x.reshape(B, (T // u) * V, u * C)                    # (B, L, u*C)

    def motion_target(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, T, V, C) -> (N*M, L, t_patch*C): motion m[t] = x[t+1] - x[t] (last frame 0),
        patched and normalised per token (the release's `norm_skes_loss`: unbiased variance)."""
        N, M, T, V, C = x.shape
        with torch.autocast(x.device.type, enabled=False):  # fp32 target under bf16 autocast
            x = x.float()
            motion = torch.zeros_like(x)
            motion[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
            target = self.patchify(motion.reshape(N * M, T, V, C))  # (N*M, L, u*C)
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            return (target - mean) / (var + 1e-6).sqrt()

    # ---------------------------------------------------------------- masking

    @torch.no_grad()
    def motion_aware_mask(self, x: torch.Tensor, seeds: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choose the tokens to mask; high-motion tokens are masked more often (MAMP §3.3).

        x: (N, M, T, V, C), seeds: (N,) integers. Returns mask (N*M, L) with 1 = masked,
        ids_keep (N*M, K) and ids_restore (N*M, L) (MAE's argsort-of-noise shuffle).
        Per token, motion = mean |segment_t - segment_(t-1)| (segment 0 copies segment 1);
        logits = motion / (max motion of the sequence * tau + 1e-10); the L - K tokens with the
        largest Gumbel-perturbed log-softmax are masked (Gumbel top-k = sampling without
        replacement from softmax(logits)). tau = 0 ranks by the uniform noise alone.
        """
        N, M, T, V, C = x.shape
        NM, L, K = N * M, self.num_tokens, self.num_keep
        # Uniform noise drawn on the CPU from each sample's own seed, then moved to the device.
        u = torch.stack([torch.rand(M, L, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds.tolist()])                  # (N, M, L)
        u = u.reshape(NM, L).to(x.device)
        if self.tau > 0:
            patches = self.patchify(x.reshape(NM, T, V, C).float())  # (N*M, L, u*C)
            patches = patches.reshape(NM, self.grid_t, V, -1)       # (N*M, T', V, u*C)
            diff = (patches[:, 1:] - patches[:, :-1]).abs().mean(dim=-1)  # (N*M, T'-1, V)
            motion = torch.cat([diff[:, :1], diff], dim=1).reshape(NM, L)
            logits = motion / (motion.amax(dim=-1, keepdim=True) * self.tau + 1e-10)
            gumbel = -torch.log(-torch.log(u + 1e-10) + 1e-10)
            score = F.log_softmax(logits, dim=-1) + gumbel          # (N*M, L)
        else:
            score = u
        ids_shuffle = torch.argsort(score, dim=1)                   # ascending: low kept, high masked
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :K]                               # (N*M, K)
        mask = torch.ones(NM, L, device=x.device)
        mask[:, :K] = 0
        mask = torch.gather(mask, 1, ids_restore)                   # back to token order
        return mask, ids_keep, ids_restore

    # ------------------------------------------------------- encoder / decoder

    def forward_encoder(self, x: torch.Tensor, seeds: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible tokens only. -> latent (N*M, K, D), mask (N*M, L), ids_restore."""
        mask, ids_keep, ids_restore = self.motion_aware_mask(x, seeds)
        tokens = self.embed(x)                                      # (N*M, T', V, D)
        NM, Tp, V, D = tokens.shape
        tokens = tokens.reshape(NM, Tp * V, D)                      # (N*M, L, D)
        tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (N*M, K, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(N*M, K, D) visible latents -> (N*M, L, t_patch*3) predicted motion of every token."""
        x = self.decoder_embed(latent)                              # (N*M, K, Dd)
        NM, K, Dd = x.shape
        L = self.num_tokens
        mask_tokens = self.mask_token.to(x.dtype).expand(NM, L - K, Dd)
        x = torch.cat([x, mask_tokens], dim=1)                      # (N*M, L, Dd), shuffled order
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, Dd))  # token order
        x = x.reshape(NM, self.grid_t, self.grid_v, Dd)             # (N*M, T', V, Dd)
        x = x + self.decoder_temp_embed + self.decoder_pos_embed
        x = x.reshape(NM, L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))

    # ------------------------------------------------------------------- loss

    def forward_loss(self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
        """Mean squared error over the masked tokens only. target, pred: (N*M, L, u*C)."""
        with torch.autocast(pred.device.type, enabled=False):  # fp32 loss under autocast
            loss = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (N*M, L) per token
            return (loss * mask).sum() / mask.sum()

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """x: (N, M, T, V, C), seeds: (N,) -> scalar loss."""
        latent, mask, ids_restore = self.forward_encoder(x, seeds)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(self.motion_target(x), pred, mask)
