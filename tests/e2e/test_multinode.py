"""Two "nodes" on one machine: two working copies, DVC driving node 0 and
`python -m pipeline worker` on node 1 (the README's Scaling out recipe), gloo over localhost."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.training import checkpoint
from tests.conftest import free_port
from tests.e2e.project import DVC, make_project, run, set_params


def free_port_pair() -> int:
    """A port p with p and p + 1 free (pretrain and tune rendezvous on consecutive ports)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def weights(repo: Path, stage: str) -> dict[str, torch.Tensor]:
    return checkpoint.load(repo / "models" / stage / "last.pt")["model"]


@pytest.mark.slow
def test_two_nodes_train_like_one_node_with_two_processes(tmp_path):
    node0 = tmp_path / "node0"
    # one thread per process in both runs (torchrun sets it only above one process per node),
    # so they differ by nothing but the node boundary
    env = {**make_project(node0, {"tracking": {"enabled": False}}), "OMP_NUM_THREADS": "1"}
    run([*DVC, "repro", "preprocess"], node0, env)

    # reference: one node, two processes
    ref = tmp_path / "one-node"
    shutil.copytree(node0, ref, symlinks=True)
    set_params(ref, {"dist": {"nproc": 2, "rdzv_endpoint": f"127.0.0.1:{free_port_pair()}"}})
    run([*DVC, "repro", "tune"], ref, {**env, "PYTHONPATH": str(ref)})

    # two nodes of one process each; node 1 is a copy of the code, params.yaml and
    # data/processed (what every node needs), and receives no outputs
    set_params(node0, {"dist": {"nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{free_port_pair()}"}})
    node1 = tmp_path / "node1"
    node1.mkdir()
    for name in ("pipeline", "params.yaml", "data"):
        copy = shutil.copytree if (node0 / name).is_dir() else shutil.copy
        copy(node0 / name, node1 / name)
    env1 = {**env, "PYTHONPATH": str(node1)}
    worker = [sys.executable, "-m", "pipeline", "worker"]
    driver = subprocess.Popen([*DVC, "repro", "tune"], cwd=node0, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for stage in ("pretrain", "tune"):
            run([*worker, stage, "--node-rank", "1"], node1, env1)
        out, _ = driver.communicate(timeout=900)
    finally:
        driver.kill()
    assert driver.returncode == 0, out[-3000:]

    for stage in ("pretrain", "tune"):
        metrics = json.loads((node0 / "metrics" / f"{stage}.json").read_text())
        assert metrics["processes"] == 2
        two_nodes, one_node = weights(node0, stage), weights(ref, stage)
        assert two_nodes.keys() == one_node.keys()
        for key, value in two_nodes.items():
            torch.testing.assert_close(value, one_node[key], rtol=1e-5, atol=1e-6, msg=key)
    assert sorted(p.name for p in node1.iterdir()) == ["data", "params.yaml", "pipeline"]
    assert "up to date" in run([*DVC, "status", "tune"], node0, env)
