"""The fixes the fault-injection suite led to, pinned on the cores (fast, no ROS graph).

Each was found by a scenario on the real graph; these tests keep the mechanism from coming
back: the sim driver's command interpolation, chunk stamp checks, plausibility of joint states,
position targets that keep the barriers, rejected joint states as watchdog faults, QoS reports.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from genpolicy_ros.drivers.command_interpolation import CommandInterpolator
from genpolicy_ros.monitor.monitor import MonitorConfig
from genpolicy_ros.monitor.watchdogs import FaultKind, Watchdogs
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import RobotState, SafetyFilter
from genpolicy_ros.safety.reference import ChunkError, ReferenceTracker

pytestmark = pytest.mark.fault_injection

MODEL = FrankaModel()


# --------------------------------------------------------------------- command interpolation
def test_interpolated_reference_moves_at_the_commanded_velocity_not_in_dashes():
    lim = MODEL.limits
    interp = CommandInterpolator(0.01, 5.0, 0.005, lim.acceleration, lim.jerk)
    q = MODEL.q_home.copy()
    interp.reset(q)
    dq = np.array([0.3, -0.2, 0.0, 0.25, 0.0, 0.1, 0.0])
    q_cmd = q.copy()
    velocities = []
    for k in range(100):           # 1 s of 100 Hz commands, 1 kHz servo steps
        q_cmd = q_cmd + 0.01 * dq
        for i in range(10):
            _, v = interp.step(q_cmd, dq, i * 0.001, 0.001)
            velocities.append(v)
    v = np.array(velocities[100:])  # after the ramp-up from rest
    assert np.all(np.abs(v) <= np.abs(dq) + 0.005 + 1e-9), 'faster than commanded + correction'
    assert np.allclose(v, dq, atol=0.006)


def test_a_late_command_stops_at_its_position_instead_of_coasting_on():
    interp = CommandInterpolator(0.01, 5.0, 0.005, MODEL.limits.acceleration,
                                 MODEL.limits.jerk, coast_periods=2.0)
    q = MODEL.q_home.copy()
    interp.reset(q)
    dq = np.full(7, 0.2)
    for i in range(10):
        interp.step(q + 0.01 * dq, dq, i * 0.001, 0.001)
    # No successor for 200 ms: after 2 periods the reference brakes and stops near q_cmd.
    for i in range(10, 200):
        ref, v = interp.step(q + 0.01 * dq, dq, i * 0.001, 0.001)
    assert np.all(np.abs(v) < 0.01)
    assert np.all(np.abs(ref - (q + 0.01 * dq)) < 0.01)


def test_velocity_steps_are_rate_limited_to_the_arm_limits():
    lim = MODEL.limits
    interp = CommandInterpolator(0.01, 0.0, 0.0, lim.acceleration, lim.jerk)
    q = MODEL.q_home.copy()
    interp.reset(q)
    prev_v, prev_a = np.zeros(7), np.zeros(7)
    for i in range(200):
        dq = np.full(7, 1.0) if i < 100 else np.zeros(7)   # a step up, then a step to rest
        _, v = interp.step(q, dq, 0.0, 0.001)
        a = (v - prev_v) / 0.001
        assert np.all(np.abs(a) <= lim.acceleration + 1e-6)
        assert np.all(np.abs(a - prev_a) / 0.001 <= lim.jerk + 1e-3)
        prev_v, prev_a = v, a


# --------------------------------------------------------------------- chunk stamps
@pytest.fixture
def tracker():
    return ReferenceTracker(SafetyConfig.load().tracking)


def _chunk(tracker, stamp, now):
    times = np.array([0.0, 0.1, 0.2])
    positions = np.tile([0.4, 0.0, 0.1], (3, 1))
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (3, 1))
    return tracker.set_chunk_arrays(stamp, times, positions, quats, now)


def test_chunks_from_the_future_or_stale_on_arrival_are_refused(tracker):
    with pytest.raises(ChunkError, match='future'):
        _chunk(tracker, 110.0, 100.0)
    with pytest.raises(ChunkError, match='old on arrival'):
        _chunk(tracker, 90.0, 100.0)
    assert tracker.chunk is None


def test_an_older_chunk_never_replaces_a_fresh_newer_one(tracker):
    _chunk(tracker, 100.0, 100.01)
    with pytest.raises(ChunkError, match='older than the current'):
        _chunk(tracker, 99.9, 100.02)
    assert tracker.chunk.stamp == 100.0
    # Once the newer one is stale, an older-stamped but fresh chunk is welcome (clock restart).
    _chunk(tracker, 100.6, 100.61)
    assert tracker.chunk.stamp == 100.6


def test_a_chunk_left_in_the_future_by_a_backward_clock_jump_is_stale(tracker):
    _chunk(tracker, 100.0, 100.0)
    assert not tracker.is_stale(100.1)
    assert tracker.is_stale(95.0), 'the clock jumped back 5 s: the chunk must not live 5 s'


# --------------------------------------------------------------------- joint state plausibility
def test_finite_but_impossible_joint_values_are_refused():
    lim = MODEL.limits
    q, dq = MODEL.q_home.copy(), np.zeros(7)
    cv.check_joint_ranges(q, dq, lim.lower, lim.upper, lim.velocity)
    for bad_q, bad_dq in ((q + 1e12, dq), (q, dq + 10.0 * lim.velocity)):
        with pytest.raises(cv.InputError):
            cv.check_joint_ranges(bad_q, bad_dq, lim.lower, lim.upper, lim.velocity)
    with pytest.raises(cv.InputError, match='velocity'):
        cv.check_joint_ranges(q, 1.05 * lim.velocity, lim.lower, lim.upper, lim.velocity,
                              cv.COMMAND_POSITION_MARGIN_RAD, cv.COMMAND_VELOCITY_FACTOR)
    # Subnormal numbers are numbers: accepted.
    cv.check_joint_ranges(q + 1e-310, dq + 1e-310, lim.lower, lim.upper, lim.velocity)


def test_a_joint_state_refused_at_the_edge_is_a_malformed_fault():
    dogs = Watchdogs(MonitorConfig.load().watchdogs, MODEL.limits.velocity)
    q = MODEL.q_home
    assert dogs.on_joint_state(q, np.zeros(7), 1.0, 1.0)
    assert not dogs.on_joint_state(np.zeros(7), np.zeros(7), 1.004, 1.004,
                                   rejected='JointState lacks joints')
    kinds = {(f.source, f.kind) for f in dogs.active_faults(1.005)}
    assert ('joint_states', FaultKind.MALFORMED) in kinds


# --------------------------------------------------------------------- position targets
def test_position_targets_never_lead_a_lagging_arm_through_the_table():
    cfg = SafetyConfig.load()
    filt = SafetyFilter(MODEL, cfg)
    # The arm above the table, the reference pushing it down; the arm lags (does not move):
    # anchored targets would run ahead of it into the table.
    q = MODEL.q_home.copy()
    for _ in range(200):
        kin = MODEL.kinematics(q)
        h_ee = kin.ee_pos[2] - cfg.table.height_m - cfg.table.ee_margin_m
        if h_ee < 0.03:
            break
        q = q + 0.01 * np.linalg.pinv(MODEL.ee_jacobian(q)[:3]) @ np.array([0.0, 0.0, -0.1])
    down = np.array([0.0, 0.0, -0.25, 0.0, 0.0, 0.0])
    for k in range(300):
        result = filt.step(RobotState(q, np.zeros(7), k * cfg.dt), down)
        table = {b.name: b.value for b in result.barriers}
        target = filt.barriers.true_values(result.q_cmd)
        assert target['table:ee'] >= min(table['table:ee'], 0.0) - 1e-9, (k, target['table:ee'])
        # The arm follows only a tenth of each command (a lagging servo).
        q = q + 0.1 * (result.q_cmd - q)


# --------------------------------------------------------------------- QoS reports
def test_incompatible_qos_is_reported_as_an_error_per_topic():
    from genpolicy_ros.nodes.diagnostics import ERROR, OK, TransportHealth
    logs = []
    node = SimpleNamespace(get_logger=lambda: SimpleNamespace(
        error=lambda text, **kw: logs.append(text)))
    health = TransportHealth(node)
    assert health.report('n').level == bytes([OK])
    callbacks = health.callbacks('/joint_states')
    info = SimpleNamespace(total_count=1, last_policy_kind=SimpleNamespace(name='RELIABILITY'))
    callbacks.incompatible_qos(info)
    status = health.report('n')
    assert status.level == bytes([ERROR])
    assert {kv.key: kv.value for kv in status.values} == {'incompatible_qos./joint_states': '1'}
    assert logs
