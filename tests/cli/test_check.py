"""`python -m pipeline check`: params.yaml, a preset and the raw data, before DVC runs anything."""

from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.cli import presets
from pipeline.cli.check import check, check_data
from pipeline.core.config import DataConfig, load_params
from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _params(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + text)
    return path


def test_shipped_params_pass_before_the_synthetic_data_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/raw/synthetic here: the synthesize stage writes it
    assert main(["--params", str(ROOT / "params.yaml"), "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_a_typo_is_one_line_naming_the_key(tmp_path, capsys):
    path = _params(tmp_path)
    path.write_text(path.read_text().replace("  epochs: 30", "  epocs: 30"))
    assert main(["--params", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tune.epocs: unknown key") and err.count("\n") == 1


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    path = _params(tmp_path)
    path.write_text(path.read_text().replace("  lr: 0.001\n  layer_decay", "  lr: 1e-3\n  layer_decay"))
    assert load_params(path).tune.lr == pytest.approx(1e-3)


def test_a_preset_reads_exponent_notation_too(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text("tune.lr: 5e-4\npretrain.min_lr: 1E-5\n")
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    params = presets.preset_params("tiny", ROOT / "params.yaml")
    assert (params.tune.lr, params.pretrain.min_lr) == (pytest.approx(5e-4), pytest.approx(1e-5))


def test_a_bad_preset_value_names_the_preset_file_and_key(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("tune.epochs: 0\n")
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"bad.yaml: tune.epochs: 0 is invalid"):
        check(ROOT / "params.yaml", preset="bad")


def test_preset_without_its_data_says_where_the_files_go(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check(ROOT / "params.yaml", preset="ntu60-xsub")
    assert str(err.value) == ("data.raw_dir: data/raw/ntu60 not found; put the .skeleton files "
                              "of nturgbd_skeletons_s001_to_s017 there "
                              '(README.md, "Real datasets")')


def _data(**kw) -> DataConfig:
    return DataConfig(**kw)


@pytest.mark.parametrize("source, make, message", [
    ("ntu60", lambda d: d.mkdir(), "data.raw_dir: {d} holds no .skeleton files"),
    ("ntu120", lambda d: d.write_text(""), "data.raw_dir: {d} is not a folder"),
    ("synthetic", lambda d: None, "data.raw_dir: {d} not found; leave it at data/raw/synthetic"),
    ("npz", lambda d: d.mkdir(), "data.raw_dir: {d} is not a file; point it at a CTR-GCN"),
    ("pku1", lambda d: d.mkdir(), "data.raw_dir: {d}: no PKU-MMD skeleton folder"),
])
def test_missing_raw_data_names_the_key(tmp_path, source, make, message):
    raw = tmp_path / "raw"
    make(raw)
    with pytest.raises(ConfigError) as err:
        check_data(_data(source=source, raw_dir=str(raw)))
    assert str(err.value).startswith(message.format(d=raw)), err.value


def test_raw_data_in_place_passes(tmp_path):
    ntu = tmp_path / "ntu"
    ntu.mkdir()
    (ntu / "S001C001P001R001A001.skeleton").write_text("")
    assert check_data(_data(source="ntu60", raw_dir=str(ntu))) == str(ntu)
    with pytest.raises(ConfigError, match="data.novel_dir: .* holds no .skeleton files"):
        check_data(_data(source="ntu60", raw_dir=str(ntu), novel_dir=str(tmp_path / "none")))
    pku = tmp_path / "pku"
    for sub in ("skeleton", "label"):
        (pku / sub).mkdir(parents=True)
        (pku / sub / "0002-L.txt").write_text("")
    assert check_data(_data(source="pku1", raw_dir=str(pku))) == str(pku)
    with pytest.raises(ConfigError, match="data.pku_split_dir: .*cross_subject_v2.txt not found"):
        check_data(_data(source="pku2", raw_dir=str(pku), pku_split_dir=str(tmp_path)))

