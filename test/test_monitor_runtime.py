"""RuntimeMonitor end to end on a simulated 100 Hz loop, and its YAML configuration."""

import dataclasses

from genpolicy_ros.config_io import read_core_parameters
from genpolicy_ros.monitor.calibration import calibrate
from genpolicy_ros.config_io import unflatten
from genpolicy_ros.monitor.consistency import ConsistencyScorer, OverlapStatus
from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.monitor.novelty import FEATURE_DEFINITION
from genpolicy_ros.monitor.monitor import MonitorConfig, RuntimeMonitor
from genpolicy_ros.monitor.watchdogs import FaultKind
from genpolicy_ros.paths import config_path
import numpy as np
import pytest

V_MAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
A_MAX = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])
H, N = 16, 16
TIMES = 0.1 * np.arange(H)
DT = 0.01            # control period [s]
DECISION_S = 0.8     # one chunk per 8 executed steps
LATENCY_S = 0.05     # inference time of a chunk


def _chunk(rng, stamp, spread_m=0.003, jump_m=0.0):
    """Return samples of a nominal chunk: a straight EE path in absolute time, plus noise."""
    t = stamp + TIMES
    mean = np.array([0.5, 0.0, 0.1]) + t[:, None] * np.array([0.05, 0.02, 0.0])
    offset = jump_m * rng.normal(size=3)  # a policy that changes its mind every decision
    return mean[None] + offset + spread_m * rng.normal(size=(N, H, 3))


@pytest.fixture(scope='module')
def config():
    """Return the shipped configuration (config/monitor.yaml)."""
    return MonitorConfig.load()


@pytest.fixture(scope='module')
def calibration(config):
    """Calibrate on 19 nominal episodes of 8 decisions, exactly as the calibration CLI will.

    The nominal sample spread varies between 2 and 8 mm from decision to decision; the runs
    below are calm nominal episodes with a 3 mm spread.
    """
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(19):
        scorer = ConsistencyScorer(config.consistency)
        episodes.append([
            scorer.score(k * DECISION_S, TIMES,
                         _chunk(rng, k * DECISION_S, rng.uniform(0.002, 0.008))).score
            for k in range(8)])
    # alpha 0.1: 0.05 per alarm channel, which 19 episodes allow; no camera images here
    return calibrate(episodes, 0.1, 'test-policy.pt', config.consistency.definition(),
                     np.zeros(19), FEATURE_DEFINITION, 'unused.npz')


class Loop:
    """A lock-step stand-in for sim + policy + filter + driver around one RuntimeMonitor."""

    def __init__(self, monitor):
        self.monitor = monitor
        self.rng = np.random.default_rng(1)
        self.t = 0.0
        self.q = np.zeros(7)
        self.dq = np.zeros(7)
        self.dq_safe = np.full(7, 0.2)  # the filter keeps asking for 0.2 rad/s
        self.camera = True
        self.jump_m = 0.0
        self.sent = []   # (t, q_cmd, dq_cmd, mode)

    def run(self, seconds):
        """Advance the loop by ``seconds``; return the monitor's mode at the end."""
        for _ in range(int(round(seconds / DT))):
            self.t = round(self.t + DT, 9)
            t, m = self.t, self.monitor
            k = int(round(t / DT))
            m.on_joint_state(self.q, self.dq, t, t)
            if self.camera and k % 7 == 0:       # ~15 Hz
                m.on_camera(t, t)
            stamp = round(t - LATENCY_S, 9)
            if k % 80 == 5 and stamp >= 0.0:      # a chunk every 0.8 s, 50 ms after its stamp
                m.on_chunk_samples(stamp, TIMES, _chunk(self.rng, stamp, jump_m=self.jump_m), t)
            m.on_safe_command(self.q + self.dq_safe * DT, self.dq_safe, t, False, t)
            q_cmd, dq_cmd, mode = m.gated_command(self.q, self.dq, t)
            self.sent.append((t, q_cmd, dq_cmd, mode))
            self.q, self.dq = q_cmd, dq_cmd      # ideal tracking
        return self.monitor.mode


def _monitor(config, calibration):
    return RuntimeMonitor(config, V_MAX, A_MAX, calibration)


def test_nominal_run_stays_nominal_and_passes_commands_through(config, calibration):
    """Nominal run stays nominal and passes commands through."""
    loop = Loop(_monitor(config, calibration))
    assert loop.run(6.0) is Mode.NOMINAL
    transitions = loop.monitor.transitions
    assert [(x.from_mode, x.to_mode) for x in transitions] == [(Mode.HOLD, Mode.NOMINAL)]
    t, q_cmd, dq_cmd, mode = loop.sent[-1]
    np.testing.assert_allclose(dq_cmd, loop.dq_safe)  # scale ramped up to 1
    status = loop.monitor.status()
    assert status.mode is Mode.NOMINAL and status.faults == ()
    assert status.threshold == calibration.threshold and status.velocity_scale == 1.0
    assert status.last_chunk.status is OverlapStatus.OVERLAP
    assert status.score < status.slow_threshold
    kv = dict(status.as_key_values())
    assert kv['mode'] == 'NOMINAL' and kv['faults'] == '0'
    assert kv['calibration'].startswith('test-policy.pt')
    assert all(isinstance(v, str) for v in kv.values())


