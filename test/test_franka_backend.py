"""The Franka backend over the real FCI protocol: pylibfranka against the franka-sim server.

franka-sim runs with ``--enforce-comm-constraints --enforce-motion-limits``, so what would
abort a real arm aborts this one: discontinuities, limit violations, lost cycles. Quirks of the
simulated robot, not of the driver: zero gravity and torques; the joint pose persists across
client sessions; RealtimeConfig must be ``ignore``; on a loaded machine its clock runs slower
than the wall clock (states come at < 1 kHz), so trajectories here are timed by the robot clock,
as they are on hardware, where the two agree.
"""

from contextlib import contextmanager
import dataclasses
import os
import signal
import time

import numpy as np
import pytest

from genpolicy_ros.drivers.franka_backend import FrankaBackend
from genpolicy_ros.drivers.franka_config import FrankaConfig
from genpolicy_ros.drivers.franka_control import Status

RAW = dict(interpolate=False, limit_rate=False, lowpass_cutoff_hz=1000.0)


def sim_config(**motion) -> FrankaConfig:
    """Return the YAML config pointed at franka-sim (RealtimeConfig ignore, quick reconnects)."""
    cfg = FrankaConfig.load().replace(robot_ip='127.0.0.1', realtime_config='ignore')
    cfg = dataclasses.replace(cfg, connection=dataclasses.replace(
        cfg.connection, reconnect_period_s=0.5))
    return cfg.with_motion(**motion) if motion else cfg


@pytest.fixture(scope='module')
def connect(franka_sim):
    """Return a function making backends (motion overrides as keywords), one at a time.

    The FCI serves one client: asking for another configuration closes the current backend.
    """
    current = {}

    def make(**motion) -> FrankaBackend:
        key = tuple(sorted(motion.items()))
        backend = current.get('backend')
        if backend is not None and current['key'] == key and backend.process.is_alive():
            return backend
        if backend is not None:
            backend.close()
        backend = FrankaBackend(sim_config(**motion))
        current.update(backend=backend, key=key)
        backend.enable()
        assert backend.wait_for(lambda s: s.status == Status.ACTIVE, 20.0), backend.status()
        return backend
    yield make
    if current.get('backend') is not None:
        current['backend'].close()


def _ready(backend: FrankaBackend) -> None:
    """Active, following nothing, at rest (a previous test may have left a hold)."""
    if backend.status().status != Status.ACTIVE:
        ok, message = backend.recover()
        assert ok, message
    assert backend.wait_for(lambda s: s.status == Status.ACTIVE, 10.0), backend.status()
    backend.stop()
    assert backend.wait_for(lambda s: np.max(np.abs(s.dq_c)) < 1e-6, 5.0)


@contextmanager
def _realtime():
    """Run the block with SCHED_FIFO on this thread when permitted (root on CI)."""
    old = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(30))
    except OSError:
        pass
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, old[0], old[1])
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def track(backend, amplitude, duration_s, period_s=0.01):
    """Command ``q0 + A (1 - cos(w t)) / 2`` at ~100 Hz on the robot clock; return errors.

    Each command carries the position due one period later and the velocity, like the safety
    filter's. Returns (max |q - reference| over the motion [rad], samples).
    """
    s0 = backend.sample()
    q0, t0 = s0.q_c.copy(), s0.robot_time
    w = 2 * np.pi / duration_s

    def ref(t):
        t = min(max(t, 0.0), duration_s)
        return q0 + amplitude * (1 - np.cos(w * t)) / 2, amplitude * w * np.sin(w * t) / 2
    errors, samples = [], []
    while True:
        s = backend.sample()
        t = s.robot_time - t0
        if t > duration_s + 0.3:
            break
        q_due, dq = ref(t + period_s)
        backend.command(q_due, dq)
        errors.append(np.max(np.abs(s.q - ref(t)[0])))
        samples.append(s)
        time.sleep(period_s)
    return float(np.max(errors)), samples


