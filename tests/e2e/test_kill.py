"""Stages killed with SIGKILL under `dvc repro`: outputs hold only complete files, and the
persistent checkpoints let the next `dvc repro` resume to the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.core.io import TEMP_SUFFIX
from pipeline.training import checkpoint
from tests.e2e.project import DVC, make_project, run

NO_TRACKING = {"tracking": {"enabled": False}}


def start(cmd: list[str], repo: Path, env: dict) -> subprocess.Popen:
    """`cmd` in its own session (so one killpg reaches DVC and the stage it runs), its output
    in `repo`/../kill.log."""
    with open(repo.parent / "kill.log", "ab") as log:
        return subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], interval: float) -> bool:
    """SIGKILL `proc`'s session as soon as `ready()` (polled every `interval` s); False if
    `proc` ended first."""
    deadline = time.monotonic() + 600
    while proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the stage neither finished nor reached the kill point in 10 minutes")
        time.sleep(interval)
    return False


def temps(folder: Path) -> list[Path]:
    try:
        return [folder / e.name for e in os.scandir(folder) if e.name.endswith(TEMP_SUFFIX)]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_only_complete_files(tmp_path):
    """The temporary of a checkpoint being written when the stage is killed is ignored by DVC,
    the previous last.pt is intact, and the next run sweeps it and resumes."""
    repo = tmp_path / "project"
    # a wider model, so a checkpoint write lasts long enough to be caught
    env = make_project(repo, {**NO_TRACKING, "model": {"dim": 128, "heads": 4},
                              "pretrain": {"epochs": 12}})
    run([*DVC, "repro", "preprocess"], repo, env)
    ckpt = repo / "models" / "pretrain"
    for _ in range(5):
        proc = start([*DVC, "repro", "pretrain"], repo, env)
        if kill_when(proc, lambda: bool(temps(ckpt)), interval=5e-4) and temps(ckpt):
            break
    else:
        pytest.fail("no kill landed while a checkpoint temporary existed")

    for tmp in temps(ckpt):
        run([*DVC, "check-ignore", str(tmp.relative_to(repo))], repo, env)  # rc 0: ignored
    had_last = (ckpt / "last.pt").exists()
    if had_last:
        assert checkpoint.load(ckpt / "last.pt")["epoch"] >= 1     # complete, loadable

    out = run([*DVC, "repro", "pretrain"], repo, env)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]    # swept, nothing else
    assert checkpoint.load(ckpt / "last.pt")["epoch"] == 12
    assert ("resuming after epoch" in out) == had_last
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["pretrain"]
    assert [o["nfiles"] for o in lock["outs"] if o["path"] == "models/pretrain"] == [1]
    assert "up to date" in run([*DVC, "status", "pretrain"], repo, env)


@pytest.mark.slow
def test_killed_paper_mode_probe_resumes_to_the_uninterrupted_metrics(tmp_path):
    """`eval.probe_mode: paper` checkpoints each epoch into models/probe (persist: true): a
    `dvc repro` after a kill resumes and ends with exactly the metrics of an unkilled run."""
    epochs = 12
    repo = tmp_path / "killed"
    env = make_project(repo, {**NO_TRACKING, "pretrain": {"crop_floor": 4},
                              "eval": {"probe_mode": "paper", "probe_epochs": epochs,
                                       "probe_batch_size": 8}})
    run([*DVC, "repro", "tune"], repo, env)
    ref = tmp_path / "uninterrupted"
    shutil.copytree(repo, ref, symlinks=True)
    ref_env = {**env, "PYTHONPATH": str(ref)}

    probe = repo / "models" / "probe" / "mamp" / "last.pt"
    killed = kill_when(start([*DVC, "repro", "evaluate"], repo, env), probe.exists, 0.05)
    assert killed, (tmp_path / "kill.log").read_text()[-3000:]
    done = checkpoint.load(probe)["epoch"]
    assert 1 <= done < epochs
    out = run([*DVC, "repro", "evaluate"], repo, env)
    assert f"resuming after epoch {done}" in out

    run([*DVC, "repro", "evaluate"], ref, ref_env)
    killed, clean = (json.loads((r / "metrics" / "evaluate.json").read_text())
                     for r in (repo, ref))
    assert killed == clean
    assert (repo / "models" / "probe" / "stars" / "last.pt").is_file()
