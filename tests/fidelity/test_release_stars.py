"""STARS against the official code's outputs (expected_stars.pt): features of the imported
release checkpoint, and one training step of the default configuration for each stored
queue state (neighbours, loss, gradients before and after clipping, BatchNorm statistics,
parameters and queue after the step)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.core.tracking import NullTracker
from pipeline.eval.features import load_encoder
from pipeline.models.stars import STARS
from pipeline.training import checkpoint
from pipeline.training.groups import tuning_param_groups
from pipeline.training.loop import clip_gradients, fit
from pipeline.tune import loop_config, stars_step
from tests.fidelity.golden import SMALL, default_params, fixture, imported, ours

INPUTS = fixture("inputs.pt")
EXPECTED = fixture("expected_stars.pt")
CASES = ["full", "fresh", "half", "full_two_views"]
# README "Elements with zero true gradient": Adam turns their float32 rounding noise into
# moves of up to +-lr, so their params_after are compared at 2 * lr.
NOISE_ELEMENTS = {"norm.bias": slice(None), "head.projector.0.bias": slice(None),
                  "blocks.1.attn.qkv.bias": slice(32, 64), "norm.weight": slice(None)}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """Our checkpoint from `import-weights --format stars` of the release's file."""
    return checkpoint.load(imported("stars", "stars_release.pth",
                                    tmp_path_factory.mktemp("stars"), predictor_dim=64))


def default_tune():
    """params.yaml's tune group with the fixtures' queue and predictor sizes."""
    return dataclasses.replace(default_params().tune, queue_size=64, predictor_dim=64)


def model_for(case: dict, release: dict) -> STARS:
    model = STARS(SMALL, default_tune())
    model.load_state_dict(release["model"])
    model.queue.queue.copy_(case["queue"].T)              # release (D, K) -> ours (K, D)
    model.queue.queue_id.copy_(case["queue_id"])
    model.queue.queue_ptr.copy_(case["queue_ptr"])
    return model.train()


def batch_for(case: dict) -> dict:
    v0, v1 = (INPUTS[v] for v in case["views"])
    x = v0 if case["views"][1] == "x" else torch.stack([v0, v1], dim=1)  # (N, [2,] M, T, V, C)
    return {"x": x, "index": EXPECTED["ids"]}


def noise_mask(name: str, like: torch.Tensor) -> torch.Tensor:
    """True on the elements with zero true gradient (README), False elsewhere."""
    mask = torch.zeros_like(like, dtype=torch.bool)
    if name in NOISE_ELEMENTS:
        mask[NOISE_ELEMENTS[name]] = True
    return mask


def assert_grad_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Relative to the tensor's largest gradient, 2e-5 (README: float64 and 2 threads move
    them by <= 3e-6 of it; measured here <= 4e-6); zero-true-gradient elements are float32
    rounding noise: absolute 2e-5 (measured <= 1.3e-5)."""
    noise = noise_mask(ours(name), want)
    err = (got - want).abs()
    assert (err[noise] <= 2e-5).all(), f"{name}: noise elements differ by {err[noise].max()}"
    if (~noise).any():
        rel = err[~noise].max() / want[~noise].abs().max().clamp(min=1e-12)
        assert rel <= 2e-5, f"{name}: relative error {rel:.2e}"


def test_features_and_projections_of_the_imported_checkpoint(release, tmp_path):
    path = tmp_path / "stars.pt"
    checkpoint.save(path, release)
    encoder = load_encoder(path, SMALL)
    model = STARS(SMALL, default_tune())
    model.load_state_dict(release["model"])
    model.eval()
    for name in ("x", "x_absent"):
        with torch.no_grad():
            feats = encoder.forward_features(INPUTS[name])
            projected = model.head.projector(model.forward_features(INPUTS[name]))
        torch.testing.assert_close(feats, EXPECTED["features"][name], rtol=0, atol=1e-6)
        torch.testing.assert_close(projected, EXPECTED["projected_features"][name],
                                   rtol=0, atol=2e-6)


def test_default_optimizer_groups_are_the_releases(release):
    model = STARS(SMALL, default_tune())
    groups = tuning_param_groups(model, default_tune(), SMALL.depth)
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    want = {ours(n): (EXPECTED["lr"][n], EXPECTED["weight_decay"][n]) for n in EXPECTED["tuned"]}
    assert got.keys() == want.keys()
    for name, (lr, wd) in want.items():
        assert got[name] == (pytest.approx(lr, rel=1e-12), wd), name
    loop = loop_config(default_tune(), 1)
    assert (loop.betas, loop.clip_grad, loop.clip_mode) == (tuple(EXPECTED["betas"]),
                                                             EXPECTED["clip_grad"], "per_tensor")
    assert model.temperature == EXPECTED["temperature"]


@pytest.mark.parametrize("name", CASES)
def test_neighbours_loss_and_gradients_before_and_after_clipping(release, name):
    case = EXPECTED["steps"][name]
    model = model_for(case, release)
    tuning_param_groups(model, default_tune(), SMALL.depth)     # freezes the untuned part
    batch = batch_for(case)
    with torch.no_grad():   # the neighbours each view's projection picks
        picks = [model.queue.nearest(model.head(model.forward_features(INPUTS[v]))[0],
                                     EXPECTED["ids"]) for v in case["views"]]
    assert torch.equal(torch.stack(picks), case["nn_idx"])
    model = model_for(case, release)
    tuning_param_groups(model, default_tune(), SMALL.depth)
    loss, _ = stars_step(model, batch)
    torch.testing.assert_close(loss, case["loss"], rtol=0, atol=1e-6)   # measured <= 4.8e-7
    loss.backward()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert params.keys() == {ours(n) for n in case["grads"]}
    for n, g in case["grads"].items():
        assert_grad_close(params[ours(n)].grad, g, n)
    clip_gradients(list(params.values()), default_tune().clip_grad, default_tune().clip_mode)
    for n, g in case["grads_clipped"].items():
        assert_grad_close(params[ours(n)].grad, g, n)


@pytest.mark.parametrize("name", CASES)
def test_one_step_of_the_training_loop_matches_the_release_step(release, name, tmp_path):
    case = EXPECTED["steps"][name]
    model = model_for(case, release)
    tune = default_tune()
    groups = tuning_param_groups(model, tune, SMALL.depth)
    fit(model, stars_step, groups, lambda epoch: [batch_for(case)], loop_config(tune, 1),
        ckpt_dir=tmp_path, kind="stars", config={}, fingerprint="", tracker=NullTracker())
    state = model.state_dict()
    for n, want in case["bn_after"].items():
        got = state[ours(n)]
        if got.dtype == torch.int64:
            assert torch.equal(got, want), n                       # 7 -> 9: two updates
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=n)   # 2.4e-7
    # Adam's first step moves each element by about +-lr whatever its gradient's size, so
    # tiny gradients decide a sign: measured <= 2.7e-6 (1e-5 = 1% of lr); the
    # zero-true-gradient elements move by an arbitrary +-lr: 2 * lr (README).
    for n, want in case["params_after"].items():
        got, noise = state[ours(n)], noise_mask(ours(n), want)
        assert ((got - want).abs()[noise] <= 2 * EXPECTED["lr"][n]).all(), n
        torch.testing.assert_close(got[~noise], want[~noise], rtol=0, atol=1e-5, msg=n)
    torch.testing.assert_close(state["queue.queue"], case["queue_after"].T, rtol=0, atol=1e-6)
    assert torch.equal(state["queue.queue_id"], case["queue_id_after"])
    assert torch.equal(state["queue.queue_ptr"], case["queue_ptr_after"])
