"""Commands at ROS rate -> a 1 kHz joint set-point the FCI accepts (pure numpy, no libfranka).

The Franka aborts a motion (``joint_motion_generator_*_discontinuity``) when the commanded
position's second or third difference breaks the acceleration or jerk limit in a single 1 ms
cycle, and a command stream at 100 Hz is a staircase. Three stages, run once per cycle:

1. :class:`SetpointGenerator` tracks the latest command: its velocity feed-forward plus a small,
   capped pull toward where the command says the arm is due now (a command's position is due one
   command period after it arrives), through a velocity loop whose acceleration and jerk are
   clamped to ``limit_scale`` of the limits, inside the FR3's position-based velocity envelope.
   No command, or one older than ``command_timeout_s``: the set-point decelerates to rest and
   holds there.
2. :class:`LowPass`: libfranka's first-order low-pass filter (off at >= 1000 Hz).
3. :class:`PositionRateLimiter` / :class:`VelocityRateLimiter`: libfranka's rate limiter idea,
   the last guarantee that what is sent respects the full limits.

pylibfranka's ``readOnce``/``writeOnce`` interface does not run libfranka's own low-pass filter
and rate limiter (only its callback ``control()`` loop does), so stages 2 and 3 do it here.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional, Tuple

import numpy as np

from genpolicy_ros.drivers.franka_config import FciLimits, MotionConfig

# libfranka's kMaxCutoffFrequency: a low-pass at or above it is no filter at all.
MAX_CUTOFF_HZ = 1000.0
FCI_CYCLE_S = 1e-3  # the robot keeps one commanded value per 1 ms cycle
# Velocity [rad/s] and acceleration [rad/s^2] below which the set-point counts as at rest.
REST_VELOCITY = 1e-4
REST_ACCELERATION = 1e-2


class CommandRefused(ValueError):
    """A command that must not reach the robot; the sentence says why."""


class LimitArrays:
    """The limits as float arrays, converted once (the 1 kHz loop must not redo it)."""

    def __init__(self, limits: FciLimits) -> None:
        self.lower = limits.array('position_lower_rad')
        self.upper = limits.array('position_upper_rad')
        self.velocity = limits.array('velocity_radps')
        self.acceleration = limits.array('acceleration_radps2')
        self.jerk = limits.array('jerk_radps3')
        self.offset = limits.array('velocity_offset_radps')
        self.two_decel = 2.0 * limits.array('deceleration_radps2')

    def envelope(self, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return the (lower, upper) joint velocity bounds [rad/s] at position ``q``.

        FR3 rule: the speed toward a position limit is at most
        ``-offset + sqrt(2 * deceleration * distance)``, capped at the velocity limit and never
        negative, so the joint can always brake before the limit.
        """
        to_upper = np.maximum(self.upper - q, 0.0)
        to_lower = np.maximum(q - self.lower, 0.0)
        upper = np.minimum(self.velocity,
                           np.maximum(np.sqrt(self.two_decel * to_upper) - self.offset, 0.0))
        lower = np.minimum(self.velocity,
                           np.maximum(np.sqrt(self.two_decel * to_lower) - self.offset, 0.0))
        return -lower, upper


def velocity_envelope(q: np.ndarray, limits: FciLimits) -> Tuple[np.ndarray, np.ndarray]:
    """Return the (lower, upper) joint velocity bounds [rad/s] at ``q`` (see LimitArrays)."""
    return LimitArrays(limits).envelope(np.asarray(q, dtype=float))


