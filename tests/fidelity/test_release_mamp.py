"""MAMP against the official code's outputs (expected_mamp.pt): features of the imported
release checkpoint, and masks, motion targets, predictions and loss under the stored noise."""

from __future__ import annotations

import argparse

import pytest
import torch

from pipeline.eval.features import load_encoder
from pipeline.models.mamp import MAMP
from pipeline.training import checkpoint
from pipeline.training.groups import decay_groups
from pipeline.training.loop import LoopConfig, lr_at
from tests.fidelity.golden import FIXTURES, SMALL, default_params, fixture, imported

INPUTS = fixture("inputs.pt")
EXPECTED = fixture("expected_mamp.pt")
CASES = [(i, t) for i in ("x", "x_absent") for t in ("tau0.8", "tau0")]


@pytest.fixture(scope="module")
def mamp_ckpt(tmp_path_factory) -> dict:
    return checkpoint.load(imported("mamp", "mamp_release.pth", tmp_path_factory.mktemp("m")))


def test_features_of_the_imported_checkpoint_match_the_release_linprobe(tmp_path):
    encoder = load_encoder(imported("mamp", "mamp_release.pth", tmp_path), SMALL)
    for name in ("x", "x_absent"):   # x_absent: the all-zero actor is in the mean
        with torch.no_grad():
            feats = encoder.forward_features(INPUTS[name])
        # README: float64 vs float32 differ by <= 1.9e-7 (measured here: 2.4e-7)
        torch.testing.assert_close(feats, EXPECTED["features"][name], rtol=0, atol=1e-6)


def test_checkpoint_saved_with_epoch_last_imports_like_the_indexed_one(tmp_path):
    last = checkpoint.load(imported("mamp", "mamp_release_epoch_last.pth", tmp_path))
    indexed = checkpoint.load(imported("mamp", "mamp_release.pth", tmp_path))
    assert last["epoch"] == indexed["epoch"] == 400       # 'last' = all of args.epochs
    assert last["extra"]["published_epoch"] == "last"
    assert all(torch.equal(last["model"][k], v) for k, v in indexed["model"].items())


def test_per_sample_seeds_give_the_stored_noise():
    model = MAMP(SMALL, EXPECTED["mask_ratio"])
    assert torch.equal(model.mask_noise(EXPECTED["noise_seeds"], 2), EXPECTED["noise"])


@pytest.mark.parametrize("name,tau", CASES)
def test_masks_targets_predictions_and_loss_match_the_release(mamp_ckpt, name, tau):
    case = EXPECTED["cases"][name][tau]
    model = MAMP(SMALL, EXPECTED["mask_ratio"], case["tau"])
    model.load_state_dict(mamp_ckpt["model"])
    model.train()
    x, seeds = INPUTS[name], EXPECTED["noise_seeds"]
    mask, ids_keep, ids_restore = model.motion_aware_mask(x, seeds)
    assert model.num_keep == 9                           # int(100 * (1 - 0.9)), as the release
    assert torch.equal(ids_keep, case["ids_keep"])
    assert torch.equal(ids_restore, case["ids_restore"])
    assert torch.equal(mask, case["mask"])
    target = model.motion_target(x)
    # README float64 tolerances: target 3.1e-7, pred 1.8e-6 (measured: 4.8e-7, 2.1e-6)
    torch.testing.assert_close(target, case["target"], rtol=0, atol=1e-6)
    with torch.no_grad():
        latent, _, _ = model.forward_encoder(x, seeds)
        pred = model.forward_decoder(latent, ids_restore)
        loss = model.forward_loss(target, pred, mask)
        full = model(x, seeds)
    torch.testing.assert_close(pred, case["pred"], rtol=0, atol=5e-6)
    torch.testing.assert_close(loss, case["loss"], rtol=0, atol=1e-6)
    assert full == loss


def test_default_weight_decay_groups_are_the_release_optimizer_groups():
    """The release decays everything but biases and 1-D tensors: the checkpoint's optimizer
    holds 39 tensors without decay and 24 with 0.05 (embeddings and mask token decayed)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        release = torch.load(FIXTURES / "mamp_release.pth", weights_only=True)
    params = default_params()
    groups = decay_groups(MAMP(SMALL), params.pretrain.weight_decay, params.pretrain.decay_exempt)
    ours = sorted((len(g["params"]), g["weight_decay"]) for g in groups)
    theirs = sorted((len(g["params"]), g["weight_decay"])
                    for g in release["optimizer"]["param_groups"])
    assert ours == theirs == [(24, 0.05), (39, 0.0)]


def test_pretraining_lr_schedule_gives_the_release_lr_of_its_last_epoch():
    pre = default_params().pretrain
    cfg = LoopConfig(epochs=400, lr=pre.lr, min_lr=pre.min_lr, warmup_epochs=20)
    assert lr_at(EXPECTED["train_step"]["epoch"], cfg) == pytest.approx(
        EXPECTED["train_step"]["lr"], rel=1e-12)
