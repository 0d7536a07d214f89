"""The synthetic NTU-format dataset: naming, determinism, format, geometry, artifacts,
and (slow) that the classes are learnable but not trivially so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import DataConfig, PreprocessConfig, SynthConfig
from pipeline.core.errors import ConfigError
from pipeline.data.denoise import denoise
from pipeline.data.ntu import parse_name, read_skeleton
from pipeline.data.preprocess import preprocess
from pipeline.data.store import fingerprint
from pipeline.data.synthetic import synth
from pipeline.data.synthetic.actions import ACTIONS
from pipeline.data.synthetic.ntu_writer import format_skeleton
from pipeline.data.synthetic.skeleton_model import BONES, PARENTS, REF_HEIGHT, TABLE_LENGTHS
from tests.data.test_ntu_writer import walk

# 4 base + 2 novel classes: wave right hand, handshake (2p), squat, point | punch other (2p),
# sit down.
TINY = SynthConfig(base_classes=4, novel_classes=2, performers=2, setups=1, replications=1,
                   cameras=3, min_frames=20, max_frames=40, artifact_rate=0.2, damaged_files=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    return out, synth.generate(TINY, out, workers=2)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_one_file_per_setup_camera_performer_replication_class(tiny):
    out, summary = tiny
    names = sorted(p.name for p in out.glob("*.skeleton"))
    expected = sorted(synth.file_name(1, c, p, 1, a) for c in (1, 2, 3) for p in (1, 2)
                      for a in range(1, 7))
    assert names == expected
    assert summary["files"] == 36 and summary["classes"] == 6
    assert summary["bytes"] == sum(p.stat().st_size for p in out.glob("*.skeleton"))
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["dataset.json"])


def test_dataset_json_names_classes_novel_and_two_person_labels(tiny):
    out, _ = tiny
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["class_names"] == [a.name for a in ACTIONS[:6]]
    assert spec["novel_labels"] == [4, 5]
    assert spec["two_person_labels"] == [1, 4]
    assert spec["seed"] == 0


def test_same_config_gives_identical_bytes_for_any_worker_count(tiny, tmp_path):
    out, _ = tiny
    synth.generate(TINY, tmp_path / "again", workers=1)
    assert _files(tmp_path / "again") == _files(out)


def test_another_seed_gives_other_data(tmp_path):
    cfg = dataclasses.replace(TINY, base_classes=2, novel_classes=0, cameras=1)
    synth.generate(cfg, tmp_path / "a")
    synth.generate(dataclasses.replace(cfg, seed=1), tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".skeleton"))


def test_generate_replaces_the_output_directory_whole(tmp_path):
    cfg = dataclasses.replace(TINY, base_classes=2, novel_classes=0, performers=2, cameras=1)
    out = tmp_path / "raw"
    out.mkdir()
    (out / "stale.skeleton").write_text("old")
    synth.generate(cfg, out, workers=1)
    assert not (out / "stale.skeleton").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]    # no temporary directory left


def test_damaged_files_are_skipped_by_category_and_change_no_valid_sample(tmp_path):
    cfg = dataclasses.replace(TINY, base_classes=2, novel_classes=0, cameras=1)
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    synth.generate(cfg, clean, workers=1)
    summary = synth.generate(dataclasses.replace(cfg, damaged_files=3), dirty, workers=1)
    assert summary["damaged_files"] == 3
    valid, with_damaged = _files(clean), _files(dirty)
    assert {n: with_damaged[n] for n in valid} == valid
    damaged = ["S001C001P000R001A001.skeleton", "S001C001P000R001A002.skeleton",
               "S001C001P000R002A001.skeleton"]
    assert sorted(with_damaged.keys() - valid.keys()) == damaged

    def run(raw: Path, out: Path) -> dict:
        return preprocess(DataConfig(source="synthetic", benchmark="xsub", raw_dir=str(raw)),
                          PreprocessConfig(workers=1), out)

    a, b = run(clean, tmp_path / "a"), run(dirty, tmp_path / "b")
    assert b["skipped"] == {"count": 3, "bad_token": 1, "truncated": 1, "wrong_joint_count": 1}
    assert [(Path(i["file"]).name, i["category"]) for i in b["issues"]] == list(
        zip(damaged, ["truncated", "bad_token", "wrong_joint_count"]))
    assert all(i["line"] > 30 for i in b["issues"])  # damaged in the middle of the file
    same = [k for k in a if k not in ("files_seen", "skipped", "issues")]
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")


def test_every_file_has_ntu_field_counts_and_frame_range(tiny):
    out, _ = tiny
    for path in out.glob("*.skeleton"):
        frames = walk(path.read_text())
        assert TINY.min_frames <= len(frames) <= TINY.max_frames
        for bodies in frames:
            for body in bodies:
                assert int(body[0][0]) >= 2**56           # Kinect-style 64-bit body IDs


def test_every_file_reads_and_denoises_to_the_right_number_of_actors(tiny):
    out, _ = tiny
    two_person = set(json.loads((out / "dataset.json").read_text())["two_person_labels"])
    for path in out.glob("*.skeleton"):
        seq, _ = denoise(read_skeleton(path))
        actors = int((np.abs(seq).sum(axis=(0, 2, 3)) > 0).sum())
        assert actors == (2 if parse_name(path).action - 1 in two_person else 1), path.name


def test_cameras_film_the_same_performance_from_different_views(tiny):
    out, _ = tiny
    raws = [read_skeleton(out / synth.file_name(1, c, 2, 1, 3)) for c in (1, 2, 3)]
    assert len({r.frames for r in raws}) == 1
    # Same motion: the skeleton's extent (view-independent) matches across views.
    seqs = [denoise(r)[0][:, 0] for r in raws]                   # actor 1 (T, V, C)
    spans = [np.linalg.norm(s[:, 3] - s[:, 15], axis=-1).mean() for s in seqs]
    assert max(spans) - min(spans) < 0.03
    assert not np.allclose(seqs[0][:5], seqs[1][:5], atol=0.05)


@pytest.mark.parametrize("label", range(len(ACTIONS)))
def test_bone_lengths_match_the_performer_table_at_every_frame(label):
    cfg = SynthConfig(seed=3)
    pid = 1 + label % cfg.performers
    people = [synth.performer(cfg, pid)]
    if ACTIONS[label].actors == 2:
        people.append(synth.performer(cfg, synth.partner_of(cfg, pid, 1, label + 1)))
    actors = synth.stage(cfg, 1, pid, 1, label)               # world frame, before noise
    assert len(actors) == ACTIONS[label].actors
    for person, (xyz, _) in zip(people, actors):
        assert 1.5 <= person.height <= 1.95
        scale = person.lengths[1:] / (TABLE_LENGTHS[1:] * person.height / REF_HEIGHT)
        assert np.all((scale > 0.9) & (scale < 1.1))           # the table, scaled by height
        for child, parent in BONES:
            # The segment of bone (child, parent) ends at whichever is farther from the root.
            seg = child if PARENTS[child] == parent else parent
            length = np.linalg.norm(xyz[:, child] - xyz[:, parent], axis=-1)
            np.testing.assert_allclose(length, person.lengths[seg], rtol=0.01)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_artifacts_appear_at_the_configured_rate(rate):
    cfg = dataclasses.replace(SynthConfig(), artifact_rate=rate)
    actors = synth.stage(cfg, 1, 1, 1, 0)               # one person waving
    cam = synth.camera(cfg, 1, 2)
    n, seen, observed = 300, {a: 0 for a in synth.ARTIFACTS}, {"empty": 0, "extra_ids": 0}
    for i in range(n):
        frames, applied = synth.record(cfg, actors, cam, np.random.default_rng([9, i]))
        for a in applied:
            seen[a] += 1
        has_empty = any(len(f) == 0 for f in frames)
        extra_ids = len({b.body_id for f in frames for b in f}) > 1
        assert has_empty == ("empty" in applied)
        assert extra_ids == bool(applied & {"ghost", "wide", "id_switch"})
        observed["empty"] += has_empty
        observed["extra_ids"] += extra_ids
    for kind, count in seen.items():
        assert abs(count / n - rate) < 0.08, kind
    assert abs(observed["extra_ids"] / n - (1 - (1 - rate) ** 3)) < 0.1


def test_nan_rate_writes_nan_joints_like_a_few_real_files():
    cfg = dataclasses.replace(SynthConfig(), nan_rate=1.0, artifact_rate=0.0)
    frames, _ = synth.record(cfg, synth.stage(cfg, 1, 1, 1, 0), synth.camera(cfg, 1, 1),
                             np.random.default_rng(0))
    assert sum(np.isnan(b.xyz).any(-1).sum() for f in frames for b in f) == 1
    assert "NaN" in format_skeleton(frames)


def test_too_many_classes_is_a_config_error(tmp_path):
    cfg = dataclasses.replace(SynthConfig(), base_classes=len(ACTIONS), novel_classes=1)
    with pytest.raises(ConfigError, match="synth.base_classes"):
        synth.generate(cfg, tmp_path / "raw")


def test_default_config_targets_about_two_thousand_files():
    cfg = SynthConfig()
    files = (cfg.setups * cfg.cameras * cfg.performers * cfg.replications
             * (cfg.base_classes + cfg.novel_classes))
    assert 2000 <= files <= 2500
    assert sum(a.actors == 2 for a in synth.classes(cfg)[:cfg.base_classes]) >= 2
    assert sum(a.actors == 2 for a in synth.classes(cfg)[cfg.base_classes:]) >= 1


# --------------------------------------------------------------------------- learnability


def _features(path: Path) -> np.ndarray:
    """Hand-crafted, view-agnostic-ish features of actor 1: pose and per-joint speed statistics
    after centring on the spine base, on 3 temporal segments."""
    seq, _ = denoise(read_skeleton(path))
    x = seq[:, 0] - seq[:, 0, :1]                                # (T, V, C) centred
    speed = np.linalg.norm(np.diff(x, axis=0), axis=-1)          # (T-1, V)
    height = x[:, :, 1]                                           # (T, V) joint heights
    feats = []
    for part in np.array_split(np.arange(len(speed)), 3):
        feats += [speed[part].mean(0), speed[part].std(0), height[part].mean(0),
                  np.linalg.norm(x[part], axis=-1).mean(0)]
    return np.concatenate(feats)


@pytest.mark.slow
def test_nearest_neighbour_on_simple_features_is_well_above_chance_but_not_perfect(tmp_path):
    cfg = dataclasses.replace(SynthConfig(), performers=8, setups=1, cameras=2, damaged_files=0)
    synth.generate(cfg, tmp_path / "raw", workers=2)
    paths = sorted((tmp_path / "raw").glob("*.skeleton"))
    X = np.stack([_features(p) for p in paths])
    y = np.array([parse_name(p).action for p in paths])
    train = np.array([parse_name(p).performer in (1, 2, 4, 5) for p in paths])   # NTU X-sub
    X = (X - X[train].mean(0)) / (X[train].std(0) + 1e-6)
    d = ((X[~train, None] - X[None, train]) ** 2).sum(-1)
    acc = float((y[train][d.argmin(1)] == y[~train]).mean())
    chance = 1 / len(set(y))
    print(f"1-NN cross-subject accuracy {acc:.3f} (chance {chance:.3f})")
    assert 5 * chance < acc < 0.98, acc
