"""Atomic writes: temporaries are hidden siblings that DVC and git ignore, swept at stage start."""

from pathlib import Path

import pytest

from pipeline.core.io import TEMP_SUFFIX, atomic_dir, atomic_path, sweep_temps

ROOT = Path(__file__).resolve().parents[2]


def test_temporaries_are_hidden_siblings_with_the_ignored_suffix(tmp_path):
    target = tmp_path / "models" / "last.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".last.pt.") and tmp.name.endswith(TEMP_SUFFIX)
        tmp.write_text("new")
    assert target.read_text() == "new"
    with atomic_dir(tmp_path / "store") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(TEMP_SUFFIX)
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "store"]
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("ignore_file", [".dvcignore", ".gitignore"])
def test_the_temporary_suffix_is_ignored_by_dvc_and_git(ignore_file):
    lines = (ROOT / ignore_file).read_text().splitlines()
    assert f"*{TEMP_SUFFIX}" in lines


def test_sweep_removes_only_the_leftovers_of_the_given_outputs(tmp_path):
    ckpt, metrics = tmp_path / "models" / "pretrain", tmp_path / "metrics" / "pretrain.json"
    ckpt.mkdir(parents=True)
    metrics.parent.mkdir()
    (ckpt / "last.pt").write_text("complete")
    leftovers = [ckpt / f".last.pt.abc{TEMP_SUFFIX}",                 # killed checkpoint save
                 ckpt / "sub" / f".x.abc{TEMP_SUFFIX}",
                 tmp_path / "models" / f".pretrain.abc{TEMP_SUFFIX}",  # killed atomic_dir
                 metrics.parent / f".pretrain.json.abc{TEMP_SUFFIX}"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_text("half")
    (tmp_path / "models" / f".pretrain.old{TEMP_SUFFIX}").mkdir()     # atomic_dir's old copy
    leftovers.append(tmp_path / "models" / f".pretrain.old{TEMP_SUFFIX}")
    other = metrics.parent / f".tune.json.abc{TEMP_SUFFIX}"            # another stage's
    other.write_text("half")

    removed = sweep_temps([ckpt, metrics])
    assert sorted(removed) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers)
    assert (ckpt / "last.pt").read_text() == "complete" and other.exists()
    assert sweep_temps([tmp_path / "missing"]) == []
