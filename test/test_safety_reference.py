"""Reference tracking: chunk validation, interpolation, feed-forward, feedback, staleness."""

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.reference import (
    ActionChunk, ChunkError, matrix_to_rotvec, quat_to_matrix, ReferenceTracker, slerp)

TOL = 1e-2


@pytest.fixture(scope='module')
def tracking():
    """Return the tracking section of the YAML config."""
    return SafetyConfig.load().tracking


def _chunk(stamp=0.0, times=(0.1, 0.2), positions=((0.5, 0.0, 0.2), (0.52, 0.0, 0.2)),
           quats=((1.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))):
    return ActionChunk.validated(stamp, times, positions, quats, TOL)


@pytest.mark.parametrize('change, match', [
    (dict(times=(0.1, 0.1)), 'increasing'),
    (dict(times=(0.2, 0.1)), 'increasing'),
    (dict(times=(-0.1, 0.1)), 'increasing'),
    (dict(positions=((0.5, 0.0, np.nan), (0.5, 0.0, 0.2))), 'NaN'),
    (dict(stamp=np.inf), 'NaN'),
    (dict(positions=((0.5, 0.0), (0.5, 0.0))), 'shapes'),
    (dict(quats=((1.0, 0.0, 0.0, 0.0),)), 'shapes'),
    (dict(quats=((1.0, 0.0, 0.0, 0.2), (1.0, 0.0, 0.0, 0.0))), 'unit'),
    (dict(times=(), positions=np.zeros((0, 3)), quats=np.zeros((0, 4))), 'no waypoints'),
    (dict(positions='abc'), 'numeric'),
])
def test_malformed_chunks_are_rejected(change, match):
    """Every malformation raises ChunkError (a ValueError) with a clear message."""
    with pytest.raises(ChunkError, match=match):
        _chunk(**change)
    assert issubclass(ChunkError, ValueError)


def test_quaternions_are_normalised_within_tolerance():
    """A quaternion off unit length by less than the tolerance is accepted and normalised."""
    chunk = _chunk(quats=((1.005, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.999)))
    np.testing.assert_allclose(np.linalg.norm(chunk.orientations, axis=1), 1.0)


def test_rotation_helpers_match_scipy():
    """quat_to_matrix / matrix_to_rotvec / slerp agree with scipy, also near pi."""
    rng = np.random.default_rng(0)
    rotations = list(Rotation.random(200, random_state=1))
    rotations += [Rotation.from_rotvec(a * np.pi * (1 - 1e-7) * v / np.linalg.norm(v))
                  for a, v in zip([1.0] * 5, rng.normal(size=(5, 3)))]
    for rot in rotations:
        quat = rot.as_quat()
        np.testing.assert_allclose(quat_to_matrix(quat), rot.as_matrix(), atol=1e-12)
        np.testing.assert_allclose(Rotation.from_rotvec(matrix_to_rotvec(rot.as_matrix()))
                                   .as_matrix(), rot.as_matrix(), atol=1e-6)
    a, b = Rotation.random(2, random_state=3)
    from scipy.spatial.transform import Slerp
    ref = Slerp([0, 1], Rotation.concatenate([a, b]))([0.3]).as_matrix()[0]
    np.testing.assert_allclose(quat_to_matrix(slerp(a.as_quat(), b.as_quat(), 0.3)), ref,
                               atol=1e-9)
    # Opposite-sign representation of the same target takes the same (short) arc.
    np.testing.assert_allclose(quat_to_matrix(slerp(a.as_quat(), -b.as_quat(), 0.3)), ref,
                               atol=1e-9)


