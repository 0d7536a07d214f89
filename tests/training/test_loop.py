"""The training loop on a tiny regression model: schedule, divergence, resume, best.pt."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.core.tracking import NullTracker
from pipeline.training import checkpoint
from pipeline.training.groups import decay_groups
from pipeline.training.loop import (
    LoopConfig,
    TrainingDiverged,
    build_optimizer,
    clip_gradients,
    fit,
    lr_at,
    seed_everything,
)

N_SAMPLES, GLOBAL_BATCH = 48, 12


def tiny_model() -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 1))


def tiny_loader(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A reshuffled epoch of (x, y) batches, derived from the epoch alone."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1
    order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(epoch))
    return [(x[i], y[i]) for i in order.split(GLOBAL_BATCH)]


def mse_step(model: nn.Module, batch):
    x, y = batch
    pred = model(x)
    return F.mse_loss(pred, y), {"mae": (pred - y).abs().mean()}


def run(ckpt_dir: Path, step_fn=mse_step, epochs: int = 3, **overrides):
    model = tiny_model()
    cfg = LoopConfig(epochs=epochs, lr=1e-2, min_lr=1e-3, warmup_epochs=1, log_every=2,
                     **overrides)
    history = fit(model, step_fn, decay_groups(model, 0.05), tiny_loader, cfg,
                  ckpt_dir=ckpt_dir, kind="toy", config={"lr": 1e-2}, fingerprint="data:cfg",
                  tracker=NullTracker())
    return model, history


def test_lr_warmup_is_linear_then_cosine_ends_at_min_lr():
    cfg = LoopConfig(epochs=10, lr=1e-3, min_lr=5e-4, warmup_epochs=2)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(0.5, cfg) == pytest.approx(2.5e-4)
    assert lr_at(1.0, cfg) == pytest.approx(5e-4)
    assert lr_at(2.0, cfg) == pytest.approx(1e-3)
    assert lr_at(6.0, cfg) == pytest.approx(7.5e-4)      # half way down the cosine
    assert lr_at(10.0, cfg) == pytest.approx(5e-4)
    lrs = [lr_at(e / 4, cfg) for e in range(8, 41)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_constant_schedule_holds_lr_after_warmup():
    cfg = LoopConfig(epochs=10, lr=1e-3, warmup_epochs=1, schedule="constant")
    assert lr_at(0.5, cfg) == pytest.approx(5e-4)
    assert [lr_at(e, cfg) for e in (1.0, 5.5, 10.0)] == [1e-3] * 3
    assert lr_at(3.0, LoopConfig(epochs=10, lr=0.1, schedule="constant")) == 0.1


def test_group_lr_scale_multiplies_the_scheduled_lr(tmp_path):
    model = tiny_model()
    groups = [{"params": model[0].parameters(), "lr_scale": 0.25},
              {"params": model[3].parameters()}]
    fit(model, mse_step, groups, tiny_loader, LoopConfig(epochs=1, lr=1e-2, min_lr=0.0),
        ckpt_dir=tmp_path, kind="toy", config={}, fingerprint="f", tracker=NullTracker())
    saved = checkpoint.load(tmp_path / "last.pt")["optimizer"]["param_groups"]
    last_lr = lr_at(3 / 4, LoopConfig(epochs=1, lr=1e-2))       # the 4th of 4 steps
    assert [g["lr"] for g in saved] == pytest.approx([0.25 * last_lr, last_lr])
    assert saved[0]["lr_scale"] == 0.25


def test_frozen_parameters_are_not_given_to_the_optimizer(tmp_path):
    model = tiny_model()
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    groups = decay_groups(model, 0.05)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not grouped & {id(p) for p in model[0].parameters()}
    # weight decay only on matrices: biases and norm weights are in the 0.0 group
    assert {tuple(p.shape) for p in groups[1]["params"]} == {(1, 16)}

    opt = build_optimizer([{"params": list(model.parameters())}],
                          LoopConfig(epochs=1, lr=1e-3), torch.device("cpu"))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == \
        {id(p) for p in model.parameters() if p.requires_grad}

    fit(model, mse_step, [{"params": list(model.parameters())}], tiny_loader,
        LoopConfig(epochs=1, lr=1e-2), ckpt_dir=tmp_path, kind="toy", config={},
        fingerprint="f", tracker=NullTracker())
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters()))
    assert len(checkpoint.load(tmp_path / "last.pt")["optimizer"]["state"]) == 4


@pytest.mark.parametrize("exempt, spared", [("none", set()),
                                            ("bias_norm", {"0.bias", "1.weight", "1.bias", "3.bias"})])
def test_param_groups_spare_what_decay_exempt_names(exempt, spared):
    model = tiny_model()
    groups = decay_groups(model, 0.05, exempt)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == spared
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_clip_modes_scale_each_tensor_or_all_together(mode):
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])   # norms 5, 0.5
    clip_gradients([a, b], 1.0, mode)
    if mode == "per_tensor":   # the release: g * 1 / (5 + 1e-6); b is under the limit
        torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0, 0.0]) / (5 + 1e-6))
        assert torch.equal(b.grad, torch.tensor([0.3, 0.4]))
    else:                      # one factor from the norm of both: sqrt(25.25)
        scale = 1.0 / (25.25 ** 0.5 + 1e-6)
        torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]) * scale)


def test_history_has_one_entry_per_epoch_with_loss_lr_speed(tmp_path):
    _, history = run(tmp_path)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for h in history:
        assert {"loss", "mae", "lr", "samples_per_s", "epoch_time_s"} <= h.keys()
        assert math.isfinite(h["loss"]) and h["samples_per_s"] > 0
    assert history[-1]["loss"] < history[0]["loss"]
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["kind"]) == (3, 12, "toy")
    assert ckpt["extra"]["history"] == history


def test_non_finite_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    run(tmp_path, epochs=2)
    good = (tmp_path / "last.pt").read_bytes()
    calls = []

    def diverging(model, batch):
        calls.append(1)
        loss, logs = mse_step(model, batch)
        return (loss * float("nan") if len(calls) == 3 else loss), logs

    # epochs=2 resumes complete from the same fingerprint: ask for 4 so epoch 3 runs
    with pytest.raises(TrainingDiverged, match=r"epoch 3 step 3 .*last\.pt \(after epoch 2\)"):
        run(tmp_path, step_fn=diverging, epochs=4)
    assert (tmp_path / "last.pt").read_bytes() == good


def test_non_finite_loss_on_fresh_run_writes_no_checkpoint(tmp_path):
    def inf_loss(model, batch):
        loss, logs = mse_step(model, batch)
        return loss + float("inf"), logs

    with pytest.raises(TrainingDiverged, match="epoch 1 step 1 .*no checkpoint"):
        run(tmp_path, step_fn=inf_loss)
    assert not (tmp_path / "last.pt").exists()


def test_resume_after_crash_mid_epoch_gives_identical_weights(tmp_path):
    reference, ref_history = run(tmp_path / "uninterrupted", epochs=3)

    class Killed(Exception):
        pass

    calls = []

    def crashing(model, batch):
        calls.append(1)
        if len(calls) == 6:          # the 2nd step of epoch 2 (4 steps per epoch)
            raise Killed
        return mse_step(model, batch)

    with pytest.raises(Killed):
        run(tmp_path / "crashed", step_fn=crashing, epochs=3)
    assert checkpoint.load(tmp_path / "crashed" / "last.pt")["epoch"] == 1
    resumed, history = run(tmp_path / "crashed", epochs=3)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert history == [{**h, "samples_per_s": r["samples_per_s"],
                        "epoch_time_s": r["epoch_time_s"]}
                       for h, r in zip(ref_history, history)]
    ref_opt = checkpoint.load(tmp_path / "uninterrupted" / "last.pt")["optimizer"]
    new_opt = checkpoint.load(tmp_path / "crashed" / "last.pt")["optimizer"]
    for k, state in ref_opt["state"].items():
        assert all(torch.equal(state[n], new_opt["state"][k][n]) for n in state)


def test_changed_fingerprint_starts_fresh(tmp_path):
    run(tmp_path, epochs=2)
    model = tiny_model()
    history = fit(model, mse_step, decay_groups(model, 0.05), tiny_loader,
                  LoopConfig(epochs=2, lr=1e-2), ckpt_dir=tmp_path, kind="toy", config={},
                  fingerprint="other-data:cfg", tracker=NullTracker())
    assert len(history) == 2
    assert checkpoint.load(tmp_path / "last.pt")["fingerprint"] == "other-data:cfg"


def test_best_checkpoint_is_a_separate_file_saved_when_metric_improves(tmp_path):
    scores = iter([0.5, 0.9, 0.7])
    model = tiny_model()
    fit(model, mse_step, decay_groups(model, 0.05), tiny_loader,
        LoopConfig(epochs=3, lr=1e-2, best_metric="val_acc"), ckpt_dir=tmp_path, kind="toy",
        config={}, fingerprint="f", tracker=NullTracker(),
        on_epoch_end=lambda epoch, m: {"val_acc": next(scores)})
    best, last = checkpoint.load(tmp_path / "best.pt"), checkpoint.load(tmp_path / "last.pt")
    assert (best["epoch"], best["extra"]["best"]) == (2, 0.9)
    assert last["epoch"] == 3 and last["extra"]["history"][-1]["val_acc"] == 0.7
    assert not torch.equal(best["model"]["0.weight"], last["model"]["0.weight"])


def test_tracker_receives_per_epoch_metrics(tmp_path):
    class Recorder(NullTracker):
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=0):
            self.calls.append((step, dict(metrics)))

    tracker = Recorder()
    model = tiny_model()
    fit(model, mse_step, decay_groups(model, 0.0), tiny_loader, LoopConfig(epochs=2, lr=1e-2),
        ckpt_dir=tmp_path, kind="toy", config={}, fingerprint="f", tracker=tracker)
    assert [s for s, _ in tracker.calls] == [0, 1]
    assert {"loss", "lr", "samples_per_s", "epoch_time_s"} <= tracker.calls[0][1].keys()
