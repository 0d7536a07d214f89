"""Rank helpers in one process, the torchrun command line, and a real 2-process gloo run."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.core import dist
from pipeline.core.config import DistConfig
from pipeline.core.errors import ConfigError
from pipeline.core.launch import maybe_relaunch, torchrun_command
from tests.conftest import free_port

TESTS = Path(__file__).parent


def test_helpers_fall_back_to_one_process():
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    assert dist.device() == torch.device("cpu") or torch.cuda.is_available()
    assert dist.init(DistConfig()) is False
    dist.teardown()
    t = torch.arange(6.0).reshape(3, 2).requires_grad_()
    gathered = dist.all_gather_with_grad(t)
    gathered.sum().backward()
    assert torch.equal(gathered, t) and torch.equal(t.grad, torch.ones(3, 2))
    assert not dist.all_gather_no_grad(t).requires_grad
    mean = dist.all_reduce_mean(t)
    assert torch.equal(mean, t) and mean.data_ptr() != t.data_ptr()


def test_torchrun_command_reruns_the_same_script_as_the_given_node():
    cfg = DistConfig(nproc=4, nnodes=2, rdzv_endpoint="node0:29400")
    cmd = torchrun_command(cfg, ["stages/pretrain.py", "--out", "x"], "pretrain", node_rank=1)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    # static rendezvous: node 0's first process is global rank 0, the one that writes
    assert " ".join(cmd[3:]) == ("--nproc-per-node 4 --nnodes 2 --node-rank 1 "
                                 "--rdzv-backend static --rdzv-endpoint node0:29400 "
                                 "stages/pretrain.py --out x")
    module = torchrun_command(cfg, ["/repo/pipeline/__main__.py", "worker"], "tune")
    assert module[-3:] == ["--module", "pipeline", "worker"]
    assert "--node-rank 0 --rdzv-backend static --rdzv-endpoint node0:29401" in " ".join(module)


@pytest.mark.parametrize("endpoint", ["node0", "node0:http", ":29500", "node0:65535"])
def test_malformed_rendezvous_endpoint_is_a_config_error(endpoint):
    with pytest.raises(ConfigError, match=r"^dist\.rdzv_endpoint: .* is invalid"):
        torchrun_command(DistConfig(nproc=2, rdzv_endpoint=endpoint), ["s.py"], "pretrain")


def test_relaunch_is_a_no_op_alone_or_under_torchrun(monkeypatch):
    maybe_relaunch(DistConfig(nproc=1), ["never-run.py"], "pretrain")
    monkeypatch.setenv("LOCAL_RANK", "0")
    maybe_relaunch(DistConfig(nproc=2), ["never-run.py"], "pretrain")


SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import torch

    sys.path[:0] = [{tests!r}, str(Path({tests!r}).parents[1])]
    from tests.training.test_loop import GLOBAL_BATCH, mse_step, tiny_loader, tiny_model
    from pipeline.core import dist
    from pipeline.core.config import DistConfig
    from pipeline.core.launch import maybe_relaunch
    from pipeline.core.tracking import NullTracker
    from pipeline.training.groups import decay_groups
    from pipeline.training.loop import LoopConfig, fit


    def rank_loader(epoch):
        # each rank takes its contiguous slice of every global batch (GlobalBatchSampler)
        w, r = dist.world_size(), dist.rank()
        return [(x.chunk(w)[r], y.chunk(w)[r]) for x, y in tiny_loader(epoch)]


    def main(out, nproc, port):
        cfg = DistConfig(nproc=nproc, rdzv_endpoint=f"127.0.0.1:{{port}}")
        maybe_relaunch(cfg, [__file__, str(out), str(nproc), str(port)], "pretrain")
        dist.init(cfg)
        out = Path(out)
        r, w = dist.rank(), dist.world_size()
        t = torch.full((2, 1), r + 1.0, requires_grad=True)
        g = dist.all_gather_with_grad(t)                      # (2 * w, 1)
        (g * torch.arange(2.0 * w).reshape(-1, 1)).sum().backward()
        model = tiny_model()
        history = fit(model, mse_step, decay_groups(model, 0.05), rank_loader,
                      LoopConfig(epochs=3, lr=1e-2, min_lr=1e-3, warmup_epochs=1,
                                 clip_grad=1.0, log_every=3),
                      ckpt_dir=out / "ckpt", kind="toy", config={{}}, fingerprint="f",
                      tracker=NullTracker())
        (out / f"rank{{r}}.json").write_text(json.dumps({{
            "world": w, "gathered": g.flatten().tolist(), "grad": t.grad.flatten().tolist(),
            "mean": dist.all_reduce_mean(torch.tensor([float(r)])).item(),
            "loss": [h["loss"] for h in history], "mae": [h["mae"] for h in history],
            "weights": [p.detach().flatten().tolist() for p in model.parameters()]}}))
        dist.teardown()


    if __name__ == "__main__":
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
""")


@pytest.mark.slow  # ~8 s: three torch start-ups on two cores
def test_two_gloo_processes_draw_the_same_loss_curve_as_one(tmp_path):
    """Same global batch, 1 vs 2 processes: per-epoch loss equal to rtol 1e-5, weights to
    atol 1e-6 (only the order of float additions differs)."""
    script = tmp_path / "toy_train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    one, two = tmp_path / "one", tmp_path / "two"
    runpy.run_path(str(script))["main"](one, 1, 0)
    # maybe_relaunch re-runs the script under torchrun with 2 processes
    proc = subprocess.run([sys.executable, str(script), str(two), "2", str(free_port())],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = json.loads((one / "rank0.json").read_text())
    r0, r1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (ref["world"], r0["world"], r1["world"]) == (1, 2, 2)
    assert r0["gathered"] == r1["gathered"] == [1.0, 1.0, 2.0, 2.0]
    assert (r0["grad"], r1["grad"]) == ([0.0, 2.0], [4.0, 6.0])  # summed over both ranks
    assert r0["mean"] == r1["mean"] == 0.5
    assert r0["loss"] == r1["loss"]
    assert r0["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert r0["mae"] == pytest.approx(ref["mae"], rel=1e-5)
    for a, b, c in zip(ref["weights"], r0["weights"], r1["weights"]):
        assert b == c
        assert b == pytest.approx(a, abs=1e-6)
    assert (two / "ckpt" / "last.pt").is_file()


AGREE = """
import sys
from pipeline.core import dist
from pipeline.core.errors import UserError
try:
    dist.init(agree_on={"stage": "pretrain", "params.yaml": sys.argv[1]})
except UserError as exc:
    print(exc)
dist.teardown()
"""


@pytest.mark.slow  # ~5 s: two torch start-ups
def test_nodes_that_disagree_stop_with_one_line_naming_them():
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", AGREE, digest], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "RANK": str(node), "GROUP_RANK": str(node)})
             for node, digest in ((0, "same"), (1, "edited"))]
    for proc in procs:
        out = proc.communicate(timeout=120)[0]
        assert out.startswith("node(s) [1] differ from node 0 in params.yaml: "), out
        assert out.count("\n") == 1
