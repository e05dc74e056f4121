"""Turn the stack's 100 Hz joint commands into a smooth servo reference at the physics rate.

The stack commands ``(q_cmd, dq_cmd)``: a velocity and the position one control period ahead.
Handing ``q_cmd`` to a stiff position servo as a step (what PyBullet's POSITION_CONTROL motor is,
with a ~3 ms time constant at 1 kHz) makes the arm dash to it and wait: measured joint speed
peaks at about twice the commanded one inside every period, and any gap between the commanded
and the real position (a stalled simulator, an arm that was blocked) is closed at the servo's
velocity limit, far above the EE speed cap the safety filter enforced on ``dq_cmd``. A real
arm's driver interpolates instead. :class:`CommandInterpolator` does so: its reference moves at
the commanded velocity, and the commanded position only pulls it along through a small, capped
correction, so the servo never has to move faster than commanded plus that cap. A command is
followed for at most ``coast_periods`` periods: a late successor (a stalled process or link)
must not carry the arm past the position the safety filter checked, so after that the
reference stops at the command's position. Like
libfranka's rate limiter it also keeps the reference's acceleration and jerk within the arm's
limits: a command that steps the velocity (a late tick of a stopping law catching up) becomes
the steepest ramp the arm can do instead of a step.
"""

from typing import Optional, Tuple

import numpy as np


class CommandInterpolator:
    """Integrate the commanded velocity into a servo reference; correct toward positions slowly.

    ``correction_gain_per_s`` [1/s] pulls the reference toward where the newest command says
    the arm should be now; the pull is capped at ``max_correction_radps`` [rad/s] per joint,
    which bounds how much faster than commanded the servo is ever asked to move.
    ``period_s`` is the command period: ``q_cmd`` is due ``period_s`` after the command.
    ``max_accel`` [rad/s^2] and ``max_jerk`` [rad/s^3] (per joint, optional) bound how fast
    the reference's velocity may change. ``coast_periods``: how many periods a command's
    velocity is followed while its successor is late (timer jitter), before the reference
    stops at the command's position.
    """

    def __init__(self, period_s: float, correction_gain_per_s: float,
                 max_correction_radps: float, max_accel: Optional[np.ndarray] = None,
                 max_jerk: Optional[np.ndarray] = None, coast_periods: float = 2.0) -> None:
        if period_s <= 0.0 or correction_gain_per_s < 0.0 or max_correction_radps < 0.0:
            raise ValueError('period_s must be > 0, the correction gain and cap >= 0')
        if coast_periods < 1.0:
            raise ValueError('coast_periods must be >= 1 (a command is due one period ahead)')
        self.period_s = float(period_s)
        self.coast_s = float(coast_periods) * self.period_s
        self.gain = float(correction_gain_per_s)
        self.max_correction = float(max_correction_radps)
        self.max_accel = None if max_accel is None else np.asarray(max_accel, dtype=float)
        self.max_jerk = None if max_jerk is None else np.asarray(max_jerk, dtype=float)
        self._q_ref: Optional[np.ndarray] = None
        self._v = np.zeros(0)
        self._a = np.zeros(0)

    def reset(self, q: Optional[np.ndarray] = None) -> None:
        """Restart the reference at rest at the measured position ``q`` (None: forget it)."""
        self._q_ref = None if q is None else np.array(q, dtype=float)
        if q is not None:
            self._v = np.zeros_like(self._q_ref)
            self._a = np.zeros_like(self._q_ref)

    @property
    def reference(self) -> Optional[np.ndarray]:
        """Return the current servo position reference [rad], or None before the first step."""
        return None if self._q_ref is None else self._q_ref.copy()

    @property
    def state(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Return the reference ``(position [rad], velocity [rad/s])``, or None before a reset."""
        return None if self._q_ref is None else (self._q_ref.copy(), self._v.copy())

    def step(self, q_cmd: np.ndarray, dq_cmd: np.ndarray, age_s: float,
             dt_s: float) -> Tuple[np.ndarray, np.ndarray]:
        """Advance the reference by ``dt_s``; return the servo's ``(position, velocity)`` targets.

        ``age_s`` is how long ago the command ``(q_cmd, dq_cmd)`` was issued. Call
        :meth:`reset` with the measured position first.
        """
        if self._q_ref is None:
            raise RuntimeError('reset(q) with the measured position before the first step')
        q_cmd = np.asarray(q_cmd, dtype=float)
        dq_cmd = np.asarray(dq_cmd, dtype=float)
        # Where the command puts the arm now: its position ramps at dq_cmd into q_cmd, then stays.
        due = q_cmd - dq_cmd * (self.period_s - min(max(age_s, 0.0), self.period_s))
        correction = np.clip(self.gain * (due - self._q_ref), -self.max_correction,
                             self.max_correction)
        # Past its coasting time a command's velocity no longer applies: stop at its position.
        feed_forward = dq_cmd if age_s <= self.coast_s else np.zeros_like(dq_cmd)
        velocity = self._rate_limited(feed_forward + correction, dt_s)
        self._q_ref = self._q_ref + dt_s * velocity
        return self._q_ref.copy(), velocity

    def _rate_limited(self, wanted: np.ndarray, dt_s: float) -> np.ndarray:
        """Return the velocity closest to ``wanted`` within the acceleration and jerk limits."""
        accel = (wanted - self._v) / dt_s
        if self.max_jerk is not None:
            accel = np.clip(accel, self._a - self.max_jerk * dt_s, self._a + self.max_jerk * dt_s)
        if self.max_accel is not None:
            accel = np.clip(accel, -self.max_accel, self.max_accel)
        self._a = accel
        self._v = self._v + dt_s * accel
        return self._v.copy()
