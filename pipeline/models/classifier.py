"""The fine-tuning model: the encoder plus the release's classification head, trained end to end.

Usage::

    model = Classifier(params.model, num_classes=60, dropout=0.3, hidden=2048)
    model.load_encoder(mamp_or_stars_state)      # encoder keys; decoder / NNCLR head ignored
    logits = model(x)                            # x (N, M, T, V, C) -> (N, classes)

The head is the release's `ActionHeadFinetune` (maoyunyao/MAMP `model/transformer.py`): dropout
on the final-LayerNorm tokens, mean over time, the joints kept side by side (V * D values),
mean over actors, then Linear(V * D, hidden) - BatchNorm - ReLU - Linear(hidden, classes).
Unlike the linear probe's feature it does not average the joints away. Like `MAMP` and `STARS`
it subclasses `Encoder`, so the encoder keeps its published top-level names beside
`head.{fc1,bn,fc2}.*` (the release's), which the layer-wise lr decay relies on.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipeline.core.config import ModelConfig
from pipeline.models.encoder import Encoder, init_linear_and_norm
from pipeline.models.stars import GlobalBatchNorm1d


class FinetuneHead(nn.Module):
    """(N, M, T', V, D) tokens -> (N, classes) logits."""

    def __init__(self, dim: int, joints: int, num_classes: int, dropout: float, hidden: int):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(dim * joints, hidden)
        # statistics over the global batch, so 1 and N processes train the same head
        self.bn = GlobalBatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        N, M, _, V, D = tokens.shape                              # (N, M, T', V, D)
        x = self.dropout(tokens).mean(dim=2)                      # over time: (N, M, V, D)
        x = x.reshape(N, M, V * D).mean(dim=1)                    # over actors: (N, V * D)
        return self.fc2(self.relu(self.bn(self.fc1(x))))


class Classifier(Encoder):
    """Encoder (with `drop_path` stochastic depth) + `FinetuneHead`."""

    def __init__(self, model_cfg: ModelConfig, num_classes: int, dropout: float = 0.3,
                 hidden: int = 2048, drop_path: float | None = None):
        if drop_path is not None:   # the fine-tuning rate, leaving the shared model params alone
            model_cfg = dataclasses.replace(model_cfg, drop_path=drop_path)
        super().__init__(model_cfg)
        self.head = FinetuneHead(model_cfg.dim, model_cfg.joints, num_classes, dropout, hidden)
        self.head.apply(init_linear_and_norm)

    def load_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """Load every encoder key of `state` (a MAMP or STARS checkpoint's model); its other
        keys (decoder, mask token, NNCLR head and queue) are ignored, the head stays new."""
        keys = [k for k in self.state_dict() if not k.startswith("head.")]
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(f"encoder keys missing from the state dict: {missing[:5]}")
        self.load_state_dict({k: state[k] for k in keys}, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, M = x.shape[:2]
        tokens = self.forward_tokens(x)                           # (N*M, T'*V, D)
        return self.head(tokens.reshape(N, M, self.grid_t, self.grid_v, -1))
