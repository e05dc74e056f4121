"""Gate state machine (every transition, latching, reset) and the command it lets through."""

from genpolicy_ros.monitor.gate import CommandGate, Gate, GateConfig, Mode
from genpolicy_ros.monitor.watchdogs import Fault, FaultKind
import numpy as np
import pytest

THRESHOLD = 1.0  # calibrated threshold; slow threshold = 0.8
A_MAX = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])
STALE = Fault(FaultKind.STALE, 'camera', 'newest good message is 400 ms old', 400.0, 300.0)
LATENCY = Fault(FaultKind.LATENCY, 'chunks', 'newest chunk arrived 400 ms late', 400.0, 250.0)


def _config(**overrides):
    params = dict(slow_threshold_fraction=0.8, slow_velocity_scale=0.5,
                  hold_consecutive_decisions=2, recovery_time_s=2.0, scale_ramp_time_s=0.0,
                  max_command_step_s=0.05, auto_release_startup_hold=True,
                  transition_log_size=100)
    params.update(overrides)
    return GateConfig.from_dict(params)


def _running_gate(**overrides):
    gate = Gate(_config(**overrides), THRESHOLD)
    assert gate.update([], 0.0) is Mode.NOMINAL
    return gate


def test_starts_in_hold_and_auto_releases_once_all_inputs_are_live():
    """Starts in hold and auto releases once all inputs are live."""
    gate = Gate(_config(), THRESHOLD)
    assert gate.mode is Mode.HOLD and 'Starting up' in gate.reason
    assert gate.update([STALE], 0.0) is Mode.HOLD
    assert gate.update([], 0.1) is Mode.NOMINAL
    assert gate.transitions[-1].reason == 'all inputs live'


def test_startup_hold_is_not_released_while_the_score_is_above_threshold():
    """Startup hold is not released while the score is above threshold."""
    gate = Gate(_config(), THRESHOLD)
    gate.observe_score(1.5, 0.0)
    assert gate.update([], 0.1) is Mode.HOLD
    gate.observe_score(0.9, 0.8)
    assert gate.update([], 0.9) is Mode.SLOW


def test_startup_hold_without_auto_release_needs_a_reset():
    """Startup hold without auto release needs a reset."""
    gate = Gate(_config(auto_release_startup_hold=False), THRESHOLD)
    assert gate.update([], 0.0) is Mode.HOLD
    ok, msg = gate.reset([], 0.1)
    assert ok and gate.mode is Mode.NOMINAL and 'Reset accepted' in msg


def test_score_above_the_slow_threshold_slows_and_recovers_after_the_recovery_time():
    """Score above the slow threshold slows and recovers after the recovery time."""
    gate = _running_gate()
    assert gate.observe_score(0.5, 1.0) is Mode.NOMINAL
    assert gate.observe_score(0.9, 2.0) is Mode.SLOW
    assert 'slow threshold 0.8' in gate.reason
    gate.observe_score(0.3, 2.8)
    assert gate.update([], 3.9) is Mode.SLOW    # 1.9 s since the high score
    assert gate.update([], 4.0) is Mode.NOMINAL
    t = gate.transitions[-1]
    assert (t.time, t.from_mode, t.to_mode) == (4.0, Mode.SLOW, Mode.NOMINAL)


def test_a_new_high_score_restarts_the_recovery_timer():
    """A new high score restarts the recovery timer."""
    gate = _running_gate()
    gate.observe_score(0.9, 1.0)
    gate.observe_score(0.85, 2.5)
    assert gate.update([], 3.5) is Mode.SLOW
    assert gate.update([], 4.5) is Mode.NOMINAL


def test_soft_fault_slows_while_it_persists():
    """Soft fault slows while it persists."""
    gate = _running_gate()
    assert gate.update([LATENCY], 1.0) is Mode.SLOW
    assert 'latency' in gate.reason
    assert gate.update([LATENCY], 5.0) is Mode.SLOW
    assert gate.update([], 6.0) is Mode.SLOW
    assert gate.update([], 7.0) is Mode.NOMINAL


def test_k_consecutive_scores_above_threshold_hold():
    """K consecutive scores above threshold hold."""
    gate = _running_gate()
    assert gate.observe_score(1.5, 1.0) is Mode.SLOW  # one above: slow, not yet hold
    assert gate.consecutive_above == 1
    assert gate.observe_score(1.2, 1.8) is Mode.HOLD
    assert '2 consecutive' in gate.reason


