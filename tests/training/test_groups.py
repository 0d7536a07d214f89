"""Parameter groups: the fine-tuning's layer-wise lr decay (MAMP `util/lr_decay.py`)."""

from __future__ import annotations

import pytest

from pipeline.core.config import ModelConfig
from pipeline.models.classifier import Classifier
from pipeline.training.groups import layer_decay_groups

TINY = ModelConfig(depth=3, dim=16, heads=2, frames=8, t_patch=4, joints=5,
                   decoder_depth=1, decoder_dim=16, decoder_heads=2)


def test_fine_tuning_groups_train_everything_with_the_releases_layer_decay():
    model = Classifier(TINY, num_classes=4, hidden=8)
    groups = layer_decay_groups(model, depth=3, layer_decay=0.8, weight_decay=0.05)
    assert all(p.requires_grad for p in model.parameters())
    names = {n: g for g in groups for n in g["names"]}
    assert set(names) == {n for n, _ in model.named_parameters()}
    scale = {n: g["lr_scale"] for n, g in names.items()}
    assert scale["pos_embed"] == scale["joints_embed.proj.weight"] == pytest.approx(0.8 ** 4)
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.8 ** 3)
    assert scale["blocks.2.mlp.fc2.bias"] == pytest.approx(0.8)
    assert scale["norm.weight"] == scale["head.fc1.weight"] == scale["head.bn.bias"] == 1.0
    decay = {n: g["weight_decay"] for n, g in names.items()}
    # as the release: no decay on 1-d parameters only, so the embeddings are decayed
    assert decay["pos_embed"] == decay["temp_embed"] == decay["head.fc2.weight"] == 0.05
    assert decay["head.fc2.bias"] == decay["norm.weight"] == decay["head.bn.weight"] == 0.0
    assert all(g["head"] == all(n.startswith("head.") for n in g["names"]) for g in groups)


def test_layers_below_first_layer_are_frozen():
    model = Classifier(TINY, num_classes=4, hidden=8)
    groups = layer_decay_groups(model, 3, 0.5, 0.0, first_layer=3)
    trained = {n for g in groups for n in g["names"]}
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("blocks.0.", "blocks.1.", "pos_embed")) for n in trained)
    assert any(n.startswith("blocks.2.") for n in trained)
