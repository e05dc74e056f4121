"""The 1 kHz set-point core of the Franka driver (pure numpy, no robot).

What the robot checks on every cycle is what these tests check on what the core sends: the
second and third differences of the commanded position stay within the acceleration and jerk
limits (else ``joint_motion_generator_*_discontinuity``), velocities within the position-based
envelope; and the core follows commands, holds without them, and refuses bad ones.
"""

import dataclasses

import numpy as np
import pytest

from genpolicy_ros.drivers.franka_config import FrankaConfig
from genpolicy_ros.drivers.motion import (
    CommandRefused, LimitArrays, LowPass, PositionRateLimiter, SetpointGenerator,
    velocity_envelope)

DT = 1e-3
Q0 = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])


@pytest.fixture(scope='module')
def cfg():
    return FrankaConfig.load().replace(robot_ip='127.0.0.1')


def _run(gen, commands, duration_s, dt=DT, t0=0.0):
    """Step ``gen`` from ``t0`` for ``duration_s``; ``commands(t)``: (q, dq) or None at 100 Hz."""
    sent = []
    next_cmd = t0
    t = t0
    while t < t0 + duration_s - 1e-9:
        if t >= next_cmd:
            cmd = commands(t)
            if cmd is not None:
                gen.set_target(cmd[0], cmd[1], t)
            next_cmd += 0.01
        t += dt
        sent.append(gen.step(t, dt).q)
    return np.array(sent)


