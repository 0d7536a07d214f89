"""Train / test transforms: crop + resize + rotation as in the MAMP/STARS release."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.data.transforms import (
    TestTransform,
    TrainTransform,
    resize,
    rotation_matrix,
    test_transform,
    train_transform,
)


def sequence(rng, T=100, actors=2):
    x = rng.normal(size=(T, 2, 25, 3)).astype(np.float32)
    x[:, actors:] = 0
    return x


def ramp(T):
    """Every coordinate of frame t equals t + 1 (so crops are visible after resizing)."""
    return np.broadcast_to(np.arange(1, T + 1, dtype=np.float32)[:, None, None, None],
                           (T, 2, 25, 3)).copy()


def test_resize_equals_the_release_bilinear_resize():
    rng = np.random.default_rng(0)
    for T, out in ((37, 120), (300, 120), (120, 120)):
        x = sequence(rng, T)
        # release: (C, T, V, M) -> (C*V*M, T) image, bilinear, align_corners=False
        img = torch.from_numpy(x.transpose(3, 0, 2, 1).copy()).permute(0, 2, 3, 1)
        img = img.reshape(1, 1, -1, T)
        ref = F.interpolate(img, size=(img.shape[2], out), mode="bilinear", align_corners=False)
        ref = ref.reshape(3, 25, 2, out).permute(2, 3, 1, 0).numpy()  # -> (M, T, V, C)
        np.testing.assert_allclose(resize(x, out), ref, rtol=1e-6, atol=1e-7)


def test_test_transform_centre_crops_95_percent_of_valid_frames():
    rng = np.random.default_rng(1)
    x = sequence(rng, 100)
    y = test_transform(x, 120)
    assert y.shape == (2, 120, 25, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y, resize(x[2:98], 120))  # bias int(0.05 * 100 / 2) = 2


def test_frames_with_all_zero_coordinates_are_not_valid():
    rng = np.random.default_rng(2)
    x = sequence(rng, 60)
    padded = np.concatenate([np.zeros_like(x[:5]), x[:30], np.zeros_like(x[:7]), x[30:]])
    np.testing.assert_array_equal(test_transform(padded, 40), test_transform(x, 40))


@pytest.mark.parametrize("T,crop_min,floor,least", [(200, 0.5, 64, 100), (200, 0.1, 64, 64),
                                                     (30, 0.5, 64, 30)])
def test_train_crop_keeps_at_least_the_fraction_and_the_floor(T, crop_min, floor, least):
    for seed in range(20):
        y = train_transform(ramp(T), np.random.default_rng(seed), 120, crop_min, floor, rotate=0)
        first, last = y[0, 0, 0, 0], y[0, -1, 0, 0]
        assert 1 <= first and last <= T
        # a crop of L frames resized to 120 spans at least L - 1 - L/120 frames of the ramp
        assert last - first >= least - 1 - least / 120


def test_train_transform_without_crop_or_rotation_is_a_plain_resize():
    x = sequence(np.random.default_rng(3), 90)
    y = train_transform(x, np.random.default_rng(0), 120, crop_min=1.0, rotate=0.0)
    np.testing.assert_array_equal(y, resize(x, 120))


def test_rotation_preserves_lengths_and_keeps_absent_actor_zero():
    x = sequence(np.random.default_rng(4), 90, actors=1)
    plain = train_transform(x, np.random.default_rng(7), 120, crop_min=1.0, rotate=0.0)
    y = train_transform(x, np.random.default_rng(7), 120, crop_min=1.0, rotate=0.3)
    assert not np.allclose(y, plain)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(plain, axis=-1),
                               rtol=1e-5, atol=1e-6)
    assert (y[1] == 0).all()


def test_rotation_matrix_is_rz_ry_rx_with_the_release_signs():
    a = 0.2
    x, y, z = np.eye(3)
    # release: rz rows (c, s, 0), (-s, c, 0), (0, 0, 1), applied as R @ p
    np.testing.assert_allclose(rotation_matrix(np.array([0, 0, a])) @ x,
                               [np.cos(a), -np.sin(a), 0], atol=1e-7)
    np.testing.assert_allclose(rotation_matrix(np.array([0, a, 0])) @ z,
                               [-np.sin(a), 0, np.cos(a)], atol=1e-7)
    np.testing.assert_allclose(rotation_matrix(np.array([a, 0, 0])) @ y,
                               [0, np.cos(a), -np.sin(a)], atol=1e-7)
    angles = np.array([0.1, -0.2, 0.25])
    composed = (rotation_matrix(np.array([0, 0, angles[2]]))
                @ rotation_matrix(np.array([0, angles[1], 0]))
                @ rotation_matrix(np.array([angles[0], 0, 0])))
    np.testing.assert_allclose(rotation_matrix(angles), composed, atol=1e-6)


def test_same_seed_same_output_and_bound_callables_match_functions():
    x = sequence(np.random.default_rng(5), 150)
    a = TrainTransform(120)(x, np.random.default_rng(11))
    b = train_transform(x, np.random.default_rng(11), 120)
    c = train_transform(x, np.random.default_rng(12), 120)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(TestTransform(120)(x, None), test_transform(x, 120))