def _clip(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # np.clip costs several microseconds on 7-vectors; this is the 1 kHz path.
    return np.minimum(np.maximum(x, lo), hi)


def check_command(q: np.ndarray, dq: np.ndarray, limits: FciLimits, margin_rad: float,
                  setpoint: Optional[np.ndarray] = None,
                  max_distance_rad: Optional[float] = None) -> None:
    """Raise :class:`CommandRefused` unless ``(q, dq)`` is safe to follow.

    ``q`` and ``dq`` must already be finite (7,) arrays (``validate_joint_command``). Refused:
    a position within ``margin_rad`` of a limit, a velocity above the limit, a position farther
    than ``max_distance_rad`` from the current ``setpoint`` (a jump no smooth motion makes).
    """
    lower = limits.array('position_lower_rad') + margin_rad
    upper = limits.array('position_upper_rad') - margin_rad
    outside = np.flatnonzero((q < lower) | (q > upper))
    if outside.size:
        j = int(outside[0])
        raise CommandRefused(f'joint {j + 1} target {q[j]:.4f} rad is outside '
                             f'[{lower[j]:.4f}, {upper[j]:.4f}] (limits minus {margin_rad} rad)')
    vmax = limits.array('velocity_radps')
    fast = np.flatnonzero(np.abs(dq) > vmax)
    if fast.size:
        j = int(fast[0])
        raise CommandRefused(f'joint {j + 1} velocity {dq[j]:.3f} rad/s exceeds {vmax[j]} rad/s')
    if setpoint is not None and max_distance_rad is not None:
        gap = np.abs(q - setpoint)
        far = np.flatnonzero(gap > max_distance_rad)
        if far.size:
            j = int(far[0])
            raise CommandRefused(f'joint {j + 1} target is {gap[j]:.3f} rad from the current '
                                 f'set-point (at most {max_distance_rad} rad)')


class LowPass:
    """libfranka's first-order low-pass filter, ``y += dt / (dt + 1 / (2 pi fc)) * (x - y)``.

    A discrete first-order filter is a convex average, so it never raises the bound of any
    difference of its input: a jerk-limited input stays jerk-limited.
    """

    def __init__(self, cutoff_hz: float) -> None:
        self.cutoff_hz = float(cutoff_hz)
        self._y: Optional[np.ndarray] = None

    @property
    def lag_s(self) -> float:
        """Return how far the output trails a ramp, in time (0 when off): ``1 / (2 pi fc)``."""
        return 1.0 / (2.0 * math.pi * self.cutoff_hz) if self.enabled else 0.0

    @property
    def enabled(self) -> bool:
        """Return whether the filter changes anything (cutoff below ``MAX_CUTOFF_HZ``)."""
        return self.cutoff_hz < MAX_CUTOFF_HZ

    def reset(self, value: np.ndarray) -> None:
        """Start the filter at ``value``."""
        self._y = np.array(value, dtype=float)

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        """Filter one sample taken ``dt`` seconds after the previous one."""
        if self._y is None or not self.enabled:
            self._y = np.array(x, dtype=float)
        else:
            gain = dt / (dt + 1.0 / (2.0 * math.pi * self.cutoff_hz))
            self._y = self._y + gain * (x - self._y)
        return self._y.copy()


class PositionRateLimiter:
    """Clamp a position stream so its velocity, acceleration and jerk stay within the limits.

    Differences are taken over the actual cycle duration ``dt``, as the robot does after a lost
    cycle. The velocity bound is the position-based envelope at the last position sent.
    """

    def __init__(self, limits: FciLimits) -> None:
        self._lim = LimitArrays(limits)
        self._acc = self._lim.acceleration
        self._jerk = self._lim.jerk
        self.q = np.zeros(7)
        self.v = np.zeros(7)
        self.a = np.zeros(7)
        self.clamped = 0  # cycles in which the limiter changed its input

    def reset(self, q: np.ndarray, v: Optional[np.ndarray] = None) -> None:
        """Restart from position ``q`` (and velocity ``v``, default rest)."""
        self.q = np.array(q, dtype=float)
        self.v = np.zeros(7) if v is None else np.array(v, dtype=float)
        self.a = np.zeros(7)

    def __call__(self, q_des: np.ndarray, dt: float) -> np.ndarray:
        """Return the position to send this cycle."""
        v_des = (q_des - self.q) / dt
        a_des = (v_des - self.v) / dt
        step = self._jerk * dt
        a = _clip(self.a + _clip(a_des - self.a, -step, step), -self._acc, self._acc)
        lo, hi = self._lim.envelope(self.q)
        v = _clip(self.v + a * dt, lo, hi)
        q = self.q + v * dt
        if np.max(np.abs(q - q_des)) > 1e-12:
            self.clamped += 1
        self.a, self.v, self.q = (v - self.v) / dt, v, q
        return q.copy()


class VelocityRateLimiter:
    """Clamp a velocity stream so its acceleration and jerk stay within the limits."""

    def __init__(self, limits: FciLimits) -> None:
        self._lim = LimitArrays(limits)
        self._acc = self._lim.acceleration
        self._jerk = self._lim.jerk
        self.v = np.zeros(7)
        self.a = np.zeros(7)
        self.clamped = 0

    def reset(self, v: Optional[np.ndarray] = None) -> None:
        """Restart from velocity ``v`` (default rest)."""
        self.v = np.zeros(7) if v is None else np.array(v, dtype=float)
        self.a = np.zeros(7)

    def __call__(self, v_des: np.ndarray, q: np.ndarray, dt: float) -> np.ndarray:
        """Return the velocity to send this cycle (``q``: measured position, for the envelope)."""
        a_des = (v_des - self.v) / dt
        step = self._jerk * dt
        a = _clip(self.a + _clip(a_des - self.a, -step, step), -self._acc, self._acc)
        lo, hi = self._lim.envelope(q)
        v = _clip(self.v + a * dt, lo, hi)
        if np.max(np.abs(v - v_des)) > 1e-12:
            self.clamped += 1
        self.a, self.v = (v - self.v) / dt, v
        return v.copy()


@dataclass
class Setpoint:
    """What the loop sends this cycle: ``q`` in position mode, ``dq`` in velocity mode."""

    q: np.ndarray
    dq: np.ndarray


class SetpointGenerator:
    """Latest command -> smooth, limit-respecting 1 kHz set-point; holds when commands stop.

    Time arguments are seconds on one monotonic clock (``time.monotonic()`` in the driver).
    ``mode`` is ``position`` or ``velocity`` (what the robot is sent).
    """

    def __init__(self, motion: MotionConfig, limits: FciLimits, mode: str = 'position') -> None:
        if mode not in ('position', 'velocity'):
            raise ValueError(f'mode must be position or velocity, got {mode!r}')
        self.motion = motion
        self.limits = limits
        self.mode = mode
        self._lim = LimitArrays(limits)
        scale = motion.limit_scale
        self._acc = scale * self._lim.acceleration
        self._jerk = scale * self._lim.jerk
        self._scale = scale
        self.lowpass = LowPass(motion.lowpass_cutoff_hz)
        self.position_limiter = PositionRateLimiter(limits)
        self.velocity_limiter = VelocityRateLimiter(limits)
        self.q = np.zeros(7)     # set-point position [rad]
        self.v = np.zeros(7)     # set-point velocity [rad/s]
        self.a = np.zeros(7)     # set-point acceleration [rad/s^2]
        self._target: Optional[Tuple[np.ndarray, np.ndarray, float]] = None
        self.stale_holds = 0     # commands that went stale (each starts a hold)
        self.resyncs = 0         # cycles continued from the robot's extrapolation
        self.sent = Setpoint(np.zeros(7), np.zeros(7))

    # ------------------------------------------------------------------ commands
    def reset(self, q: np.ndarray, dq: Optional[np.ndarray] = None) -> None:
        """Restart at the robot's last commanded ``q`` (and ``dq``): no target, at rest."""
        self.q = np.array(q, dtype=float)
        self.v = np.zeros(7) if dq is None else np.array(dq, dtype=float)
        self.a = np.zeros(7)
        self._target = None
        self.lowpass.reset(self.q if self.mode == 'position' else self.v)
        self.position_limiter.reset(self.q, self.v)
        self.velocity_limiter.reset(self.v)
        self.sent = Setpoint(self.q.copy(), self.v.copy())

    def set_target(self, q: np.ndarray, dq: np.ndarray, arrival_s: float) -> None:
        """Follow command ``(q, dq)`` that arrived at ``arrival_s``; raise CommandRefused.

        The caller has validated shape and finiteness; limits and the distance from the current
        set-point are checked here, so a refused command leaves the previous target in force.
        """
        q = np.asarray(q, dtype=float)
        dq = np.asarray(dq, dtype=float)
        check_command(q, dq, self.limits, self.motion.position_margin_rad, self.q,
                      self.motion.max_target_distance_rad)
        self._target = (q.copy(), dq.copy(), float(arrival_s))

    def clear_target(self) -> None:
        """Drop the current command: decelerate to rest and hold."""
        self._target = None

    @property
    def has_target(self) -> bool:
        """Return whether a (not yet stale) command is being followed."""
        return self._target is not None

    @property
    def at_rest(self) -> bool:
        """Return whether the set-point (and what was sent) has come to rest."""
        return bool(np.all(np.abs(self.v) < REST_VELOCITY)
                    and np.all(np.abs(self.a) < REST_ACCELERATION)
                    and np.all(np.abs(self.sent.dq) < REST_VELOCITY))

    def reference(self, now_s: float) -> Optional[np.ndarray]:
        """Return where the current command says the arm is due at ``now_s`` (None: no command)."""
        if self._target is None:
            return None
        q_t, dq_t, arrival = self._target
        age = min(max(now_s - arrival, 0.0), self.motion.max_extrapolation_s)
        return q_t + dq_t * (age - self.motion.command_period_s)

    # ------------------------------------------------------------------ 1 kHz step
    def step(self, now_s: float, dt: float, measured_q: Optional[np.ndarray] = None,
             robot_commanded: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
             ) -> Setpoint:
        """Advance one control cycle of ``dt`` seconds; return what to send.

        In velocity mode the robot integrates what it is sent, so the position the set-point
        pulls from (and the velocity envelope) is the ``measured_q`` when given: drift is
        corrected through the arm. Position mode ignores it (the robot servoes to the set-point).

        ``robot_commanded = (q_d, dq_d, ddq_d)`` from the robot state after lost cycles (``dt``
        above one cycle): the robot filled the gap by extrapolating (acceleration frozen), so
        everything continues from *its* history, one cycle on, not ours (libfranka's control
        loop filters and rate-limits against the same fields). Within a cycle the echo is not
        trusted: the robot may still apply a command that arrived late after it sent the state.
        """
        if dt <= 0.0:
            raise ValueError(f'dt must be > 0, got {dt}')
        if self.mode == 'velocity' and measured_q is not None:
            self.q = np.array(measured_q, dtype=float)
        out_dt = dt
        if robot_commanded is not None and dt > 1.5 * FCI_CYCLE_S:
            self._continue_from(*(np.asarray(x, dtype=float) for x in robot_commanded))
            self.resyncs += 1
            dt = out_dt = FCI_CYCLE_S  # the robot's history already covers the gap
        if self._target is not None and now_s - self._target[2] > self.motion.command_timeout_s:
            self._target = None
            self.stale_holds += 1
        if self.motion.interpolate:
            self._track(now_s, dt)
        else:
            self._pass_through(dt)
        if self.mode == 'position':
            out = self.lowpass(self.q, out_dt)
            if self.motion.limit_rate:
                out = self.position_limiter(out, out_dt)
            dq = (out - self.sent.q) / out_dt
            self.sent = Setpoint(out, dq)
        else:
            out = self.lowpass(self.v, out_dt)
            if self.motion.limit_rate:
                out = self.velocity_limiter(out, self.q, out_dt)
            self.sent = Setpoint(self.sent.q + out * out_dt, out)
        return Setpoint(self.sent.q.copy(), self.sent.dq.copy())

    def _continue_from(self, q_d: np.ndarray, dq_d: np.ndarray, ddq_d: np.ndarray) -> None:
        # The set-point itself adopts the robot's extrapolated state too: were it to catch up
        # with its own, the rate limiter would be asked for a jerk right at the limit.
        if self.mode == 'position':
            # A first-order filter's output trails a ramp by v * tau: restart the set-point that
            # far ahead of the filter, so the filtered command keeps the robot's velocity.
            self.q = q_d + dq_d * self.lowpass.lag_s
            self.lowpass.reset(q_d)
            lim = self.position_limiter
            lim.q, lim.v, lim.a = q_d.copy(), dq_d.copy(), ddq_d.copy()
        else:
            self.lowpass.reset(dq_d)
            self.v = dq_d + ddq_d * self.lowpass.lag_s
            lim = self.velocity_limiter
            lim.v, lim.a = dq_d.copy(), ddq_d.copy()
        if self.mode == 'position':
            self.v = dq_d.copy()
        self.a = ddq_d.copy()
        self.sent = Setpoint(q_d.copy(), dq_d.copy())

    def _track(self, now_s: float, dt: float) -> None:
        ref = self.reference(now_s)
        if ref is None:
            v_ref = np.zeros(7)  # hold: brake to rest where we are, do not pull back
        else:
            cap = self.motion.max_correction_radps
            pull = np.minimum(np.maximum(self.motion.position_gain_per_s * (ref - self.q),
                                         -cap), cap)
            v_ref = self._target[1] + pull
        lo, hi = self._lim.envelope(self.q)
        v_ref = _clip(v_ref, self._scale * lo, self._scale * hi)
        a_des = _clip(self.motion.velocity_gain_per_s * (v_ref - self.v), -self._acc, self._acc)
        step = self._jerk * dt
        a = self.a + _clip(a_des - self.a, -step, step)
        v = self.v + a * dt
        self.a, self.v = a, v
        self.q = self.q + v * dt

    def _pass_through(self, dt: float) -> None:
        # Unsmoothed: the command's own position (velocity) is the set-point, as a naive driver
        # would send it. Without a command the set-point stays where it is.
        if self._target is None:
            v = np.zeros(7)
            q = self.q
        elif self.mode == 'position':
            q = self._target[0].copy()
            v = (q - self.q) / dt
        else:
            v = self._target[1].copy()
            q = self.q + v * dt
        self.a = (v - self.v) / dt
        self.v, self.q = v, q