def test_reads_state_and_model(connect):
    backend = connect()
    s = backend.sample()
    assert s.age_s < 0.1 and s.robot_mode == 'Move' and s.status == Status.ACTIVE
    assert np.all(np.isfinite(s.q)) and s.q.shape == (7,)
    assert abs(np.linalg.det(s.ee_pose[:3, :3]) - 1.0) < 1e-3
    state = backend.read_state()
    assert np.allclose(state.q, s.q, atol=1e-3) and state.stamp > 0.0
    model = backend.model()
    assert model['jacobian'].shape == (6, 7) and np.all(np.isfinite(model['jacobian']))
    assert model['mass'].shape == (7, 7)
    assert np.allclose(model['mass'], model['mass'].T, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(model['mass']) > 0.0)


def test_tracks_a_joint_motion_in_position_mode(connect, record_property):
    backend = connect()
    _ready(backend)
    before = backend.sample().counters
    # Every joint at once, peak 0.2 rad/s (the EE moves at up to ~0.25 m/s, the speed cap).
    amplitude = np.array([0.19, -0.13, 0.16, 0.19, -0.19, 0.19, 0.19])
    err, samples = track(backend, amplitude, 3.0)
    after = backend.sample()
    # The driver's own part: what the robot reports as commanded (q_d) against the reference;
    # the rest is the simulated joint servo, which lags more when the machine is loaded.
    t0, w = samples[0].robot_time, 2 * np.pi / 3.0
    setpoint_err = max(np.max(np.abs(s.q_d - samples[0].q_d - amplitude * (1 - np.cos(
        w * min(s.robot_time - t0, 3.0))) / 2)) for s in samples)
    report = (f'position mode: max tracking error {err * 1e3:.2f} mrad over 3 s (set-point '
              f'{setpoint_err * 1e3:.2f} mrad), '
              f'lost cycles {after.counters["lost_cycles"] - before["lost_cycles"]}, '
              f'limiter clamps {after.counters["limiter_clamps"] - before["limiter_clamps"]}, '
              f'success rate {after.success_rate:.3f}')
    record_property('franka_tracking', report)
    print(report)
    assert backend.status().status == Status.ACTIVE, backend.status()
    assert after.counters['reflexes'] == before['reflexes']
    assert err < 5e-3, report
    assert setpoint_err < 2e-3, report
    peak = min(samples, key=lambda s: abs(s.robot_time - t0 - 1.5))  # reference at +A
    assert np.allclose(peak.q - samples[0].q, amplitude, atol=5e-3), \
        f'the arm did not follow the commanded motion: moved {peak.q - samples[0].q}'


