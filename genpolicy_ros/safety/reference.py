"""Turn a policy's Cartesian action chunk into a desired EE twist at control rate.

A chunk is a short timed path of TCP poses, stamped with the observation time it was computed
from. At time ``t`` the tracker interpolates the chunk (linear in position, slerp in orientation),
takes the path's own velocity as feed-forward, adds pose-error feedback, and clamps the result.
A chunk older than ``chunk_timeout_s`` yields no reference at all: the filter then brings the arm
to rest instead of chasing a stale plan. So does one stamped further in the future than
``max_future_stamp_s`` (a clock fault: it would otherwise never grow stale), and a chunk older
than the current fresh one (a reordered or replayed message) never replaces it.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from genpolicy_ros.safety.config import TrackingConfig


class ChunkError(ValueError):
    """An action chunk is malformed (shapes, non-finite values, quaternions, time order)."""


@dataclass(frozen=True)
class ActionChunk:
    """Timed TCP pose targets in the world frame.

    ``stamp`` [s] is the observation time; waypoint ``i`` is due at ``stamp +
    times_from_start[i]``. Orientations are quaternions ``xyzw`` (ROS order).
    """

    stamp: float
    times_from_start: np.ndarray  # (H,) [s], strictly increasing, >= 0
    positions: np.ndarray         # (H, 3) [m]
    orientations: np.ndarray      # (H, 4) xyzw

    @classmethod
    def validated(cls, stamp: float, times_from_start, positions, orientations,
                  quaternion_norm_tolerance: float) -> 'ActionChunk':
        """Return a checked chunk with unit quaternions, or raise :class:`ChunkError`."""
        try:
            stamp = float(stamp)
            times = np.array(times_from_start, dtype=float).reshape(-1)
            pos = np.array(positions, dtype=float)
            quat = np.array(orientations, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ChunkError(f'chunk fields must be numeric: {exc}') from exc
        horizon = times.size
        if horizon < 1:
            raise ChunkError('chunk has no waypoints')
        if pos.shape != (horizon, 3) or quat.shape != (horizon, 4):
            raise ChunkError(f'chunk shapes disagree: times ({horizon},), positions {pos.shape} '
                             f'(want ({horizon}, 3)), orientations {quat.shape} '
                             f'(want ({horizon}, 4))')
        if not (np.isfinite(stamp) and np.all(np.isfinite(times)) and np.all(np.isfinite(pos))
                and np.all(np.isfinite(quat))):
            raise ChunkError('chunk contains NaN or Inf')
        if np.any(times < 0.0) or np.any(np.diff(times) <= 0.0):
            raise ChunkError(f'times_from_start must be >= 0 and strictly increasing, '
                             f'got {times.tolist()}')
        norms = np.linalg.norm(quat, axis=1)
        if np.any(np.abs(norms - 1.0) > quaternion_norm_tolerance):
            raise ChunkError(f'orientations must be unit quaternions (tolerance '
                             f'{quaternion_norm_tolerance}), norms {norms.round(4).tolist()}')
        return cls(stamp=stamp, times_from_start=times, positions=pos,
                   orientations=quat / norms[:, None])


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Return the rotation matrix of a unit quaternion ``xyzw``."""
    x, y, z, w = quat
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_rotvec(rot: np.ndarray) -> np.ndarray:
    """Return the rotation vector (axis * angle, angle in [0, pi]) of a rotation matrix."""
    cos = np.clip(0.5 * (np.trace(rot) - 1.0), -1.0, 1.0)
    angle = float(np.arccos(cos))
    axis_sin = 0.5 * np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0],
                               rot[1, 0] - rot[0, 1]])
    if angle < 1e-6:
        return axis_sin  # sin(angle) ~ angle
    if np.pi - angle > 1e-4:
        return axis_sin * (angle / np.sin(angle))
    # Near pi the antisymmetric part vanishes: read the axis off the symmetric part.
    sym = 0.5 * (rot + np.eye(3))
    col = int(np.argmax(np.diag(sym)))
    axis = sym[:, col] / np.sqrt(max(sym[col, col], 1e-12))
    if axis_sin @ axis < 0.0:
        axis = -axis
    return axis / np.linalg.norm(axis) * angle


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (shortest arc), ``s`` in [0, 1]."""
    dot = float(q0 @ q1)
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        out = q0 + s * (q1 - q0)
        return out / np.linalg.norm(out)
    theta = np.arccos(dot)
    return (np.sin((1.0 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)


def _clamp_norm(vec: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return vec * (limit / norm) if norm > limit else vec


class ReferenceTracker:
    """Hold the current chunk and produce the desired EE twist ``[v; w]`` (world axes)."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self.chunk: Optional[ActionChunk] = None

    def set_chunk(self, chunk: ActionChunk) -> None:
        """Replace the current chunk (``ActionChunk.validated`` does the checking)."""
        self.chunk = chunk

    def set_chunk_arrays(self, stamp: float, times_from_start, positions, orientations,
                         now: Optional[float] = None) -> ActionChunk:
        """Validate raw arrays into a chunk and make it current; raise :class:`ChunkError`.

        With the receiving clock ``now`` [s] the stamp is checked as well: a chunk that is
        already stale, stamped in the future, or older than the current fresh chunk is refused
        instead of being silently dropped or, worse, replacing a newer plan.
        """
        chunk = ActionChunk.validated(stamp, times_from_start, positions, orientations,
                                      self.config.quaternion_norm_tolerance)
        if now is not None:
            self._check_stamp(chunk.stamp, float(now))
        self.chunk = chunk
        return chunk

    def _check_stamp(self, stamp: float, now: float) -> None:
        cfg = self.config
        if stamp - now > cfg.max_future_stamp_s:
            raise ChunkError(f'chunk stamped {stamp - now:.3f} s in the future (clock fault?)')
        if now - stamp > cfg.chunk_timeout_s:
            raise ChunkError(f'chunk is {now - stamp:.3f} s old on arrival (timeout '
                             f'{cfg.chunk_timeout_s} s)')
        current = self.chunk
        if current is not None and stamp < current.stamp and not self.is_stale(now):
            raise ChunkError(f'chunk is {current.stamp - stamp:.3f} s older than the current '
                             'one (reordered or replayed)')

    def clear(self) -> None:
        """Drop the current chunk (no reference until the next one)."""
        self.chunk = None

    def is_stale(self, now: float) -> bool:
        """Whether there is no chunk, or it is older than ``chunk_timeout_s`` at ``now``.

        A chunk whose stamp lies more than ``max_future_stamp_s`` ahead of ``now`` counts as
        stale too: after the clock jumped back it would otherwise stay "fresh" for as long as
        the jump.
        """
        if self.chunk is None:
            return True
        age = now - self.chunk.stamp
        return age > self.config.chunk_timeout_s or -age > self.config.max_future_stamp_s

    def target(self, now: float) -> Optional[tuple]:
        """Return ``(position, quaternion, linear_ff, angular_ff)`` of the chunk at ``now``.

        Before the first waypoint the first pose is held and after the last one the last pose,
        both without feed-forward. ``None`` when stale.
        """
        if self.is_stale(now):
            return None
        chunk = self.chunk
        tau = now - chunk.stamp
        times = chunk.times_from_start
        zero = np.zeros(3)
        if chunk.times_from_start.size == 1 or tau <= times[0]:
            return chunk.positions[0].copy(), chunk.orientations[0].copy(), zero, zero
        if tau >= times[-1]:
            return chunk.positions[-1].copy(), chunk.orientations[-1].copy(), zero, zero
        i = int(np.searchsorted(times, tau, side='right')) - 1
        span = times[i + 1] - times[i]
        s = (tau - times[i]) / span
        p0, p1 = chunk.positions[i], chunk.positions[i + 1]
        q0, q1 = chunk.orientations[i], chunk.orientations[i + 1]
        position = p0 + s * (p1 - p0)
        quat = slerp(q0, q1, s)
        r0 = quat_to_matrix(q0)
        # Slerp turns at a constant rate about a fixed axis: log(R0' R1) / span, in world axes.
        angular = r0 @ matrix_to_rotvec(r0.T @ quat_to_matrix(q1)) / span
        return position, quat, (p1 - p0) / span, angular

    def desired_twist(self, now: float, ee_pos: np.ndarray,
                      ee_rot: np.ndarray) -> Optional[np.ndarray]:
        """Return the desired EE twist (6,) ``[v (m/s); w (rad/s)]`` at ``now``, or ``None``.

        ``ee_pos`` (3,) and ``ee_rot`` (3, 3) are the measured TCP pose. ``None`` means there is
        no fresh chunk: the caller must bring the arm to rest.
        """
        target = self.target(now)
        if target is None:
            return None
        position, quat, v_ff, w_ff = target
        cfg = self.config
        rot_err = matrix_to_rotvec(quat_to_matrix(quat) @ np.asarray(ee_rot).T)
        linear = v_ff + cfg.linear_gain_per_s * (position - np.asarray(ee_pos))
        angular = w_ff + cfg.angular_gain_per_s * rot_err
        return np.concatenate([_clamp_norm(linear, cfg.max_linear_speed_mps),
                               _clamp_norm(angular, cfg.max_angular_speed_radps)])
