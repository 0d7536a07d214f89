"""STARS tuning: nearest-neighbour contrastive learning (NNCLR) on top of a MAMP encoder.

Usage::

    model = STARS(params.model, params.tune)
    model.load_encoder(mamp_state)                   # pretrained encoder keys; decoder ignored
    loss = model(x, index)                           # x (N, M, T, V, C), index (N,) dataset rows

Each sample's prediction p is pulled toward NN(z), the most similar *other* sample in a queue
of past projections, against the predictions of the rest of the (global) batch (STARS paper
section 3.2; NNCLR, Dwibedi et al. 2021). Layout and key names follow the public release:
encoder keys at top level, ``head.projector.0.*``, ``head.predictor.{0,1,3}.*``; the buffers
``queue``, ``queue_id``, ``queue_ptr`` live under ``queue.`` and the queue is (K, D) here,
(D, K) in the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core import dist
from pipeline.core.config import ModelConfig, TuneConfig
from pipeline.models.encoder import Encoder


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the global batch of all processes.

    W processes then compute exactly what one process computes with the whole batch (up to
    float summation order). torch's SyncBatchNorm refuses CPU tensors, hence this small
    version: the sums are gathered with autograd, so the backward pass matches too. Parameter
    and buffer names are BatchNorm1d's, so published weights load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # statistics in float32, also under bf16 autocast
        if not self.training or dist.world_size() == 1:
            return super().forward(x)
        n = dist.all_gather_no_grad(x.new_tensor([x.shape[0]])).sum()       # global batch size
        mean = dist.all_gather_with_grad(x.sum(0, keepdim=True)).sum(0) / n              # (C,)
        var = dist.all_gather_with_grad(((x - mean) ** 2).sum(0, keepdim=True)).sum(0) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, m)
            self.running_var.lerp_(var * n / (n - 1), m)  # unbiased, as BatchNorm1d keeps it
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


class STARSHead(nn.Module):
    """Projector BN(D) and predictor Linear-BN-ReLU-Linear on the pooled feature (release)."""

    def __init__(self, dim: int, predictor_dim: int = 4096) -> None:
        super().__init__()
        self.projector = nn.Sequential(GlobalBatchNorm1d(dim))
        self.predictor = nn.Sequential(
            nn.Linear(dim, predictor_dim, bias=False),
            GlobalBatchNorm1d(predictor_dim),
            nn.ReLU(inplace=True),
            nn.Linear(predictor_dim, dim),
        )
        for m in self.predictor:
            if isinstance(m, nn.Linear):  # MAE/MAMP-style init, as the encoder's own linears
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (N, D) -> (z, p), both L2-normalised (N, D); the predictor reads the raw
        projector output, as in NNCLR."""
        y = self.projector(f)
        return F.normalize(y, dim=1), F.normalize(self.predictor(y), dim=1)


class NNQueue(nn.Module):
    """FIFO of past projections z with the dataset row each came from.

    Starts as in the release: K random unit vectors with id -1 ("empty"). `nearest` ranks
    empty slots below every filled one, so they serve as (random) positives only while a
    sample has no other candidate, i.e. in the very first step. A sample is never its own
    positive, however many copies of it the queue holds.
    """

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)  # same queue on every process without a broadcast
        self.register_buffer("queue", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("queue_id", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """z (N, D) normalised, ids (N,) -> the most similar entry of another sample (N, D).
        Similarities in float32 even under bf16 autocast, so near-ties rank as in fp32."""
        with torch.autocast(z.device.type, enabled=False):
            sim = z.to(self.queue.dtype) @ self.queue.T                                # (N, K)
        sim = sim - 4.0 * (self.queue_id == -1)  # cosine is in [-1, 1]: empties rank last
        sim = sim.masked_fill(self.queue_id[None, :] == ids[:, None], float("-inf"))
        return self.queue[sim.argmax(dim=1)]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """Write z (N, D) and ids (N,) at the pointer, wrapping around; when N > K only the
        last K survive (they would overwrite the earlier ones anyway)."""
        n, k = z.shape[0], self.queue.shape[0]
        ptr = int(self.queue_ptr)
        keep = torch.arange(max(0, n - k), n, device=z.device)
        slots = (ptr + keep) % k                                   # distinct, in FIFO order
        self.queue[slots] = z[keep].to(self.queue.dtype)
        self.queue_id[slots] = ids[keep]
        self.queue_ptr[0] = (ptr + n) % k


def nnclr_loss(nn_z: torch.Tensor, p_all: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of NN(z_i) . p_j / t: rows are this process's samples, columns the
    predictions of the global batch (negatives), positives where j is sample i itself."""
    n = nn_z.shape[0]
    with torch.autocast(nn_z.device.type, enabled=False):  # logits and loss in fp32 always
        logits = nn_z.float() @ p_all.float().T / temperature                 # (N, W * N)
        labels = torch.arange(n, device=nn_z.device) + dist.rank() * n
        return F.cross_entropy(logits, labels)


class STARS(Encoder):
    """The encoder plus the NNCLR head and queue; forward returns the tuning loss.

    Like `MAMP`, it subclasses `Encoder`, so the state dict (and hence every checkpoint the
    training loop writes) holds the encoder under its published top-level names, next to
    `head.*` and `queue.{queue,queue_id,queue_ptr}`: an `Encoder` loads the encoder keys of
    it unchanged, as it does from a MAMP checkpoint.
    """

    def __init__(self, model_cfg: ModelConfig, cfg: TuneConfig) -> None:
        super().__init__(model_cfg)
        self.head = STARSHead(model_cfg.dim, cfg.predictor_dim)
        self.queue = NNQueue(cfg.queue_size, model_cfg.dim, seed=cfg.seed)
        self.temperature = cfg.temperature

    def load_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """Load the encoder part from a state dict holding every encoder key (e.g. a MAMP
        one); keys of other modules (decoder_*, mask_token, head, queue) are ignored."""
        keys = [k for k in self.state_dict() if not k.startswith(("head.", "queue."))]
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(f"encoder keys missing from the state dict: {missing[:5]}")
        self.load_state_dict({k: state[k] for k in keys}, strict=False)

    def forward(self, x: torch.Tensor, index: torch.Tensor,
                x_view: torch.Tensor | None = None) -> torch.Tensor:
        """x, x_view (N, M, T, V, C); index (N,) dataset rows -> scalar loss.

        x_view None means both views are x itself. The release runs the second view without
        gradients, so then one forward serves both exactly: p1 = p0.detach(), NN(z1) = NN(z0),
        and the symmetric loss 0.5 * (l(NN(z1), p0) + l(NN(z0), p1)) keeps its value and its
        (halved) gradient, which matters for gradient clipping.
        """
        z0, p0 = self.head(self.forward_features(x))                             # (N, D) x 2
        nn0 = self.queue.nearest(z0, index)
        p0_all = dist.all_gather_with_grad(p0)                                   # (W * N, D)
        if x_view is None:
            half = nnclr_loss(nn0, p0_all, self.temperature)
            loss = 0.5 * (half + half.detach())
        else:
            with torch.no_grad():
                z1, p1 = self.head(self.forward_features(x_view))
            nn1 = self.queue.nearest(z1, index)
            p1_all = dist.all_gather_no_grad(p1)
            loss = 0.5 * (nnclr_loss(nn1, p0_all, self.temperature)
                          + nnclr_loss(nn0, p1_all, self.temperature))
        # Every process enqueues the global batch in the same order: queues stay identical.
        self.queue.enqueue(dist.all_gather_no_grad(z0.detach()), dist.all_gather_no_grad(index))
        return loss
