"""MAMP: token/keep counts, motion-aware masking, seed-only randomness, masked-only loss,
published decoder names, FLOP count, and a tiny overfit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pipeline.core.config import ModelConfig
from pipeline.core.errors import ConfigError
from pipeline.models.encoder import Encoder
from pipeline.models.mamp import MAMP

TINY = ModelConfig(depth=2, dim=16, heads=2, frames=16, t_patch=4, joints=5,
                   decoder_depth=1, decoder_dim=16, decoder_heads=2)
PAPER = ModelConfig(depth=8, dim=256, heads=8, frames=120, t_patch=4, joints=25,
                    decoder_depth=3, decoder_dim=256, decoder_heads=8)


def _x(n: int, cfg: ModelConfig = TINY, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cfg.actors, cfg.frames, cfg.joints, 3, generator=g)


def test_token_and_kept_counts_match_the_release():
    with torch.device("meta"):
        paper = MAMP(PAPER, mask_ratio=0.9, tau=0.8)
        default = MAMP(ModelConfig(), mask_ratio=0.9, tau=0.8)
    assert (paper.num_tokens, paper.num_keep) == (750, 74)           # int(74.999...)
    assert (default.num_tokens, default.num_keep) == (250, 24)       # int(24.999...)


def test_every_sequence_masks_exactly_the_configured_count():
    model = MAMP(ModelConfig(), mask_ratio=0.9, tau=0.8)
    x = _x(4, ModelConfig())
    x[1, 1] = 0                                                      # an absent actor too
    mask, ids_keep, ids_restore = model.motion_aware_mask(x, torch.arange(4))
    assert mask.shape == (8, 250)
    assert torch.all(mask.sum(dim=1) == 250 - 24)
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)           # kept tokens are unmasked
    assert torch.all(torch.sort(ids_restore, dim=1).values == torch.arange(250))


def test_motion_aware_masking_masks_moving_joints_more_often_than_uniform():
    cfg = ModelConfig()                                               # 10 x 25 tokens
    N, T, V = 64, cfg.frames, cfg.joints
    x = torch.zeros(N, cfg.actors, T, V, 3)
    moving = torch.arange(V) < V // 2
    steps = torch.arange(T, dtype=torch.float32)[:, None, None] * 0.05
    x[:, :, :, moving] = steps * torch.tensor([1.0, 0.5, -0.3])      # constant velocity
    x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(N) + 1000

    def frequency(tau: float) -> tuple[float, float]:
        mask, _, _ = MAMP(cfg, 0.9, tau).motion_aware_mask(x, seeds)
        mask = mask.reshape(N * cfg.actors, T // cfg.t_patch, V)
        return mask[..., moving].mean().item(), mask[..., ~moving].mean().item()

    aware_moving, aware_static = frequency(0.8)
    uniform_moving, uniform_static = frequency(0.0)
    assert aware_moving - aware_static > 0.08                         # ~0.99 vs ~0.82
    assert abs(uniform_moving - uniform_static) < 0.02                # ~0.90 vs ~0.90
    assert aware_moving > uniform_moving + 0.04


def test_same_seeds_give_the_same_masks_and_a_split_batch_gives_the_same_per_sample_masks():
    model = MAMP(TINY, 0.75, 0.8)
    x, seeds = _x(6), torch.tensor([5, 9, 11, 3, 7, 2])
    whole, _, _ = model.motion_aware_mask(x, seeds)
    again, _, _ = model.motion_aware_mask(x, seeds)
    first, _, _ = model.motion_aware_mask(x[:2], seeds[:2])
    rest, _, _ = model.motion_aware_mask(x[2:], seeds[2:])
    other, _, _ = model.motion_aware_mask(x, seeds + 100)
    assert torch.equal(whole, again)
    assert torch.equal(whole, torch.cat([first, rest]))
    assert not torch.equal(whole, other)


def test_masking_does_not_touch_the_global_rng():
    model = MAMP(TINY, 0.75, 0.8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.motion_aware_mask(_x(2), torch.arange(2))
    assert torch.equal(torch.rand(3), expected)


def test_motion_target_is_next_frame_difference_normalised_per_token():
    model = MAMP(TINY, 0.75, 0.8)
    x = _x(2)
    target = model.motion_target(x)                                   # (N*M, L, 12)
    assert target.shape == (4, 20, 12)
    # token (t'=1, v=3) of actor 1 of sample 0 = frames 4..7 of joint 3, xyz per frame
    motion = torch.zeros_like(x)
    motion[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    raw = motion[0, 1, 4:8, 3].reshape(12)
    expected = (raw - raw.mean()) / (raw.var() + 1e-6).sqrt()
    torch.testing.assert_close(target[1, 1 * 5 + 3], expected)
    # the last frame has no next frame: its motion is 0 (the last token's last 3 values)
    last = motion[0, 0, 12:16, 4].reshape(12)
    assert torch.all(last[-3:] == 0)


def test_loss_counts_masked_tokens_only():
    torch.manual_seed(0)
    model = MAMP(TINY, 0.75, 0.8)
    x, seeds = _x(2), torch.arange(2)
    latent, mask, ids_restore = model.forward_encoder(x, seeds)
    pred = model.forward_decoder(latent, ids_restore).detach()
    target = model.motion_target(x)
    loss = model.forward_loss(target, pred, mask)
    visible = (mask == 0).nonzero()[0]
    masked = (mask == 1).nonzero()[0]
    t_vis, t_mask = target.clone(), target.clone()
    t_vis[visible[0], visible[1]] += 10.0
    t_mask[masked[0], masked[1]] += 10.0
    assert model.forward_loss(t_vis, pred, mask) == loss
    assert model.forward_loss(t_mask, pred, mask) > loss
    assert model(x, seeds).dim() == 0


def test_every_parameter_gets_a_gradient():
    model = MAMP(TINY, 0.75, 0.8)
    model(_x(2), torch.arange(2)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_decoder_names_match_the_release_and_the_encoder_keys_stay_top_level():
    model = MAMP(TINY, 0.75, 0.8)
    state = model.state_dict()
    Tp, V, Dd = 4, 5, 16
    assert state["mask_token"].shape == (1, 1, Dd)
    assert state["decoder_temp_embed"].shape == (1, Tp, 1, Dd)
    assert state["decoder_pos_embed"].shape == (1, 1, V, Dd)
    assert state["decoder_embed.weight"].shape == (Dd, 16)
    assert state["decoder_pred.weight"].shape == (4 * 3, Dd)
    assert "decoder_blocks.0.attn.qkv.weight" in state and "decoder_norm.weight" in state
    encoder = Encoder(TINY)
    encoder.load_state_dict({k: state[k] for k in encoder.state_dict()})
    x = _x(2)
    torch.testing.assert_close(encoder.forward_features(x), model.forward_features(x))


@pytest.mark.slow                         # ~2 s on an idle core, 5-10 s on the shared machine
def test_tiny_model_overfits_eight_samples():
    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, dim=32, heads=2, frames=16, t_patch=4, joints=5,
                      decoder_depth=1, decoder_dim=32, decoder_heads=2)
    model = MAMP(cfg, 0.75, 0.8)
    t = torch.linspace(0, 1, 16)[:, None, None]
    x = torch.randn(8, 2, 1, 5, 3) * torch.sin(6 * t + torch.randn(8, 2, 1, 5, 3))  # smooth
    seeds = torch.arange(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=True)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # tiny ops: threading only adds overhead (~2 s here)
    try:
        for _ in range(400):
            loss = model(x, seeds)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < losses[0] / 10


def test_a_mask_ratio_that_keeps_no_token_is_a_config_error():
    with pytest.raises(ConfigError, match=r"pretrain.mask_ratio: 0.95 keeps 0 of 10 tokens"):
        MAMP(replace(TINY, frames=8), mask_ratio=0.95)
