"""Bring a velocity-commanded arm to rest within its joint acceleration limits.

Shared by every stage that must stop the arm (filter fallback, monitor HOLD, driver watchdog), so
there is one stopping law. All joints are scaled by the same factor, which keeps the joint-space
direction of motion: the arm stops along the path it was already on instead of swerving.
"""

from typing import Tuple

import numpy as np


def decelerate(q: np.ndarray, dq: np.ndarray, max_accel: np.ndarray,
               dt: float) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(q_cmd, dq_cmd)`` one step of ``dt`` seconds closer to rest.

    ``dq`` is the velocity currently commanded [rad/s], ``max_accel`` the per-joint deceleration
    bound [rad/s^2] (> 0). The velocity magnitude drops by at most ``max_accel * dt`` per joint;
    ``q_cmd`` integrates the trapezoid so position and velocity targets stay consistent. Once at
    rest it returns ``dq_cmd = 0`` and ``q_cmd = q`` (hold position).
    """
    q = np.asarray(q, dtype=float)
    dq = np.asarray(dq, dtype=float)
    max_accel = np.asarray(max_accel, dtype=float)
    if dt <= 0.0:
        raise ValueError(f'dt must be > 0 s, got {dt}')
    if np.any(max_accel <= 0.0):
        raise ValueError('max_accel must be > 0 for every joint')
    if not (np.all(np.isfinite(dq))):
        # An unknown velocity cannot be ramped down; the only defined command is "hold here".
        return q.copy(), np.zeros_like(q)
    time_to_stop = float(np.max(np.abs(dq) / max_accel))
    if time_to_stop <= dt:
        dq_next = np.zeros_like(dq)
    else:
        dq_next = dq * (1.0 - dt / time_to_stop)
    q_cmd = q + 0.5 * (dq + dq_next) * dt
    return q_cmd, dq_next