def test_interpolation_and_feedforward(tracking):
    """Between waypoints: linear position, slerped orientation, path velocity as feed-forward."""
    rot0 = Rotation.from_euler('xyz', [np.pi, 0.0, 0.0])
    rot1 = Rotation.from_euler('z', 0.1) * rot0
    tracker = ReferenceTracker(tracking)
    tracker.set_chunk(_chunk(stamp=10.0, times=(0.1, 0.2),
                             positions=((0.5, 0.0, 0.2), (0.52, -0.01, 0.2)),
                             quats=(rot0.as_quat(), rot1.as_quat())))
    position, quat, v_ff, w_ff = tracker.target(10.15)
    np.testing.assert_allclose(position, [0.51, -0.005, 0.2])
    np.testing.assert_allclose(v_ff, [0.2, -0.1, 0.0])
    np.testing.assert_allclose(w_ff, [0.0, 0.0, 1.0], atol=1e-9)   # 0.1 rad in 0.1 s about z
    mid = Rotation.from_euler('z', 0.05) * rot0
    np.testing.assert_allclose(quat_to_matrix(quat), mid.as_matrix(), atol=1e-9)
    # On the path, the desired twist is exactly the feed-forward.
    twist = tracker.desired_twist(10.15, position, quat_to_matrix(quat))
    np.testing.assert_allclose(twist, np.concatenate([v_ff, w_ff]), atol=1e-9)


def test_feedback_direction_gain_and_clamp(tracking):
    """Off the path, feedback points at the target with the configured gain, then clamps."""
    tracker = ReferenceTracker(tracking)
    quat = np.array([1.0, 0.0, 0.0, 0.0])
    tracker.set_chunk(_chunk(times=(0.1,), positions=((0.5, 0.0, 0.2),), quats=(quat,)))
    rot = quat_to_matrix(quat)
    small = tracker.desired_twist(0.05, np.array([0.49, 0.0, 0.2]), rot)
    np.testing.assert_allclose(small[:3], [0.01 * tracking.linear_gain_per_s, 0.0, 0.0])
    np.testing.assert_allclose(small[3:], 0.0, atol=1e-12)
    far = tracker.desired_twist(0.05, np.array([-0.5, 0.0, 0.2]), rot)
    assert np.linalg.norm(far[:3]) == pytest.approx(tracking.max_linear_speed_mps)
    assert far[0] > 0.0
    tilted = Rotation.from_euler('y', 1.0).as_matrix() @ rot
    turn = tracker.desired_twist(0.05, np.array([0.5, 0.0, 0.2]), tilted)
    assert np.linalg.norm(turn[3:]) == pytest.approx(min(tracking.max_angular_speed_radps,
                                                         tracking.angular_gain_per_s))
    assert turn[4] < 0.0   # rotates back about -y


def test_holds_ends_and_goes_stale(tracking):
    """Before the first / after the last waypoint the end pose is held; old chunks expire."""
    tracker = ReferenceTracker(tracking)
    assert tracker.desired_twist(0.0, np.zeros(3), np.eye(3)) is None
    chunk = _chunk(stamp=1.0)
    tracker.set_chunk(chunk)
    before = tracker.target(1.0)
    np.testing.assert_allclose(before[0], chunk.positions[0])
    assert np.all(before[2] == 0.0)
    after = tracker.target(1.0 + 0.25)
    np.testing.assert_allclose(after[0], chunk.positions[-1])
    timeout = tracking.chunk_timeout_s
    assert not tracker.is_stale(1.0 + timeout)
    assert tracker.is_stale(1.0 + timeout + 1e-6)
    assert tracker.desired_twist(1.0 + timeout + 1e-3, np.zeros(3), np.eye(3)) is None
    tracker.clear()
    assert tracker.target(1.0) is None


def test_timeout_comes_from_config(tracking):
    """The stale threshold is the configured chunk_timeout_s."""
    tracker = ReferenceTracker(dataclasses.replace(tracking, chunk_timeout_s=0.05))
    tracker.set_chunk(_chunk(stamp=0.0))
    assert tracker.target(0.04) is not None and tracker.target(0.06) is None


def test_set_chunk_arrays_validates_with_config_tolerance(tracking):
    """The tracker's own entry point applies the YAML quaternion tolerance."""
    tracker = ReferenceTracker(tracking)
    with pytest.raises(ChunkError):
        tracker.set_chunk_arrays(0.0, [0.1], [[0.5, 0.0, 0.2]], [[0.0, 0.0, 0.0, 0.5]])
    assert tracker.chunk is None
    chunk = tracker.set_chunk_arrays(0.0, [0.1], [[0.5, 0.0, 0.2]], [[0.0, 0.0, 0.0, 1.0]])
    assert tracker.chunk is chunk