def test_stale_commands_decelerate_to_a_hold(connect):
    backend = connect()
    _ready(backend)
    v = np.array([0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    s = backend.sample()
    q = s.q_c.copy()
    stale_before = s.counters['stale_holds']
    for _ in range(40):  # 0.4 s at 0.4 rad/s on joint 1, then silence
        q = q + 0.01 * v
        backend.command(q + 0.01 * v, v)
        time.sleep(0.01)
    assert backend.sample().following
    assert np.max(np.abs(backend.sample().dq)) > 0.1, 'the arm did not move'
    assert backend.wait_for(lambda s: not s.following, 1.0)
    assert backend.wait_for(lambda s: np.max(np.abs(s.dq_c)) == 0.0, 2.0), 'set-point moves'
    assert backend.wait_for(lambda s: np.max(np.abs(s.dq)) < 1e-3, 2.0)
    rest = backend.sample()
    time.sleep(0.3)
    now = backend.sample()
    # The hold is the set-point at rest: judged on the set-point and where the arm ends up, not
    # on the arm at the first instant dq read ~0: the simulated arm overshoots the stopped
    # set-point and comes back (traced in test_driver_node: 0.44 mrad idle, 1.6 mrad seen under
    # load), and its dq is ~0 at the turning point. A set-point that moves still fails here.
    assert np.max(np.abs(now.q_c - rest.q_c)) < 1e-9, 'the set-point drifts while holding'
    assert np.max(np.abs(now.q - now.q_c)) < 1e-3, 'the arm is off its hold set-point'
    assert rest.counters['stale_holds'] == stale_before + 1
    assert backend.status().status == Status.ACTIVE


def test_lost_cycles_are_bridged_without_a_reflex(connect):
    # Freeze the control process mid-motion for ~8 ms, three times: the robot extrapolates the
    # missed commands, and the loop must continue from the robot's history, not its own, or
    # the FCI aborts with a discontinuity (what a slow cycle on a loaded host does for real).
    backend = connect()
    _ready(backend)
    before = backend.sample().counters
    v = np.array([0.2, 0.0, 0.0, -0.2, 0.0, 0.0, 0.2])
    q = backend.sample().q_c.copy()
    pid = backend.process.pid
    for k in range(60):
        q = q + 0.01 * v
        backend.command(q + 0.01 * v, v)
        if k in (20, 35, 50):
            with _realtime():  # so the pause ends after ~8 ms, not whenever we are scheduled
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.008)
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    after = backend.sample()
    assert after.counters['lost_cycles'] > before['lost_cycles'], 'no cycle was lost'
    assert after.counters['reflexes'] == before['reflexes'], backend.status()
    assert backend.status().status == Status.ACTIVE, backend.status()


@pytest.mark.parametrize('case', ['nan', 'shape', 'limit', 'velocity', 'jump'])
def test_bad_commands_are_refused_before_the_robot(connect, case):
    backend = connect()
    _ready(backend)
    s = backend.sample()
    q, dq = s.q_c.copy(), np.zeros(7)
    if case == 'nan':
        q[2] = np.nan
    elif case == 'shape':
        q = q[:6]
    elif case == 'limit':
        q[3] = backend.config.limits.position_upper_rad[3] + 0.01
    elif case == 'velocity':
        dq[0] = 5.0
    else:
        q[1] += 0.5
    before = backend.refused
    with pytest.raises(ValueError):
        backend.command(q, dq)
    assert backend.refused == before + (case not in ('nan', 'shape'))
    time.sleep(0.1)
    after = backend.sample()
    assert not after.following and after.status == Status.ACTIVE
    assert np.max(np.abs(after.q - s.q)) < 1e-3


def test_operator_hold_latches_until_recover(connect):
    backend = connect()
    _ready(backend)
    assert 'holding' in backend.hold('test hold')
    assert backend.wait_for(lambda s: s.status == Status.HOLD, 2.0)
    q = backend.sample().q_c
    v = np.full(7, 0.2)
    for _ in range(20):
        backend.command(q + 0.01 * v, v)  # accepted by the edge, ignored by the loop
        time.sleep(0.01)
    s = backend.sample()
    assert not s.following and np.max(np.abs(s.q - q)) < 1e-3
    assert backend.status().hold_reason == 'test hold'
    ok, message = backend.recover()
    assert ok and 'test hold' in message
    assert backend.wait_for(lambda s: s.status == Status.ACTIVE, 2.0)


def test_velocity_mode_follows_and_holds(franka_sim, connect):
    connect().close()  # the FCI takes one client: this test brings its own
    cfg = sim_config().replace(control_mode='velocity')
    with FrankaBackend(cfg) as backend:
        backend.enable()
        assert backend.wait_for(lambda s: s.status == Status.ACTIVE, 20.0), backend.status()
        amplitude = np.array([-0.2, 0.15, 0.0, -0.2, 0.0, 0.0, 0.0])
        err, samples = track(backend, amplitude, 2.0)
        assert backend.status().status == Status.ACTIVE, backend.status()
        # The robot integrates velocities on its physics clock, which franka-sim runs at wall
        # time while its robot clock (the one the commands follow) slows down under load: the
        # position may drift by that skew, so this checks the motion, not millimetres.
        t0 = samples[0].robot_time
        half = min(samples, key=lambda s: abs(s.robot_time - t0 - 1.0))  # reference at +A
        moved = half.q - samples[0].q
        assert np.all(np.abs(moved - amplitude) <= 0.25 * np.abs(amplitude) + 0.01), \
            f'moved {moved}, commanded {amplitude} (max error {err * 1e3:.1f} mrad)'
        assert backend.wait_for(lambda s: np.max(np.abs(s.dq)) < 1e-3, 2.0)
        assert backend.sample().counters['reflexes'] == 0


def test_discontinuity_is_a_reflex_reported_and_recovered(connect, record_property):
    # Smoothing off (test-only setting): the command's step reaches the robot as it is.
    backend = connect(**RAW)
    _ready(backend)
    q = backend.sample().q_c.copy()
    step = q.copy()
    step[0] += 0.02
    backend.command(step, np.zeros(7))
    assert backend.wait_for(lambda s: s.status == Status.REFLEX, 3.0), backend.status()
    status = backend.status()
    record_property('franka_reflex', f'{status.errors}: {status.message}')
    assert 'joint_motion_generator_velocity_discontinuity' in status.errors, status
    s = backend.sample()
    assert s.robot_mode == 'Reflex' and s.counters['reflexes'] >= 1
    # Nothing is commanded while in reflex: new commands do not move the arm.
    backend.command(q, np.zeros(7))
    time.sleep(0.2)
    assert np.max(np.abs(backend.sample().q - s.q)) < 1e-4
    assert backend.status().status == Status.REFLEX
    ok, message = backend.recover()
    assert ok, message
    assert 'joint_motion_generator_velocity_discontinuity' in message
    assert backend.wait_for(lambda s: s.status == Status.ACTIVE and s.robot_mode == 'Move', 5.0)
    # Commands from before the recovery are not replayed; new ones are followed (this one
    # asks to stay put: unsmoothed, any step would be a discontinuity again).
    assert not backend.sample().following
    backend.command(backend.sample().q_c, np.zeros(7))
    assert backend.wait_for(lambda s: s.following, 1.0)
    time.sleep(0.1)
    assert backend.status().status == Status.ACTIVE


def test_gripper_homing_move_grasp(connect):
    gripper = connect().gripper  # the gripper server, too, takes one client at a time
    deadline = time.monotonic() + 10.0
    while not gripper.state()['connected'] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gripper.state()['connected'], gripper.state()
    gripper.results()  # forget earlier ones
    gripper.request('homing')
    gripper.request('move', 0.03)
    gripper.request('grasp', 0.01)  # nothing between the fingers: fails, as on the hand
    with pytest.raises(ValueError):
        gripper.request('move', 0.5)
    results = []
    while len(results) < 3 and time.monotonic() < deadline + 10.0:
        results += gripper.results()
        time.sleep(0.05)
    assert [(r.op, r.ok) for r in results] == [('homing', True), ('move', True),
                                               ('grasp', False)], results
    time.sleep(0.2)  # one width poll
    assert 0.0 <= gripper.state()['width'] <= 0.03 + 1e-3


def test_connection_loss_is_reported_and_retried(franka_sim, connect):
    backend = connect()
    _ready(backend)
    franka_sim.stop()
    try:
        assert backend.wait_for(lambda s: s.status == Status.DISCONNECTED, 5.0), \
            backend.status()
        assert 'connection lost' in backend.status().message
        with pytest.raises(RuntimeError):
            backend.read_state()  # no fresh state: an error, not stale numbers
    finally:
        franka_sim.start()
    # Reconnects by itself, but resumes only on the operator's word.
    assert backend.wait_for(lambda s: s.status == Status.HOLD, 15.0), backend.status()
    assert 'reconnected' in backend.status().hold_reason
    ok, message = backend.recover()
    assert ok, message
    assert backend.wait_for(lambda s: s.status == Status.ACTIVE, 5.0)
    assert backend.sample().counters['connects'] == 2


def test_close_leaves_no_process(connect):
    backend = connect()
    pids = backend.child_pids
    assert pids and all(_alive(p) for p in pids)
    backend.close()
    assert not any(_alive(p) for p in pids)
    backend.close()  # idempotent
