"""The synthetic transfer target: written in the PKU-MMD II layout, read by the real reader."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import parse_params
from pipeline.data.pku import convert_pku, read_labels, read_skeleton
from pipeline.data.store import Store
from pipeline.data.synthetic.actions import ACTIONS
from pipeline.data.synthetic.pku_writer import generate_pku, target_actions

PARAMS = parse_params({"synth": {"min_frames": 12, "max_frames": 20},
                       "transfer": {"synth_classes": 3, "synth_performers": 3}})


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pku") / "raw"
    generate_pku(PARAMS.synth, PARAMS.transfer, out)
    return out


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.txt")))
                          ).hexdigest()


def test_files_are_in_the_phase_two_layout(target):
    videos = sorted(p.stem for p in (target / "skeleton").glob("*.txt"))
    assert videos == [f"A{p:02d}N01-{v}" for p in (1, 2, 3) for v in "LMR"]
    frames = read_skeleton(target / "skeleton" / "A01N01-M.txt")            # (T, 2, 25, 3)
    assert (target / "skeleton" / "A01N01-M.txt").read_text()[0] == " "   # as phase II
    rows, issues = read_labels(target / "label" / "A01N01-M.txt", len(frames), 51)
    assert not issues and sorted(r.label for r in rows) == [0, 1, 2]
    for r in rows:                                   # each labelled range holds a performance
        assert (frames[r.start:r.end, 0] != 0).any(axis=(1, 2)).all()
    lines = (target / "cross_subject_v2.txt").read_text().splitlines()
    assert len(lines) == 4 and all(v.endswith(("L", "M", "R")) for v in lines[1].split(", "))
    assert {v[:3] for v in lines[3].split(", ")} == {"A03"}                # every third subject


def test_the_reader_builds_the_target_store_with_its_own_classes(target, tmp_path):
    for benchmark, test_videos in (("xsub", 3), ("xview", 3)):
        data = dataclasses.replace(PARAMS.transfer, raw_dir=str(target),
                                   benchmark=benchmark).as_data()
        m = convert_pku(data, PARAMS.preprocess, tmp_path / benchmark)
        assert m["videos_converted"] == 9 and not m["issues"]
        assert m["samples"] == {"train": 18, "test": 3 * test_videos, "novel": 0}
    store = Store.open(tmp_path / "xsub")
    assert sorted(np.unique(store.index["label"])) == [0, 1, 2]
    names = json.loads((target / "actions.json").read_text())["labels"]
    assert names == {str(k + 1): ACTIONS[i].name for k, i in enumerate(target_actions(
        PARAMS.transfer))}
    assert names["1"] == ACTIONS[-1].name          # the target's label 1 is not the source's


def test_output_is_deterministic(target, tmp_path):
    generate_pku(PARAMS.synth, PARAMS.transfer, tmp_path / "again")
    assert _digest(tmp_path / "again") == _digest(target)