def test_interrupted_high_scores_do_not_hold():
    """Interrupted high scores do not hold."""
    gate = _running_gate()
    for t, s in enumerate([1.5, 0.2, 1.5, 0.9, 1.5]):
        assert gate.observe_score(s, float(t)) is Mode.SLOW
    assert gate.consecutive_above == 1


def test_hard_fault_holds_from_nominal_and_from_slow():
    """Hard fault holds from nominal and from slow."""
    gate = _running_gate()
    assert gate.update([STALE], 1.0) is Mode.HOLD
    assert 'camera' in gate.reason and 'stale' in gate.reason
    gate = _running_gate()
    gate.update([LATENCY], 1.0)
    assert gate.update([LATENCY, STALE], 1.1) is Mode.HOLD


def test_hold_is_latched_and_reset_refused_while_a_watchdog_is_stale():
    """Hold is latched and reset refused while a watchdog is stale."""
    gate = _running_gate()
    gate.update([STALE], 1.0)
    assert gate.update([], 2.0) is Mode.HOLD      # cause gone: still latched
    gate.observe_score(0.1, 2.5)
    assert gate.update([], 10.0) is Mode.HOLD
    ok, msg = gate.reset([STALE], 11.0)
    assert not ok and gate.mode is Mode.HOLD
    assert 'refused' in msg and 'camera' in msg and '400 ms old' in msg
    ok, msg = gate.reset([], 12.0)
    assert ok and gate.mode is Mode.NOMINAL
    t = gate.transitions[-1]
    assert (t.time, t.from_mode, t.to_mode, t.reason) == (12.0, Mode.HOLD, Mode.NOMINAL,
                                                          'operator reset')


def test_reset_refused_while_the_score_is_still_above_threshold():
    """Reset refused while the score is still above threshold."""
    gate = _running_gate()
    gate.observe_score(2.0, 1.0)
    gate.observe_score(2.0, 2.0)
    ok, msg = gate.reset([], 2.5)
    assert not ok and 'still above the threshold' in msg
    gate.observe_score(0.1, 3.0)
    assert gate.reset([], 3.5)[0] and gate.mode is Mode.NOMINAL
    assert gate.consecutive_above == 0


def test_reset_with_a_soft_cause_left_goes_to_slow():
    """Reset with a soft cause left goes to slow."""
    gate = _running_gate()
    gate.request_hold('operator pressed hold', 1.0)
    ok, _ = gate.reset([LATENCY], 2.0)
    assert ok and gate.mode is Mode.SLOW and 'latency' in gate.reason


def test_request_hold_forces_a_latched_hold():
    """Request hold forces a latched hold."""
    gate = _running_gate()
    assert gate.request_hold('e-stop drill', 1.0) is Mode.HOLD
    assert gate.reason == 'hold requested: e-stop drill'
    assert gate.update([], 5.0) is Mode.HOLD
    assert gate.reset([], 6.0) == (True, 'Reset accepted: NOMINAL (operator reset)')


def test_reset_outside_hold_is_harmless():
    """Reset outside hold is harmless."""
    gate = _running_gate()
    ok, msg = gate.reset([], 1.0)
    assert ok and 'nothing to reset' in msg and gate.mode is Mode.NOMINAL


def test_every_transition_is_recorded_in_order():
    """Every transition is recorded in order."""
    gate = _running_gate()
    gate.observe_score(0.9, 1.0)
    gate.update([STALE], 2.0)
    gate.reset([], 3.0)
    pairs = [(t.from_mode, t.to_mode) for t in gate.transitions]
    assert pairs == [(Mode.HOLD, Mode.NOMINAL), (Mode.NOMINAL, Mode.SLOW),
                     (Mode.SLOW, Mode.HOLD), (Mode.HOLD, Mode.SLOW)]  # score 0.9 still high
    assert [t.time for t in gate.transitions] == [0.0, 1.0, 2.0, 3.0]
    assert all(t.reason for t in gate.transitions)


def test_without_calibration_scores_never_change_the_mode():
    """Without calibration scores never change the mode."""
    gate = Gate(_config(), None)
    gate.update([], 0.0)
    for t in range(5):
        assert gate.observe_score(100.0, float(t)) is Mode.NOMINAL
    assert gate.slow_threshold is None and gate.last_score == 100.0


def test_modes_have_human_sentences():
    """Modes have human sentences."""
    assert all(len(m.value.split()) > 3 for m in Mode)


def _at_speed_gate(**overrides):
    """Return a CommandGate that has been passing a command moving at dq0 (NOMINAL)."""
    cg = CommandGate(_config(**overrides), A_MAX)
    q0 = np.zeros(7)
    dq0 = np.array([2.0, -1.5, 1.0, 2.1, -2.5, 2.6, 0.3])
    cg.command(Mode.NOMINAL, q0, dq0, (q0 + dq0 * 0.01, dq0), 0.0)
    return cg, q0, dq0


