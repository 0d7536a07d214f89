"""The fine-tuning model: the release's head (pooling, dropout, MLP) on the encoder tokens."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import ModelConfig, TuneConfig
from pipeline.models.classifier import Classifier
from pipeline.models.mamp import MAMP
from pipeline.models.stars import STARS

TINY = ModelConfig(depth=2, dim=16, heads=2, frames=8, t_patch=4, joints=5,
                   decoder_depth=1, decoder_dim=16, decoder_heads=2)


def test_head_keeps_joints_apart_and_averages_time_and_actors():
    torch.manual_seed(0)
    model = Classifier(TINY, num_classes=7, dropout=0.0, hidden=32).eval()
    assert model.head.fc1.in_features == 5 * 16                       # V * D, as the release
    assert {k for k in model.state_dict() if k.startswith("head.")} == {
        f"head.{m}.{p}" for m in ("fc1", "fc2") for p in ("weight", "bias")} | {
        f"head.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var",
                                 "num_batches_tracked")}
    x = torch.randn(3, 2, 8, 5, 3)
    tokens = model.forward_tokens(x).reshape(3, 2, 2, 5, 16)          # (N, M, T', V, D)
    pooled = tokens.mean(dim=2).reshape(3, 2, 80).mean(dim=1)         # (N, V * D)
    h = model.head
    expected = h.fc2(torch.relu(h.bn(h.fc1(pooled))))
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_head_dropout_acts_on_tokens_in_training_only():
    torch.manual_seed(0)
    model = Classifier(TINY, num_classes=4, dropout=0.5, hidden=8)
    x = torch.randn(4, 2, 8, 5, 3)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_drop_path_is_the_fine_tuning_rate_without_touching_the_model_params():
    model = Classifier(TINY, num_classes=4, drop_path=0.3)
    assert model.blocks[-1].drop_path.p == pytest.approx(0.3)
    assert TINY.drop_path == 0.0


@pytest.mark.parametrize("source", ["mamp", "stars"])
def test_loads_the_encoder_of_a_mamp_or_stars_checkpoint_and_keeps_a_new_head(source):
    torch.manual_seed(1)
    pretrained = (MAMP(TINY, mask_ratio=0.5) if source == "mamp" else
                  STARS(TINY, TuneConfig(predictor_dim=8, queue_size=4))).state_dict()
    torch.manual_seed(2)
    model = Classifier(TINY, num_classes=4, hidden=8)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    model.load_encoder(pretrained)
    for k, v in model.state_dict().items():
        assert torch.equal(v, head[k] if k.startswith("head.") else pretrained[k]), k
    with pytest.raises(KeyError, match="encoder keys missing"):
        model.load_encoder({k: v for k, v in pretrained.items() if k != "norm.weight"})
