"""Encoder: token layout, published parameter names, features, attention semantics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pipeline.core.config import ModelConfig
from pipeline.models.encoder import Attention, DropPath, Encoder

TINY = ModelConfig(depth=2, dim=16, heads=2, frames=8, t_patch=4, joints=5,
                   decoder_depth=1, decoder_dim=16, decoder_heads=2)
PAPER = ModelConfig(depth=8, dim=256, heads=8, frames=120, t_patch=4, joints=25,
                    decoder_depth=3, decoder_dim=256, decoder_heads=8)


def test_paper_size_has_750_tokens_and_about_6_3m_parameters():
    enc = Encoder(PAPER)
    tokens = enc.embed(torch.zeros(1, 2, 120, 25, 3))
    assert tokens.shape == (2, 30, 25, 256)
    assert enc.num_tokens == 750
    n = sum(p.numel() for p in enc.parameters())
    assert 6.2e6 < n < 6.4e6


def test_default_config_token_shapes():
    cfg = ModelConfig()
    enc = Encoder(cfg)
    x = torch.randn(3, cfg.actors, cfg.frames, cfg.joints, 3)
    assert enc.embed(x).shape == (6, cfg.frames // cfg.t_patch, cfg.joints, cfg.dim)
    assert enc.forward_tokens(x).shape == (6, 250, cfg.dim)
    assert enc(x).shape == (3, cfg.dim)


def test_parameter_names_and_shapes_match_the_published_encoder():
    state = Encoder(TINY).state_dict()
    D, Tp, V = 16, 2, 5
    expected = {"joints_embed.proj.weight": (D, 3, 4, 1), "joints_embed.proj.bias": (D,),
                "pos_embed": (1, 1, V, D), "temp_embed": (1, Tp, 1, D),
                "norm.weight": (D,), "norm.bias": (D,)}
    for i in range(TINY.depth):
        expected.update({
            f"blocks.{i}.norm1.weight": (D,), f"blocks.{i}.norm1.bias": (D,),
            f"blocks.{i}.attn.qkv.weight": (3 * D, D), f"blocks.{i}.attn.qkv.bias": (3 * D,),
            f"blocks.{i}.attn.proj.weight": (D, D), f"blocks.{i}.attn.proj.bias": (D,),
            f"blocks.{i}.norm2.weight": (D,), f"blocks.{i}.norm2.bias": (D,),
            f"blocks.{i}.mlp.fc1.weight": (4 * D, D), f"blocks.{i}.mlp.fc1.bias": (4 * D,),
            f"blocks.{i}.mlp.fc2.weight": (D, 4 * D), f"blocks.{i}.mlp.fc2.bias": (D,)})
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_init_follows_the_release():
    torch.manual_seed(0)
    enc = Encoder(PAPER)
    assert 0.015 < enc.temp_embed.std().item() < 0.025
    assert 0.015 < enc.pos_embed.std().item() < 0.025
    qkv = enc.blocks[0].attn.qkv
    bound = (6 / (qkv.in_features + qkv.out_features)) ** 0.5          # xavier-uniform
    assert qkv.weight.abs().max().item() <= bound
    assert torch.all(qkv.bias == 0)
    assert torch.all(enc.norm.weight == 1) and torch.all(enc.norm.bias == 0)


def test_sdpa_attention_equals_the_release_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(16, 4)
    x = torch.randn(2, 7, 16)
    B, L, D, H = 2, 7, 16, 4
    q, k, v = attn.qkv(x).reshape(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
    w = ((q @ k.transpose(-2, -1)) * (D // H) ** -0.5).softmax(dim=-1)
    reference = attn.proj((w @ v).transpose(1, 2).reshape(B, L, D))
    torch.testing.assert_close(attn(x), reference, rtol=1e-5, atol=1e-6)


def test_features_are_the_mean_over_actors_time_and_joints_including_absent_actors():
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    x = torch.randn(3, 2, 8, 5, 3)
    x[:, 1] = 0                                                      # second actor absent
    tokens = enc.forward_tokens(x).reshape(3, 2, 10, 16)             # (N, M, L, D)
    feats = enc.forward_features(x)
    torch.testing.assert_close(feats, tokens.mean(dim=(1, 2)))
    assert not torch.allclose(feats, tokens[:, 0].mean(dim=1))       # absent actor counted


def test_actors_are_encoded_independently():
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    x = torch.randn(2, 2, 8, 5, 3)
    y = x.clone()
    y[:, 1] = torch.randn(2, 8, 5, 3)
    a = enc.forward_tokens(x).reshape(2, 2, 10, 16)
    b = enc.forward_tokens(y).reshape(2, 2, 10, 16)
    torch.testing.assert_close(a[:, 0], b[:, 0])


def test_wrong_number_of_frames_is_reported():
    with pytest.raises(ValueError, match="12 frames x 5 joints"):
        Encoder(TINY)(torch.zeros(1, 2, 12, 5, 3))


def test_blocks_are_exposed_for_partial_tuning():
    enc = Encoder(TINY)
    for block in enc.blocks[: TINY.depth // 2]:
        block.requires_grad_(False)
    enc(torch.randn(2, 2, 8, 5, 3)).sum().backward()
    assert enc.blocks[0].attn.qkv.weight.grad is None
    assert enc.blocks[1].attn.qkv.weight.grad is not None


def test_drop_path_off_is_the_plain_residual_block_bit_for_bit():
    """model.drop_path 0 (the default) builds no drop-path layer: the forward pass, even in
    train mode, is exactly x + attn(norm1(x)), then + mlp(norm2(.)), as before it existed."""
    torch.manual_seed(0)
    enc = Encoder(TINY).train()
    assert all(isinstance(b.drop_path, nn.Identity) for b in enc.blocks)
    x = torch.randn(3, 2, 8, 5, 3)
    h = enc.embed(x).reshape(6, -1, 16)
    for b in enc.blocks:
        h = h + b.attn(b.norm1(h))
        h = h + b.mlp(b.norm2(h))
    assert torch.equal(enc.forward_tokens(x), enc.norm(h))


def test_drop_path_draws_the_same_weights_and_only_acts_in_training():
    torch.manual_seed(0)
    same = Encoder(dataclasses.replace(TINY, depth=3))
    torch.manual_seed(0)
    dropping = Encoder(dataclasses.replace(TINY, depth=3, drop_path=0.3))
    assert same.state_dict().keys() == dropping.state_dict().keys()
    assert all(torch.equal(v, dropping.state_dict()[k]) for k, v in same.state_dict().items())
    # rates rise linearly over the blocks from 0, as in the release
    assert isinstance(dropping.blocks[0].drop_path, nn.Identity)
    assert [b.drop_path.p for b in dropping.blocks[1:]] == pytest.approx([0.15, 0.3])
    x = torch.randn(64, 2, 8, 5, 3)
    assert torch.equal(dropping.eval()(x), same.eval()(x))
    assert not torch.equal(dropping.train()(x), same.train()(x))
    # per sequence: the branch is zeroed with probability p, else scaled by 1 / (1 - p)
    branch = torch.ones(4000, 7, 16)
    torch.manual_seed(1)
    out = DropPath(0.3).train()(branch)
    kept = out[:, 0, 0] > 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.03)