def test_nominal_passes_the_safe_command_unchanged():
    """Nominal passes the safe command unchanged."""
    cg, q0, dq0 = _at_speed_gate()
    safe = (q0 + 0.02, dq0)
    q_cmd, dq_cmd = cg.command(Mode.NOMINAL, q0, dq0, safe, 0.01)
    np.testing.assert_array_equal(q_cmd, safe[0])
    np.testing.assert_array_equal(dq_cmd, safe[1])


def test_slow_scales_velocity_and_position_step():
    """Slow scales velocity and position step."""
    cg, q0, dq0 = _at_speed_gate()
    q_meas = np.full(7, 0.1)
    safe = (q_meas + dq0 * 0.01, dq0)
    q_cmd, dq_cmd = cg.command(Mode.SLOW, q_meas, dq0, safe, 0.01)
    np.testing.assert_allclose(dq_cmd, 0.5 * dq0)
    np.testing.assert_allclose(q_cmd, q_meas + 0.5 * dq0 * 0.01)
    assert cg.scale == 0.5


def test_scale_ramps_instead_of_stepping():
    """Scale ramps instead of stepping."""
    cg, q0, dq0 = _at_speed_gate(scale_ramp_time_s=0.5)
    scales = [cg.scale]
    for i in range(1, 40):
        cg.command(Mode.SLOW, q0, dq0, (q0, dq0), 0.01 * i)
        scales.append(cg.scale)
    steps = np.abs(np.diff(scales))
    assert np.all(steps <= 0.01 / 0.5 + 1e-12)
    assert scales[-1] == 0.5


def test_hold_decelerates_within_acceleration_limits_to_zero_then_holds():
    """Hold decelerates within acceleration limits to zero then holds."""
    cg, q0, dq0 = _at_speed_gate()
    dt = 0.01
    qs, dqs = [q0 + dq0 * 0.01], [dq0]
    for i in range(1, 60):
        q_cmd, dq_cmd = cg.command(Mode.HOLD, q0, np.zeros(7), (q0, dq0), dt * i)
        qs.append(q_cmd)
        dqs.append(dq_cmd)
    qs, dqs = np.array(qs), np.array(dqs)
    accel = np.abs(np.diff(dqs, axis=0)) / dt
    assert np.all(accel <= A_MAX + 1e-9)
    # position targets integrate the velocity targets (trapezoid), so they agree
    np.testing.assert_allclose(np.diff(qs, axis=0), 0.5 * (dqs[1:] + dqs[:-1]) * dt, atol=1e-12)
    stop = int(np.argmax(np.all(dqs == 0.0, axis=1)))
    t_stop_min = np.max(np.abs(dq0) / A_MAX)
    assert 0 < stop <= int(np.ceil(t_stop_min / dt)) + 1
    assert np.all(dqs[stop:] == 0.0)
    np.testing.assert_array_equal(qs[stop:], np.repeat(qs[stop:stop + 1], len(qs) - stop, 0))


def test_hold_without_any_previous_command_stops_from_the_measured_state():
    """Hold without any previous command stops from the measured state."""
    cg = CommandGate(_config(), A_MAX)
    q = np.full(7, 0.2)
    q_cmd, dq_cmd = cg.command(Mode.NOMINAL, q, np.zeros(7), None, 0.0)  # no safe command
    np.testing.assert_array_equal(q_cmd, q)
    np.testing.assert_array_equal(dq_cmd, np.zeros(7))
    with pytest.raises(ValueError, match='finite'):
        CommandGate(_config(), A_MAX).command(Mode.HOLD, np.full(7, np.nan), np.zeros(7),
                                              None, 0.0)


def test_same_tick_twice_returns_the_same_command():
    """Same tick twice returns the same command."""
    cg, q0, dq0 = _at_speed_gate()
    a = cg.command(Mode.HOLD, q0, dq0, None, 0.01)
    b = cg.command(Mode.HOLD, q0, dq0, None, 0.01)
    np.testing.assert_array_equal(a[1], b[1])


def test_gate_config_validation():
    """Gate config validation."""
    with pytest.raises(ValueError, match='slow_velocity_scale'):
        _config(slow_velocity_scale=0.0)
    with pytest.raises(ValueError, match='hold_consecutive_decisions'):
        _config(hold_consecutive_decisions=0)
    with pytest.raises(ValueError, match='unknown'):
        _config(extra=1.0)
