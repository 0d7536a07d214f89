"""STARS head, queue, loss and partial tuning (pipeline/models/stars.py) on a tiny real encoder."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import ModelConfig, TuneConfig
from pipeline.models.encoder import Encoder
from pipeline.models.stars import (
    STARS,
    GlobalBatchNorm1d,
    NNQueue,
    STARSHead,
    nnclr_loss,
)
from pipeline.training.groups import set_head_only, tuning_param_groups
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(depth=4, dim=16, heads=2, frames=8, t_patch=4, joints=5)
TUNE = TuneConfig(queue_size=24, predictor_dim=32, batch_size=8, lr=1e-3, layer_decay=0.5)


def tiny_stars(tune: TuneConfig = TUNE, seed: int = 0) -> STARS:
    torch.manual_seed(seed)
    return STARS(MODEL, tune)


def tiny_batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, MODEL.frames, MODEL.joints, 3, generator=g)   # (N, M, T, V, C)
    return x, torch.arange(n) + 100


# ----------------------------------------------------------------------------- queue


def test_nearest_is_never_the_sample_itself_even_with_several_copies_queued():
    q = NNQueue(size=5, dim=4)
    me = F.normalize(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), dim=1)
    other = F.normalize(torch.tensor([[0.2, 1.0, 0.0, 0.0]]), dim=1)    # far from `me`
    far = F.normalize(torch.tensor([[-1.0, 0.0, 0.3, 0.0]]), dim=1)
    q.enqueue(torch.cat([me, me, other, me, far]), torch.tensor([7, 7, 3, 7, 4]))
    assert q.nearest(me, torch.tensor([7])).tolist() == [2]                 # `other`
    # another sample close to `me` may use the copies of sample 7
    assert torch.equal(q.queue[q.nearest(me, torch.tensor([5]))], me)


@pytest.mark.parametrize("empty_last", [False, True])
def test_random_initial_slots_compete_unless_ranked_last(empty_last):
    q = NNQueue(size=64, dim=4, seed=3, empty_last=empty_last)
    z = q.queue[5:6].clone()                    # identical to an initial random entry (id -1)
    q.enqueue(-z, torch.tensor([1]))            # slot 0: the least similar vector possible
    # the release (default) picks the random twin in slot 5; empty_last the one filled slot
    assert q.nearest(z, torch.tensor([0])).tolist() == [0 if empty_last else 5]


def test_empty_queue_serves_its_random_initial_entries_as_in_the_release():
    q = NNQueue(size=16, dim=4, seed=0)
    assert torch.allclose(q.queue.norm(dim=1), torch.ones(16))
    assert (q.queue_id == -1).all() and int(q.queue_ptr) == 0
    z = F.normalize(torch.randn(3, 4), dim=1)
    assert torch.equal(q.nearest(z, torch.arange(3)), (z @ q.queue.T).argmax(dim=1))
    # the same seed gives the same queue on every process, without a broadcast
    assert torch.equal(NNQueue(16, 4, seed=0).queue, q.queue)


def test_enqueue_wraps_around_for_batch_5_with_queue_12():
    q = NNQueue(size=12, dim=3)
    z = torch.arange(20, dtype=torch.float32)[:, None].repeat(1, 3)    # row i holds value i
    ids = torch.arange(20)
    for start in range(0, 15, 5):                                        # 3 batches of 5
        q.enqueue(z[start:start + 5], ids[start:start + 5])
    # 15 writes into 12 slots: ids 12, 13, 14 overwrote slots 0-2; 3..11 still in place
    assert q.queue_id.tolist() == [12, 13, 14, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert torch.equal(q.queue[:, 0], q.queue_id.float())
    assert int(q.queue_ptr) == 3
    q.enqueue(z[15:20], ids[15:20])
    assert q.queue_id.tolist() == [12, 13, 14, 15, 16, 17, 18, 19, 8, 9, 10, 11]
    assert int(q.queue_ptr) == 8


def test_enqueue_of_more_than_k_keeps_the_last_k_in_fifo_order():
    q = NNQueue(size=4, dim=2)
    q.enqueue(torch.zeros(1, 2), torch.tensor([0]))                    # ptr at 1
    q.enqueue(torch.ones(6, 2), torch.arange(10, 16))     # positions 1, 2, 3, 0, 1, 2
    # slot s holds the last id written at a position = s mod 4
    assert q.queue_id.tolist() == [13, 14, 15, 12]
    assert int(q.queue_ptr) == 3


# ------------------------------------------------------------------------ head and loss


def test_state_dict_uses_the_published_encoder_head_and_queue_names():
    keys = set(tiny_stars().state_dict())
    encoder_keys = set(Encoder(MODEL).state_dict())
    assert encoder_keys <= keys
    head = {k for k in keys if k.startswith("head.")}
    assert {"head.projector.0.weight", "head.projector.0.running_var",
            "head.predictor.0.weight", "head.predictor.1.weight",
            "head.predictor.1.num_batches_tracked", "head.predictor.3.weight",
            "head.predictor.3.bias"} <= head
    assert "head.predictor.0.bias" not in keys
    assert keys - encoder_keys - head == {"queue.queue", "queue.queue_id", "queue.queue_ptr"}


def test_global_batchnorm_equals_batchnorm1d_in_one_process():
    torch.manual_seed(0)
    ours, ref = GlobalBatchNorm1d(6), nn.BatchNorm1d(6)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(10, 6)
    assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours.running_var, ref.running_var)


def test_global_batchnorm_updates_2_steps_statistics_as_two_forwards_and_outputs_one():
    torch.manual_seed(0)
    ours, ref = GlobalBatchNorm1d(6), nn.BatchNorm1d(6)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(10, 6)
    y = ours(x, updates=2)
    assert torch.equal(y, ref(x))
    ref(x)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-6)


def test_head_init_is_the_releases_weights_init():
    torch.manual_seed(0)
    head = STARSHead(64, 4096)
    fc1, bn, _, fc2 = head.predictor
    for w, mean in ((fc1.weight, 0.0), (fc2.weight, 0.0), (bn.weight, 1.0),
                    (head.projector[0].weight, 1.0)):
        assert abs(w.mean().item() - mean) < 2e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert not fc2.bias.any() and not bn.bias.any() and not head.projector[0].bias.any()


def test_loss_is_cross_entropy_of_neighbours_against_all_predictions():
    nn_z = F.normalize(torch.randn(4, 8), dim=1)
    p = F.normalize(torch.randn(4, 8), dim=1)
    logits = nn_z @ p.T / 0.07
    expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
    assert torch.allclose(nnclr_loss(nn_z, p, 0.07), expected, atol=1e-6)


def test_one_forward_equals_two_identical_views_in_loss_and_gradients():
    x, idx = tiny_batch()
    one = tiny_stars()
    tuning_param_groups(one, TUNE, MODEL.depth)
    for _ in range(2):                         # fill the queue so neighbours are real samples
        one(x + 0.1 * torch.randn_like(x), idx + 50).backward()
    one.zero_grad(set_to_none=True)
    two = copy.deepcopy(one)

    loss_one = one(x, idx)
    loss_one.backward()
    loss_two = two(x, idx, x_view=x.clone())
    loss_two.backward()
    assert torch.allclose(loss_one, loss_two, rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name
    assert torch.equal(one.queue.queue, two.queue.queue)
    # the head's statistics step twice in both, as the release's two views do
    for (name, a), b in zip(one.head.named_buffers(), two.head.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_only_view_0_is_enqueued_after_the_loss():
    model = tiny_stars()
    x, idx = tiny_batch(n=4)
    x_view = torch.randn_like(x)
    twin = copy.deepcopy(model)
    with torch.no_grad():                     # z of each view, with the same batch statistics
        z0, _ = twin.head(twin.forward_features(x))
        z1, _ = twin.head(twin.forward_features(x_view))
    before = model.queue.queue.clone()
    model(x, idx, x_view=x_view)
    assert model.queue.queue_id[:4].tolist() == idx.tolist()
    assert torch.allclose(model.queue.queue[:4], z0, atol=1e-6)
    assert not torch.allclose(model.queue.queue[:4], z1, atol=1e-2)
    assert torch.equal(model.queue.queue[4:], before[4:])
    assert int(model.queue.queue_ptr) == 4


# ----------------------------------------------------------------------- partial tuning


def _lr_of(groups: list[dict]) -> dict[str, float]:
    return {n: g["lr"] for g in groups for n in g["names"]}


def test_second_half_blocks_get_base_lr_times_decay_to_the_depth_minus_i():
    model = tiny_stars()
    lrs = _lr_of(tuning_param_groups(model, TUNE, MODEL.depth))
    for i in range(MODEL.depth):
        name = f"blocks.{i}.attn.qkv.weight"
        if i < MODEL.depth // 2:
            assert name not in lrs
        else:
            assert lrs[name] == pytest.approx(TUNE.lr * TUNE.layer_decay ** (MODEL.depth - i))
    assert lrs["norm.weight"] == lrs["head.predictor.3.weight"] == TUNE.lr
    assert not any(n.startswith(("joints_embed", "pos_embed", "temp_embed")) for n in lrs)


@pytest.mark.parametrize("tuned_blocks, full, first", [(1, False, 3), (4, False, 0), (-1, True, 0)])
def test_tuned_blocks_and_full_choose_what_trains(tuned_blocks, full, first):
    cfg = TuneConfig(queue_size=24, predictor_dim=32, tuned_blocks=tuned_blocks, full=full)
    model = tiny_stars(cfg)
    lrs = _lr_of(tuning_param_groups(model, cfg, MODEL.depth))
    blocks = {int(n.split(".")[1]) for n in lrs if n.startswith("blocks.")}
    assert blocks == set(range(first, MODEL.depth))
    assert ("pos_embed" in lrs) == full
    if full:
        assert lrs["pos_embed"] == pytest.approx(cfg.lr * cfg.layer_decay ** (MODEL.depth + 1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lrs)


@pytest.mark.parametrize("exempt", ["none", "bias_norm", "bias_norm_embed"])
def test_weight_decay_spares_what_decay_exempt_names(exempt):
    cfg = TuneConfig(queue_size=24, predictor_dim=32, full=True, decay_exempt=exempt)
    model = tiny_stars(cfg)
    for g in tuning_param_groups(model, cfg, MODEL.depth):
        for name, p in zip(g["names"], g["params"]):
            no_decay = exempt != "none" and (
                p.ndim == 1 or (exempt == "bias_norm_embed" and name in ("pos_embed",
                                                                         "temp_embed")))
            assert g["weight_decay"] == (0.0 if no_decay else cfg.weight_decay), name


def _train_steps(model: STARS, groups: list[dict], steps: int, n: int = 8) -> list[float]:
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    losses = []
    for s in range(steps):
        x, idx = tiny_batch(n, seed=s % 2)     # two fixed batches, as in a two-step epoch
        loss = model(x, idx + n * (s % 2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        losses.append(loss.item())
    return losses


def test_frozen_parameters_are_bit_identical_and_without_grad_after_a_step():
    model = tiny_stars()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = tuning_param_groups(model, TUNE, MODEL.depth)
    _train_steps(model, groups, steps=2)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("joints_embed", "pos_embed", "temp_embed",
                                        "blocks.0.", "blocks.1.")) for n in frozen)
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None, name
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.blocks[3].mlp.fc2.weight, before["blocks.3.mlp.fc2.weight"])


def test_head_only_warmup_leaves_the_encoder_untouched_until_it_joins():
    model = tiny_stars()
    groups = tuning_param_groups(model, TUNE, MODEL.depth)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))     # built with every tuned part on
    block = model.blocks[3].mlp.fc2.weight
    before, head_before = block.detach().clone(), model.head.predictor[3].weight.detach().clone()
    set_head_only(groups, True)
    x, idx = tiny_batch()
    model(x, idx).backward()
    opt.step()
    assert block.grad is None and torch.equal(block, before)
    assert not torch.equal(model.head.predictor[3].weight, head_before)
    set_head_only(groups, False)
    opt.zero_grad(set_to_none=True)
    model(x, idx).backward()
    opt.step()
    assert not torch.equal(block, before)


def test_loss_decreases_on_a_small_set():
    model = tiny_stars()
    losses = _train_steps(model, tuning_param_groups(model, TUNE, MODEL.depth), steps=16)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5


# -------------------------------------------------------------------- two processes


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from pipeline.core import dist
    from pipeline.core.config import ModelConfig, TuneConfig
    from pipeline.models.stars import STARS
    from pipeline.training.groups import tuning_param_groups
    from pipeline.core.tracking import NullTracker
    from pipeline.training.loop import LoopConfig, fit

    out = Path(sys.argv[1])
    dist.init()
    model_cfg = ModelConfig(**json.loads(sys.argv[2]))
    tune = TuneConfig(**json.loads(sys.argv[3]))
    torch.manual_seed(0)
    model = STARS(model_cfg, tune)
    groups = tuning_param_groups(model, tune, model_cfg.depth)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, model_cfg.frames, model_cfg.joints, 3, generator=g)
    W, r = dist.world_size(), dist.rank()

    def loader(epoch):  # two global batches of 8, this rank's contiguous slice of each
        order = torch.randperm(16, generator=torch.Generator().manual_seed(epoch))
        batches = order.view(2, 8)
        return [{"x": x[b].chunk(W)[r], "index": b.chunk(W)[r]} for b in batches]

    def step(m, batch):
        return m(batch["x"], batch["index"]), {}

    # SGD: AdamW would turn the rounding noise of gradients along directions the loss cannot
    # see (the bias of a norm right before BatchNorm, attention's key bias) into +-lr steps.
    cfg = LoopConfig(epochs=3, lr=tune.lr, schedule="constant", optimizer="sgd",
                     clip_grad=tune.clip_grad)
    history = fit(model, step, groups, loader, cfg, ckpt_dir=out, kind="stars", config={},
                  fingerprint="f", tracker=NullTracker())
    if dist.is_main():
        (out / "history.json").write_text(json.dumps([h["loss"] for h in history]))
    dist.teardown()
""")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Loss curve and final weights within 1e-5 (float summation order differs): the global
    BatchNorm, the gathered predictions and the identical queues make 2 processes == 1."""
    import json

    from pipeline.training import checkpoint

    script = tmp_path / "ddp_stars.py"
    script.write_text(DDP_SCRIPT)
    model_json = json.dumps({"depth": 2, "dim": 16, "heads": 2, "frames": 8, "t_patch": 4,
                             "joints": 5})
    tune_json = json.dumps({"queue_size": 12, "predictor_dim": 32, "lr": 0.05})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"np{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", str(script), str(out), model_json, tune_json]
        if nproc == 1:   # one plain process: no process group at all
            cmd = [sys.executable, str(script), str(out), model_json, tune_json]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = (json.loads((out / "history.json").read_text()),
                       checkpoint.load(out / "last.pt")["model"])
    (loss1, state1), (loss2, state2) = runs[1], runs[2]
    assert loss1 == pytest.approx(loss2, rel=1e-5, abs=1e-5)
    assert loss1[-1] < loss1[0]
    for key, value in state1.items():
        if value.is_floating_point():
            assert torch.allclose(value, state2[key], rtol=1e-4, atol=1e-5), key
        else:
            assert torch.equal(value, state2[key]), key
