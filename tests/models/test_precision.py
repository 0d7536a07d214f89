"""Under bf16 autocast (CPU) the numerically sensitive parts still compute in fp32: the queue
similarity and nearest-neighbour choice, the contrastive logits and loss, BatchNorm
statistics, the MAMP target normalisation and loss. Each test records the dtype of every
floating-point op the part runs (a real torch dispatch mode) and checks that autocast was
live by showing an unpinned op in the same setting does run in bf16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.core.config import ModelConfig
from pipeline.models.encoder import Attention
from pipeline.models.mamp import MAMP
from pipeline.models.stars import GlobalBatchNorm1d, NNQueue, nnclr_loss
from pipeline.training.loop import autocast

TINY = ModelConfig(depth=2, dim=16, heads=2, frames=8, t_patch=4, decoder_depth=1,
                   decoder_dim=16, decoder_heads=2)


class OpDtypes(TorchDispatchMode):
    """Records (op, dtype) of every floating-point tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.seen.append((str(func), t.dtype))
        return out


def run_bf16(fn, *args):
    """fn(*args) under CPU bf16 autocast -> (result, dtypes of its float ops)."""
    with autocast("cpu", "bf16"), OpDtypes() as rec:
        out = fn(*args)
    return out, rec.seen


def assert_fp32(seen):
    assert seen, "no op recorded"
    low = [(op, dt) for op, dt in seen if dt != torch.float32]
    assert not low, f"ops below fp32 under bf16 autocast: {low[:5]}"


def test_autocast_is_live_on_cpu_for_unpinned_ops():
    attn = Attention(16, 2)
    out, seen = run_bf16(attn, torch.randn(2, 5, 16))
    assert out.dtype == torch.bfloat16 and any(dt == torch.bfloat16 for _, dt in seen)


def test_fp32_precision_is_a_no_op():
    with autocast("cpu", "fp32"):
        assert Attention(16, 2)(torch.randn(2, 5, 16)).dtype == torch.float32


def test_queue_similarity_and_nearest_choice_stay_fp32():
    torch.manual_seed(0)
    queue = NNQueue(64, 16)
    queue.queue_id[:] = torch.arange(64)
    z = F.normalize(torch.randn(8, 16), dim=1)
    picked, seen = run_bf16(queue.nearest, z, torch.arange(100, 108))
    assert_fp32(seen)
    assert picked.dtype == torch.float32
    assert torch.equal(picked, queue.nearest(z, torch.arange(100, 108)))   # same choice


def test_contrastive_logits_and_loss_stay_fp32():
    nn_z, p = (F.normalize(torch.randn(8, 16), dim=1) for _ in range(2))
    loss, seen = run_bf16(nnclr_loss, nn_z.bfloat16(), p.bfloat16(), 0.07)
    assert_fp32([s for s in seen if "_to_copy" not in s[0]])   # the casts up are the pin
    assert loss.dtype == torch.float32


def test_batchnorm_statistics_stay_fp32():
    bn = GlobalBatchNorm1d(16).train()
    y, seen = run_bf16(bn, torch.randn(8, 16).bfloat16())
    assert_fp32([s for s in seen if "_to_copy" not in s[0]])
    assert y.dtype == bn.running_mean.dtype == bn.running_var.dtype == torch.float32


def test_mamp_target_normalisation_and_loss_stay_fp32():
    torch.manual_seed(0)
    model = MAMP(TINY)
    x = torch.randn(2, 2, 8, 25, 3).bfloat16()          # even a bf16 input: fp32 target
    target, seen = run_bf16(model.motion_target, x)
    assert_fp32([s for s in seen if "_to_copy" not in s[0]])
    assert torch.equal(target, model.motion_target(x.float()))
    pred = torch.randn_like(target).bfloat16()
    mask = (torch.rand(target.shape[:2]) > 0.5).float()
    loss, seen = run_bf16(model.forward_loss, target, pred, mask)
    assert_fp32([s for s in seen if "_to_copy" not in s[0]])
    assert loss.dtype == torch.float32


def test_whole_mamp_loss_is_fp32_while_its_matmuls_are_bf16():
    torch.manual_seed(0)
    model = MAMP(TINY)
    loss, seen = run_bf16(model, torch.randn(2, 2, 8, 25, 3), torch.tensor([1, 2]))
    assert loss.dtype == torch.float32
    assert any("addmm" in op and dt == torch.bfloat16 for op, dt in seen)
