"""Watchdogs: one test per fault kind, each checking the fault appears and then clears."""

from genpolicy_ros.monitor.watchdogs import Fault, FaultKind, HARD_KINDS, WatchdogConfig, \
    Watchdogs
import numpy as np
import pytest

V_MAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
H = 16
TIMES = 0.1 * np.arange(H)


def _config(**overrides):
    params = {
        'camera': {'stale_ms': 300.0, 'max_stamp_jump_ms': 300.0},
        'joint_states': {'stale_ms': 50.0, 'max_stamp_jump_ms': 50.0},
        'chunks': {'stale_ms': 1500.0, 'max_stamp_jump_ms': 1500.0},
        'safe_command': {'stale_ms': 50.0, 'max_stamp_jump_ms': 50.0},
        'max_future_stamp_ms': 50.0, 'command_jump_factor': 2.0, 'command_period_ms': 10.0,
        'command_velocity_factor': 1.05, 'fallback_window_commands': 10,
        'max_fallback_fraction': 0.2, 'inference_latency_budget_ms': 250.0,
    }
    params.update(overrides)
    return WatchdogConfig.from_dict(params)


def _kinds(faults, source=None):
    return {f.kind for f in faults if source is None or f.source == source}


def _all_live(w, t):
    """Feed every stream one good message at time t (commands at rest at q=0)."""
    w.on_camera(t, t)
    w.on_joint_state(np.zeros(7), np.zeros(7), t, t)
    w.on_chunk(t, TIMES, np.zeros((4, H, 3)), t)
    w.on_safe_command(np.zeros(7), np.zeros(7), t, False, t)


def test_everything_is_stale_before_the_first_message_and_fresh_after():
    """Everything is stale before the first message and fresh after."""
    w = Watchdogs(_config(), V_MAX)
    faults = w.active_faults(0.0)
    assert {f.source for f in faults if f.kind is FaultKind.STALE} == {
        'camera', 'joint_states', 'chunks', 'safe_command'}
    assert all(f.hard for f in faults)
    _all_live(w, 1.0)
    assert w.active_faults(1.0) == []


def test_stale_stream_reports_its_age_and_clears_when_data_returns():
    """Stale stream reports its age and clears when data returns."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    for t in np.arange(1.01, 1.4, 0.01):  # everything but the camera keeps flowing
        w.on_joint_state(np.zeros(7), np.zeros(7), t, t)
        w.on_safe_command(np.zeros(7), np.zeros(7), t, False, t)
    faults = w.active_faults(1.4)
    stale = [f for f in faults if f.kind is FaultKind.STALE]
    assert [f.source for f in stale] == ['camera']
    assert stale[0].value == pytest.approx(400.0) and stale[0].threshold == 300.0
    assert 'ms old' in stale[0].message
    w.on_camera(1.4, 1.4)
    assert _kinds(w.active_faults(1.4)) == set()


def test_non_finite_joint_state_is_rejected_until_a_good_one_arrives():
    """Non finite joint state is rejected until a good one arrives."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    q = np.zeros(7)
    q[3] = np.nan
    assert not w.on_joint_state(q, np.zeros(7), 1.01, 1.01)
    faults = [f for f in w.active_faults(1.01) if f.source == 'joint_states']
    assert [f.kind for f in faults] == [FaultKind.NON_FINITE] and faults[0].value == 1.0
    assert w.streams['joint_states'].last_good_stamp == 1.0  # bad data does not refresh
    assert w.on_joint_state(np.zeros(7), np.zeros(7), 1.02, 1.02)
    assert _kinds(w.active_faults(1.02), 'joint_states') == set()


