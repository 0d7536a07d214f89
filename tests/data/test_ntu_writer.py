"""The NTU `.skeleton` writer: structure, every field, float format, projections."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.synthetic.ntu_writer import (
    DEPTH_C,
    DEPTH_F,
    Body,
    format_skeleton,
    project,
    write_skeleton,
)

REAL_BODY_ID = 72057594037931101   # the body ID of NTU's S001C001P001R001A001


def _body(rng: np.random.Generator, body_id: int = REAL_BODY_ID) -> Body:
    xyz = rng.normal(0, 0.4, (25, 3)) + [0.0, 0.0, 3.0]
    q = rng.normal(size=(25, 4))
    return Body(body_id=body_id, xyz=xyz, orientation=q / np.linalg.norm(q, axis=1, keepdims=True),
                tracking=rng.integers(1, 3, 25), clipped_edges=8, hand_left=(1, 2),
                hand_right=(0, 1), lean=(0.02764709, -0.05745083))


def walk(text: str) -> list[list[list[str]]]:
    """A tiny independent tokeniser: frames -> bodies -> the body line + 25 joint lines, each a
    list of fields; asserts the line layout of DESIGN.md section 2 on the way."""
    lines = text.split("\n")
    assert lines[-1] == "", "file ends with a newline"
    it = iter(lines[:-1])
    frames = []
    for _ in range(int(next(it))):
        bodies = []
        for _ in range(int(next(it))):
            body = [next(it).split(" ")]
            assert len(body[0]) == 10
            assert next(it) == "25"
            body += [next(it).split(" ") for _ in range(25)]
            assert all(len(f) == 12 for f in body[1:])
            bodies.append(body)
        frames.append(bodies)
    assert next(it, None) is None, "no trailing lines"
    return frames


def test_every_line_has_the_ntu_field_counts():
    rng = np.random.default_rng(0)
    frames = [[_body(rng)], [], [_body(rng), _body(rng, REAL_BODY_ID + 7)]]
    parsed = walk(format_skeleton(frames))
    assert [len(f) for f in parsed] == [1, 0, 2]
    assert parsed[2][1][0][0] == str(REAL_BODY_ID + 7)


def test_body_fields_are_written_in_order():
    rng = np.random.default_rng(1)
    (body_line, *_), = walk(format_skeleton([[_body(rng)]]))[0]
    assert body_line == ["72057594037931101", "8", "1", "2", "0", "1", "0", "0.02764709",
                         "-0.05745083", "2"]


@pytest.mark.parametrize("value, text", [(-9.276937e-05, "-9.276937E-05"), (0.0, "0"),
                                         (-0.0, "0"), (1026.0, "1026"), (0.2189543, "0.2189543"),
                                         (3.785547, "3.785547"), (1e-5, "1E-05")])
def test_floats_are_printed_like_the_kinect_sdk(value, text):
    xyz = np.full((25, 3), 1.0)
    xyz[0, 0] = value
    body = Body(body_id=1, xyz=xyz)
    first_joint = walk(format_skeleton([[body]]))[0][0][1]
    assert first_joint[0] == text


def test_nan_is_written_as_dotnet_nan():
    xyz = np.ones((25, 3))
    xyz[3, 1] = np.nan
    text = format_skeleton([[Body(body_id=1, xyz=xyz)]])
    assert walk(text)[0][0][4][1] == "NaN" and "NAN" not in text


def test_depth_and_colour_coordinates_are_pinhole_projections():
    rng = np.random.default_rng(2)
    body = _body(rng)
    joints = np.array(walk(format_skeleton([[body]]))[0][0][1:], dtype=float)
    x, y, z = joints[:, 0], joints[:, 1], joints[:, 2]
    np.testing.assert_allclose(joints[:, 3], DEPTH_C[0] + DEPTH_F * x / z, rtol=1e-5)
    np.testing.assert_allclose(joints[:, 4], DEPTH_C[1] - DEPTH_F * y / z, rtol=1e-5)
    _, colour = project(body.xyz)
    np.testing.assert_allclose(joints[:, 5:7], colour, rtol=1e-5)
    # A body 3 m in front of the sensor lands inside both images.
    centre_depth, centre_colour = project(np.array([0.0, 0.0, 3.0]))
    assert 0 < centre_depth[0] < 512 and 0 < centre_depth[1] < 424
    assert 0 < centre_colour[0] < 1920 and 0 < centre_colour[1] < 1080


def test_joint_values_round_trip_at_float32_precision():
    rng = np.random.default_rng(3)
    body = _body(rng)
    joints = np.array(walk(format_skeleton([[body]]))[0][0][1:], dtype=float)
    np.testing.assert_allclose(joints[:, :3], body.xyz, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(joints[:, 7:11], body.orientation, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(joints[:, 11], body.tracking)


def test_write_skeleton_writes_the_formatted_text(tmp_path):
    rng = np.random.default_rng(4)
    frames = [[_body(rng)], [_body(rng)]]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(path, frames)
    assert path.read_text() == format_skeleton(frames)
    assert list(tmp_path.iterdir()) == [path]     # no temporary file left behind


def test_the_project_reader_parses_written_files(tmp_path):
    from pipeline.data.ntu import read_skeleton

    rng = np.random.default_rng(5)
    frames = [[_body(rng)], [], [_body(rng), _body(rng, REAL_BODY_ID + 1)]]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(path, frames)
    raw = read_skeleton(path)
    assert raw.body_counts.tolist() == [1, 0, 2]
    assert raw.body_ids == [REAL_BODY_ID, REAL_BODY_ID, REAL_BODY_ID + 1]
    np.testing.assert_allclose(raw.joints[2], frames[2][1].xyz, rtol=1e-6, atol=1e-7)