def test_stale_camera_holds_and_reset_waits_until_it_is_live_again(config, calibration):
    """Stale camera holds and reset waits until it is live again."""
    loop = Loop(_monitor(config, calibration))
    loop.run(2.0)
    loop.camera = False
    stale_s = config.watchdogs.camera.stale_ms / 1000.0
    assert loop.run(stale_s + 0.2) is Mode.HOLD
    hold = loop.monitor.transitions[-1]
    assert hold.to_mode is Mode.HOLD and 'camera' in hold.reason and 'stale' in hold.reason
    # last frame at 1.96 s, then the stale bound, detected at the next 10 ms tick
    assert 1.96 + stale_s - 0.005 < hold.time < 1.96 + stale_s + 0.04
    kv = dict(loop.monitor.status().as_key_values())
    assert kv['mode'] == 'HOLD' and 'ms old' in kv['fault.camera.STALE']
    # the commands sent after the hold ramp down within the acceleration limits and stop
    dqs = np.array([s[2] for s in loop.sent if s[0] >= hold.time - 1e-9])
    assert np.all(np.abs(np.diff(dqs, axis=0)) <= A_MAX * DT + 1e-9)
    assert np.all(dqs[-1] == 0.0)
    ok, msg = loop.monitor.reset()
    assert not ok and 'camera' in msg
    loop.camera = True
    loop.run(0.1)
    assert loop.monitor.mode is Mode.HOLD          # latched although the camera is back
    ok, msg = loop.monitor.reset()
    assert ok and loop.monitor.mode in (Mode.NOMINAL, Mode.SLOW), msg
    assert loop.run(4.0) is Mode.NOMINAL


def test_inconsistent_policy_slows_then_holds(config, calibration):
    """Inconsistent policy slows then holds."""
    loop = Loop(_monitor(config, calibration))
    loop.run(2.0)
    loop.jump_m = 0.05
    loop.run(3.0)
    modes = [(x.from_mode, x.to_mode) for x in loop.monitor.transitions]
    assert (Mode.NOMINAL, Mode.SLOW) in modes and modes[-1] == (Mode.SLOW, Mode.HOLD)
    assert 'consecutive' in loop.monitor.transitions[-1].reason
    assert loop.monitor.status().consecutive_above >= 2
    ok, msg = loop.monitor.reset()
    assert not ok and 'still above the threshold' in msg


def test_nan_chunk_is_rejected_and_holds(config, calibration):
    """Nan chunk is rejected and holds."""
    loop = Loop(_monitor(config, calibration))
    loop.run(1.0)
    bad = _chunk(loop.rng, 0.95)
    bad[3, 2, 0] = np.nan
    assert loop.monitor.on_chunk_samples(0.95, TIMES, bad, 1.0) is None
    assert loop.monitor.update(1.0) is Mode.HOLD
    assert FaultKind.NON_FINITE in {f.kind for f in loop.monitor.status().faults}


def test_uncalibrated_monitor_holds_when_calibration_is_required(config):
    """Uncalibrated monitor holds when calibration is required."""
    loop = Loop(_monitor(config, None))
    assert loop.run(2.0) is Mode.HOLD
    ok, msg = loop.monitor.reset()
    assert not ok and 'calibration' in msg
    assert all(np.all(s[2] == 0.0) for s in loop.sent)


def test_uncalibrated_monitor_can_run_for_calibration_runs(config):
    """Uncalibrated monitor can run for calibration runs."""
    relaxed = dataclasses.replace(config, require_calibration=False)
    loop = Loop(_monitor(relaxed, None))
    assert loop.run(3.0) is Mode.NOMINAL
    status = loop.monitor.status()
    assert status.threshold is None and status.score is not None


def test_calibration_for_another_score_definition_is_refused(config, calibration):
    """Calibration for another score definition is refused."""
    other = dataclasses.replace(calibration, score_definition='something else')
    with pytest.raises(ValueError, match='another score definition'):
        _monitor(config, other)


def test_request_hold_and_reset_through_the_facade(config, calibration):
    """Request hold and reset through the facade."""
    loop = Loop(_monitor(config, calibration))
    loop.run(1.0)
    assert loop.monitor.request_hold('operator') is Mode.HOLD
    loop.run(0.5)
    assert loop.monitor.mode is Mode.HOLD
    assert loop.monitor.reset()[0]


def test_from_files_builds_a_monitor_from_the_yaml(config):
    """From files builds a monitor from the yaml."""
    monitor = RuntimeMonitor.from_files(velocity_limits=V_MAX, acceleration_limits=A_MAX)
    assert monitor.config == config
    if not config_path(config.calibration_file).is_file():
        assert monitor.calibration is None   # never a made-up threshold


def _leaves(d, prefix=''):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f'{prefix}{k}.')
        else:
            yield f'{prefix}{k}', v


def test_yaml_uses_ros_parameter_types_and_survives_ros_flattening(config):
    """Yaml uses ros parameter types and survives ros flattening."""
    params = read_core_parameters('monitor.yaml', 'monitor_node')
    flat = dict(_leaves(params))
    for name, value in flat.items():
        assert type(value) in (bool, int, float, str), name
    assert MonitorConfig.from_dict(unflatten(flat)) == config


def test_config_is_strict_about_missing_unknown_and_mistyped_keys():
    """Config is strict about missing unknown and mistyped keys."""
    params = read_core_parameters('monitor.yaml', 'monitor_node')
    flat = dict(_leaves(params))
    missing = dict(flat)
    del missing['gate.recovery_time_s']
    with pytest.raises(ValueError, match='recovery_time_s'):
        MonitorConfig.from_dict(unflatten(missing))
    with pytest.raises(ValueError, match='unknown'):
        MonitorConfig.from_dict(unflatten({**flat, 'watchdogs.camera.stale_s': 1.0}))
    with pytest.raises(TypeError, match='recovery_time_s'):
        MonitorConfig.from_dict(unflatten({**flat, 'gate.recovery_time_s': 2}))
