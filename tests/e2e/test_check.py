"""Nothing is lost to a bad parameter: `make repro` and `make exp` check params.yaml, the preset
and the raw data before DVC runs, and a failed `make exp` puts params.yaml back.

Real make, real DVC, in a fresh git copy of the project whose synthetic data already exists
(DVC would delete it before re-running synthesize with a misspelt `synth` key).
"""

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import SynthConfig
from tests.e2e.project import DVC, make_project, run

VENV = Path(sys.executable).parent.parent
TINY_SYNTH = {"base_classes": 2, "novel_classes": 0, "performers": 2, "setups": 1,
              "replications": 1, "cameras": 1, "min_frames": 12, "max_frames": 16}


def _make(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    # -o: never re-run `make setup` (pip) in the shared virtual environment.
    return subprocess.run(["make", f"VENV={VENV}", "-o", f"{VENV}/.installed", *args], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def _snapshot(repo: Path) -> dict[str, str]:
    """Every file outside .git (DVC's own .dvc/tmp included) -> sha256 of its bytes."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file() and ".git" not in p.parts}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("project")
    env = make_project(repo, {"synth": TINY_SYNTH,
                              "eval": {"fewshot": False},   # no novel classes here
                              "tracking": {"enabled": False}})
    run([*DVC, "repro", "synthesize"], repo, env)
    assert any((repo / "data/raw/synthetic").glob("*.skeleton"))
    return repo, env


@pytest.mark.slow
def test_a_typo_in_params_yaml_stops_make_repro_before_any_file_changes(project):
    repo, env = project
    good = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(good.replace("  performers: 2", "  performerz: 2"))
    before = _snapshot(repo)
    try:
        out = _make(repo, env, "repro")
        assert out.returncode != 0
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        allowed = ", ".join(f.name for f in dataclasses.fields(SynthConfig))
        assert errors == [f"error: synth.performerz: unknown key; allowed: {allowed}"]
        assert "dvc" not in out.stdout.split("-m pipeline check")[-1]   # DVC never started
        assert _snapshot(repo) == before
    finally:
        (repo / "params.yaml").write_text(good)


@pytest.mark.slow
def test_make_exp_without_the_data_says_where_it_goes_and_touches_nothing(project):
    repo, env = project
    before = _snapshot(repo)
    out = _make(repo, env, "exp", "PRESET=ntu60-xsub")
    assert out.returncode != 0
    assert ('error: data.raw_dir: data/raw/ntu60 not found; put the .skeleton files of '
            'nturgbd_skeletons_s001_to_s017 there (README.md, "Real datasets")') in out.stderr
    assert "Errno" not in out.stderr and "Traceback" not in out.stderr
    assert _snapshot(repo) == before


@pytest.mark.slow
def test_a_failed_make_exp_puts_params_yaml_back(project):
    """The preset passes the check, then its stage fails inside `dvc exp run`."""
    repo, env = project
    (repo / "presets/reseed.yaml").write_text("synth.seed: 7\n")
    (repo / "stages/synthesize.py").write_text("raise SystemExit('synthesize failed')\n")
    before = (repo / "params.yaml").read_text()
    out = _make(repo, env, "exp", "PRESET=reseed")
    assert out.returncode != 0 and "synthesize failed" in out.stderr
    assert "params.yaml is back as it was" in out.stderr
    assert (repo / "params.yaml").read_text() == before