def _check_limits(sent, lim: LimitArrays, dt=DT, tol=1e-6):
    v = np.diff(sent, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    j = np.diff(a, axis=0) / dt
    assert np.all(np.abs(a) <= lim.acceleration * (1 + tol)), np.abs(a).max(axis=0)
    assert np.all(np.abs(j) <= lim.jerk * (1 + tol)), np.abs(j).max(axis=0)
    assert np.all(np.abs(v) <= lim.velocity * (1 + tol))


def test_staircase_commands_become_a_smooth_setpoint(cfg):
    gen = SetpointGenerator(cfg.motion, cfg.limits)
    gen.reset(Q0)
    rng = np.random.default_rng(0)
    state = {'q': Q0.copy()}

    def commands(t):
        # A jittery commander: random velocities (0.3 rad/s), position one period ahead.
        dq = rng.uniform(-0.3, 0.3, 7)
        q = state['q'] + 0.01 * dq
        state['q'] = q
        return q, dq
    sent = _run(gen, commands, 2.0)
    _check_limits(sent, LimitArrays(cfg.limits))


def test_tracks_a_ramp_and_holds_when_commands_stop(cfg):
    gen = SetpointGenerator(cfg.motion, cfg.limits)
    gen.reset(Q0)
    v = np.array([0.2, -0.1, 0.15, 0.1, -0.2, 0.1, 0.25])

    def commands(t):
        if t > 1.0:
            return None  # the commander goes silent
        return Q0 + v * (t + 0.01), v  # position due one command period later
    sent = _run(gen, commands, 1.0)
    t = np.arange(1, len(sent) + 1) * DT
    ref = Q0 + v * t[:, None]
    err = np.abs(sent - ref)[500:]  # after the start-up transient
    assert err.max() < 1e-3, err.max()
    # Silent commander: decelerate (within the limits) and hold still.
    more = _run(gen, lambda t: None, 0.6, t0=1.0)
    _check_limits(np.vstack([sent, more]), LimitArrays(cfg.limits))
    assert gen.stale_holds == 1 and not gen.has_target
    assert gen.at_rest
    assert np.max(np.abs(more[-1] - more[-100])) < 1e-9


def test_no_command_holds_the_reset_position(cfg):
    gen = SetpointGenerator(cfg.motion, cfg.limits)
    gen.reset(Q0)
    sent = _run(gen, lambda t: None, 0.2)
    assert np.allclose(sent, Q0)


def test_after_lost_cycles_the_robots_extrapolation_is_continued(cfg):
    # The FCI keeps one commanded value per 1 ms cycle; missed cycles are filled by
    # extrapolation with the acceleration frozen, and the next command is differenced against
    # that. The loop hands the robot's q_d, dq_d, ddq_d in with every cycle.
    gen = SetpointGenerator(cfg.motion, cfg.limits)
    gen.reset(Q0)
    history = [Q0.copy(), Q0.copy(), Q0.copy()]
    v = np.array([0.3, -0.2, 0.25, 0.3, -0.3, 0.2, 0.3])
    t = 0.0
    for k in range(2000):
        lost = 3 if k % 97 == 50 else 0  # now and then three cycles go missing
        for _ in range(lost):
            vel, acc = history[-1] - history[-2], history[-1] - 2 * history[-2] + history[-3]
            history.append(history[-1] + vel + acc)
        dt = DT * (lost + 1)
        t += dt
        if k % 10 == 0:
            gen.set_target(Q0 + v * np.sin(t) + 0.01 * v, v * np.cos(t), t)
        q1, q2, q3 = history[-1], history[-2], history[-3]
        history.append(gen.step(t, dt, robot_commanded=(
            q1, (q1 - q2) / DT, (q1 - 2 * q2 + q3) / DT ** 2)).q)
    _check_limits(np.array(history), LimitArrays(cfg.limits))
    assert gen.resyncs == 2000 // 97 + 1


@pytest.mark.parametrize('case', ['limit', 'velocity', 'jump'])
def test_bad_targets_are_refused_and_the_old_one_kept(cfg, case):
    gen = SetpointGenerator(cfg.motion, cfg.limits)
    gen.reset(Q0)
    gen.set_target(Q0, np.zeros(7), 0.0)
    q, dq = Q0.copy(), np.zeros(7)
    if case == 'limit':
        q[3] = cfg.limits.position_upper_rad[3] - 0.5 * cfg.motion.position_margin_rad
        gen.reset(q - 0.05)  # near the target, so only the limit check can refuse it
    elif case == 'velocity':
        dq[4] = cfg.limits.velocity_radps[4] * 1.01
    else:
        q[0] += 2.0 * cfg.motion.max_target_distance_rad
    with pytest.raises(CommandRefused):
        gen.set_target(q, dq, 0.01)
    assert case == 'limit' or gen.has_target


def test_velocity_envelope_brakes_before_position_limits(cfg):
    upper = np.asarray(cfg.limits.position_upper_rad)
    lo, hi = velocity_envelope(upper - 1e-4, cfg.limits)
    assert np.all(hi == 0.0)  # no speed left toward the limit ...
    assert np.all(lo < 0.0)   # ... but the way back is open
    lo, hi = velocity_envelope(np.zeros(7) + 0.5 * (upper + np.asarray(
        cfg.limits.position_lower_rad)), cfg.limits)
    assert np.allclose(hi, cfg.limits.velocity_radps)


def test_pass_through_sends_commands_unsmoothed(cfg):
    # Only for provoking the robot's reflexes in tests: a step stays a step.
    raw = cfg.with_motion(interpolate=False, limit_rate=False, lowpass_cutoff_hz=1000.0)
    gen = SetpointGenerator(raw.motion, raw.limits)
    gen.reset(Q0)
    target = Q0 + np.array([0.02, 0, 0, 0, 0, 0, 0])
    gen.set_target(target, np.zeros(7), 0.0)
    assert np.allclose(gen.step(0.001, DT).q, target)


def test_rate_limiter_turns_a_step_into_a_limited_ramp(cfg):
    lim = LimitArrays(cfg.limits)
    limiter = PositionRateLimiter(cfg.limits)
    limiter.reset(Q0)
    out = [Q0] + [limiter(Q0 + 0.05, DT) for _ in range(600)]
    out = np.array(out)
    # A safety net, not a planner (like libfranka's): what it sends respects every limit and
    # heads for the target; a smooth set-point upstream is what makes it a no-op.
    _check_limits(out, lim)
    assert np.all(out[100] > Q0)
    assert limiter.clamped > 0


def test_lowpass_is_libfrankas_first_order_filter():
    lp = LowPass(100.0)
    lp.reset(np.zeros(7))
    y = lp(np.ones(7), DT)
    gain = DT / (DT + 1.0 / (2 * np.pi * 100.0))
    assert np.allclose(y, gain)
    off = LowPass(1000.0)
    off.reset(np.zeros(7))
    assert np.allclose(off(np.ones(7), DT), 1.0)


def test_velocity_mode_sends_limited_velocities(cfg):
    gen = SetpointGenerator(cfg.motion, cfg.limits, mode='velocity')
    gen.reset(Q0)
    v = np.full(7, 0.2)
    dqs = []
    for k in range(800):
        t = (k + 1) * DT
        if k % 10 == 0 and k < 400:
            gen.set_target(Q0 + v * (t + 0.01), v, t - DT)
        dqs.append(gen.step(t, DT).dq)
    dqs = np.array(dqs)
    lim = LimitArrays(cfg.limits)
    acc = np.diff(dqs, axis=0) / DT
    assert np.all(np.abs(acc) <= lim.acceleration * 1.000001)
    assert np.all(np.abs(np.diff(acc, axis=0) / DT) <= lim.jerk * 1.000001)
    assert np.allclose(dqs[350], v, atol=0.03)    # following
    assert np.allclose(dqs[-1], 0.0, atol=1e-6)   # stale -> stopped


def test_config_rejects_nonsense():
    cfg = FrankaConfig.load()
    with pytest.raises(ValueError, match='realtime_config'):
        cfg.replace(realtime_config='sometimes')
    with pytest.raises(ValueError, match='limit_scale'):
        dataclasses.replace(cfg, motion=dataclasses.replace(cfg.motion, limit_scale=1.5))