def test_non_finite_stamp_and_chunk_samples_are_faults():
    """Non finite stamp and chunk samples are faults."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    assert not w.on_camera(float('nan'), 1.01)
    assert _kinds(w.active_faults(1.01), 'camera') == {FaultKind.NON_FINITE}
    samples = np.zeros((4, H, 3))
    samples[0, 5, 1] = np.inf
    assert not w.on_chunk(1.0, TIMES, samples, 1.02)
    assert _kinds(w.active_faults(1.02), 'chunks') == {FaultKind.NON_FINITE}


def test_wrong_sizes_are_malformed():
    """Wrong sizes are malformed."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    assert not w.on_joint_state(np.zeros(6), np.zeros(7), 1.01, 1.01)
    assert not w.on_chunk(1.01, TIMES[:-2], np.zeros((4, H, 3)), 1.01)
    assert not w.on_chunk(1.02, TIMES, np.zeros((4, H, 2)), 1.02, expected_dim=3)
    assert 'dimension changed' in str([f for f in w.active_faults(1.02)
                                       if f.kind is FaultKind.MALFORMED][-1])
    kinds = {(f.source, f.kind) for f in w.active_faults(1.01)}
    assert ('joint_states', FaultKind.MALFORMED) in kinds
    assert ('chunks', FaultKind.MALFORMED) in kinds


def test_stamp_going_backwards_raises_one_fault_that_clears_on_the_next_message():
    """Stamp going backwards raises one fault that clears on the next message."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    assert not w.on_camera(0.9, 1.05)
    fault = [f for f in w.active_faults(1.05) if f.source == 'camera'][0]
    assert fault.kind is FaultKind.TIME_BACKWARDS and fault.value == pytest.approx(-100.0)
    assert w.on_camera(1.1, 1.1)   # monotone again (relative to the new reference)
    assert _kinds(w.active_faults(1.1), 'camera') == set()


def test_stamp_jumping_forward_or_into_the_future_is_a_fault():
    """Stamp jumping forward or into the future is a fault."""
    w = Watchdogs(_config(camera={'stale_ms': 1000.0, 'max_stamp_jump_ms': 300.0}), V_MAX)
    assert w.on_camera(0.6, 1.0)    # the first frame is 400 ms old (slow camera), no fault
    assert not w.on_camera(0.96, 1.01)  # stamps advanced 360 ms while the clock moved 10 ms
    fault = [f for f in w.active_faults(1.01) if f.source == 'camera'][0]
    assert fault.kind is FaultKind.TIME_JUMP and fault.value == pytest.approx(350.0)
    assert fault.threshold == 300.0
    assert not w.on_joint_state(np.zeros(7), np.zeros(7), 1.2, 1.01)  # 190 ms in the future
    assert _kinds(w.active_faults(1.01), 'joint_states') == {FaultKind.TIME_JUMP,
                                                             FaultKind.STALE}
    assert w.on_camera(1.1, 1.07)
    assert _kinds(w.active_faults(1.07), 'camera') == set()


def test_a_gap_in_a_stream_is_staleness_not_a_clock_jump():
    """A gap in a stream is staleness not a clock jump."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    assert _kinds(w.active_faults(1.5), 'camera') == {FaultKind.STALE}
    assert w.on_camera(1.5, 1.5)
    assert _kinds(w.active_faults(1.5), 'camera') == set()


def test_command_jump_beyond_velocity_limits_is_a_fault():
    """Command jump beyond velocity limits is a fault."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    dt = 0.01
    allowed = V_MAX * dt * 2.0
    ok = np.zeros(7)
    ok[0] = 0.9 * allowed[0]
    assert w.on_safe_command(ok, np.zeros(7), 1.0 + dt, False, 1.0 + dt)
    jump = ok.copy()
    jump[5] += 1.1 * allowed[5]
    assert not w.on_safe_command(jump, np.zeros(7), 1.0 + 2 * dt, False, 1.0 + 2 * dt)
    fault = [f for f in w.active_faults(1.02) if f.source == 'safe_command'][0]
    assert fault.kind is FaultKind.COMMAND_JUMP and 'joint 6' in fault.message
    assert fault.value == pytest.approx(1.1 * allowed[5])
    assert fault.threshold == pytest.approx(allowed[5])
    assert w.on_safe_command(jump, np.zeros(7), 1.03, False, 1.03)  # continuous again
    assert _kinds(w.active_faults(1.03), 'safe_command') == set()


def test_a_gap_does_not_license_a_large_jump():
    """A gap does not license a large jump."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    q = np.full(7, 0.3)  # 0.3 rad in 1 s would be fine at 2.2 rad/s, not in the 50 ms cap
    assert not w.on_safe_command(q, np.zeros(7), 2.0, False, 2.0)
    fault = [f for f in w.active_faults(2.0) if f.kind is FaultKind.COMMAND_JUMP][0]
    assert fault.threshold == pytest.approx(2.175 * 0.05 * 2.0)


