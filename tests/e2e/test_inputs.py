"""`data.novel_dir` and `data.pku_split_dir` are DVC dependencies of preprocess when set, and
the default "" works: real `dvc repro` / `dvc status` in a fresh git+DVC copy."""

import os
import subprocess

import pytest

from tests.e2e.project import DVC, make_project, run, set_params


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_optional_input_folders_are_dependencies_when_set(tmp_path):
    repo = tmp_path / "project"
    env = make_project(repo, {"tracking": {"enabled": False}})
    assert ran(run([*DVC, "repro", "preprocess"], repo, env)) == {
        "inputs", "synthesize", "preprocess"}
    assert ran(run([*DVC, "repro", "preprocess"], repo, env)) == {"inputs"}   # "" is stable

    splits, novel = repo / "splits", repo / "novel"
    for folder in (splits, novel):
        folder.mkdir()
        (folder / "a.txt").write_text("1")
    set_params(repo, {"data": {"novel_dir": "novel", "pku_split_dir": "splits"}})
    assert "preprocess" in ran(run([*DVC, "repro", "preprocess"], repo, env))
    assert "up to date" in run([*DVC, "status", "preprocess"], repo, env)
    for edit in (lambda: (splits / "a.txt").write_text("22"),
                 lambda: (novel / "sub").mkdir() or (novel / "sub" / "b.txt").write_text("3")):
        edit()
        assert ran(run([*DVC, "repro", "preprocess"], repo, env)) == {"inputs", "preprocess"}
        assert ran(run([*DVC, "repro", "preprocess"], repo, env)) == {"inputs"}

    set_params(repo, {"data": {"novel_dir": "missing"}})
    out = subprocess.run([*DVC, "repro", "preprocess"], cwd=repo, env=env, text=True,
                         capture_output=True, check=False)
    assert out.returncode != 0
    assert "error: data.novel_dir: 'missing' not found" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert os.path.isdir(repo / "data" / "processed")
