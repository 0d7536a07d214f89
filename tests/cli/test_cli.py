"""`python -m pipeline ...`: user errors are one line on stderr and exit status 2."""

from pathlib import Path

import pytest

from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, message", [
    (["inspect", "missing.skeleton"], "missing.skeleton: cannot read"),
    (["import-weights", "--format", "mamp", "missing.pth", "out.pt"], "missing.pth: checkpoint file not found"),
    (["export-weights", "--format", "stars", "missing.pt", "out.pth"], "missing.pt: checkpoint file not found"),
    (["import-data", "--format", "npz", "missing.npz", "--out", "store"], "missing.npz: file not found"),
    (["export-data", "--store", "nostore", "--out", "x.npz"], "nostore/meta.json: missing"),
    (["synth", "--out", "s", "--performers", "1"], "synth.performers: 1 is invalid"),
    (["preset-args", "ntu61-xsub"], "preset 'ntu61-xsub' not found"),
    (["worker", "pretrain", "--node-rank", "1"], "dist.nnodes: 1 in "),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = ["--params", str(ROOT / "params.yaml")]
    assert main(params + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "store").exists()


def test_preset_args_prints_dvc_set_flags(capsys):
    assert main(["--params", str(ROOT / "params.yaml"), "preset-args", "ntu60-xsub"]) == 0
    out = capsys.readouterr().out
    assert "-S data.source=ntu60" in out and "-S model.depth=8" in out