def test_timer_jitter_does_not_shrink_the_allowed_step_below_one_period():
    """Two commands stamped 2 ms apart may still be one 10 ms control period apart in q."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    assert w.on_safe_command(np.zeros(7), np.zeros(7), 1.000, False, 1.000)
    step = np.zeros(7)
    step[3] = 1.5 * V_MAX[3] * 0.010   # 1.5 periods of full speed: within factor 2 of one period
    assert w.on_safe_command(step, np.zeros(7), 1.002, False, 1.002)
    too_far = step.copy()
    too_far[3] += 2.5 * V_MAX[3] * 0.010
    assert not w.on_safe_command(too_far, np.zeros(7), 1.004, False, 1.004)


def test_velocity_command_beyond_limits_is_a_fault():
    """Velocity command beyond limits is a fault."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    dq = np.zeros(7)
    dq[2] = 1.1 * V_MAX[2]
    assert not w.on_safe_command(np.zeros(7), dq, 1.01, False, 1.01)
    assert _kinds(w.active_faults(1.01)) == {FaultKind.COMMAND_VELOCITY}


def test_fallback_rate_over_the_window_is_a_soft_fault():
    """Fallback rate over the window is a soft fault."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)  # one nominal command
    t = 1.0
    for fb in (True, True):
        t += 0.01
        w.on_safe_command(np.zeros(7), np.zeros(7), t, fb, t)
    assert w.fallback_fraction == pytest.approx(0.2)
    assert FaultKind.FALLBACK_RATE not in _kinds(w.active_faults(t))  # 2/10 is not > 0.2
    t += 0.01
    w.on_safe_command(np.zeros(7), np.zeros(7), t, True, t)
    fault = [f for f in w.active_faults(t) if f.kind is FaultKind.FALLBACK_RATE][0]
    assert not fault.hard and fault.value == pytest.approx(0.3)
    for _ in range(10):
        t += 0.01
        w.on_safe_command(np.zeros(7), np.zeros(7), t, False, t)
    assert FaultKind.FALLBACK_RATE not in _kinds(w.active_faults(t))


def test_inference_latency_over_budget_is_a_soft_fault_until_a_fast_chunk():
    """Inference latency over budget is a soft fault until a fast chunk."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    assert w.on_chunk(1.8, TIMES, np.zeros((4, H, 3)), 2.2)
    fault = [f for f in w.active_faults(2.2) if f.kind is FaultKind.LATENCY][0]
    assert not fault.hard and fault.value == pytest.approx(400.0)
    assert w.latency_ms == pytest.approx(400.0)
    w.on_chunk(2.6, TIMES, np.zeros((4, H, 3)), 2.65)
    assert FaultKind.LATENCY not in _kinds(w.active_faults(2.65))


def test_severity_is_fixed_by_kind():
    """Severity is fixed by kind."""
    assert FaultKind.STALE in HARD_KINDS and FaultKind.COMMAND_JUMP in HARD_KINDS
    assert FaultKind.LATENCY not in HARD_KINDS and FaultKind.FALLBACK_RATE not in HARD_KINDS
    f = Fault(FaultKind.NON_FINITE, 'camera', '1 NaN', 1.0, 0.0)
    assert f.hard and str(f) == 'camera: Input contains NaN or Inf: 1 NaN'


def test_reset_forgets_history():
    """Reset forgets history."""
    w = Watchdogs(_config(), V_MAX)
    _all_live(w, 1.0)
    w.reset()
    assert FaultKind.STALE in _kinds(w.active_faults(1.0), 'camera')


def test_config_validation():
    """Config validation."""
    with pytest.raises(ValueError, match='missing'):
        WatchdogConfig.from_dict({'camera': {'stale_ms': 1.0, 'max_stamp_jump_ms': 1.0}})
    with pytest.raises(ValueError, match='max_fallback_fraction'):
        _config(max_fallback_fraction=1.5)
    with pytest.raises(TypeError, match='stale_ms'):
        _config(camera={'stale_ms': 300, 'max_stamp_jump_ms': 300.0})
    with pytest.raises(ValueError, match='velocity_limits'):
        Watchdogs(_config(), -V_MAX)
