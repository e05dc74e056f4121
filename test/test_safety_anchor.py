"""Position targets integrate the previous target (no drift when the joint controller sags)."""

import numpy as np

from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import RobotState, SafetyFilter


def test_targets_integrate_commands_not_measurements_within_tolerance():
    model = FrankaModel()
    cfg = SafetyConfig.load()
    filt = SafetyFilter(model, cfg)
    q = model.q_home.copy()
    twist = np.array([0.0, 0.0, 0.05, 0.0, 0.0, 0.0])   # slowly up
    first = filt.step(RobotState(q, np.zeros(7), 0.0), twist)
    assert np.allclose(first.q_cmd, q + cfg.dt * first.dq_cmd)
    # The arm did not move at all (it sags): the next target builds on the previous target.
    second = filt.step(RobotState(q, np.zeros(7), cfg.dt), twist)
    assert np.allclose(second.q_cmd, first.q_cmd + cfg.dt * second.dq_cmd)
    # ...but never runs away from the measured position by more than the tolerance.
    for k in range(2000):
        last = filt.step(RobotState(q, np.zeros(7), (k + 2) * cfg.dt), twist)
    tol = cfg.position_anchor_tolerance_rad
    assert np.max(np.abs(last.q_cmd - q)) <= tol + cfg.dt * np.max(np.abs(last.dq_cmd)) + 1e-12
    filt.reset()
    fresh = filt.step(RobotState(q, np.zeros(7), 0.0), twist)
    assert np.allclose(fresh.q_cmd, q + cfg.dt * fresh.dq_cmd), 'reset must re-anchor'
