"""SafetyFilter: minimal intervention, statuses, fallbacks, reports and configuration."""

import dataclasses

import numpy as np
import pytest
import yaml

from genpolicy_ros.paths import config_path
from genpolicy_ros.safety import barriers as barriers_module
from genpolicy_ros.safety.config import load_parameters, SafetyConfig
from genpolicy_ros.safety.filter import FilterStatus, RobotState, SafetyFilter
from genpolicy_ros.safety.qp import QPSolution
from genpolicy_ros.safety.reference import ReferenceTracker


def _state(q, dq=None, stamp=0.0):
    return RobotState(np.asarray(q, dtype=float),
                      np.zeros(7) if dq is None else np.asarray(dq, dtype=float), stamp)


def _resolved_rate(model, config, q, v_des):
    """Return the unconstrained optimum by a stacked least-squares solve (independent path)."""
    obj = config.objective
    jac = model.kinematics(q).ee_jac
    w = np.sqrt([obj.linear_weight] * 3 + [obj.angular_weight] * 3)
    proj = np.eye(7) - np.linalg.pinv(jac) @ jac
    posture = obj.posture_gain_per_s * (model.q_home - q)
    lhs = np.vstack([w[:, None] * jac, np.sqrt(obj.damping_weight) * np.eye(7),
                     np.sqrt(obj.posture_weight) * proj])
    rhs = np.concatenate([w * v_des, np.zeros(7), np.sqrt(obj.posture_weight) * proj @ posture])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def test_every_status_has_a_distinct_sentence():
    """Each status maps to its own non-empty human sentence."""
    messages = [status.message for status in FilterStatus]
    assert all(isinstance(m, str) and len(m) > 10 for m in messages)
    assert len(set(messages)) == len(FilterStatus)
    assert {s for s in FilterStatus if s.is_fallback} == {
        FilterStatus.INFEASIBLE_FALLBACK, FilterStatus.SOLVER_FAILED_FALLBACK,
        FilterStatus.TIME_BUDGET_FALLBACK, FilterStatus.INVALID_INPUT_FALLBACK}


@pytest.mark.parametrize('backend', ['daqp', 'cvxpy'])
def test_minimal_intervention_equals_resolved_rate(model, config, backend):
    """A safe reference passes unchanged: the command is the unconstrained optimum to 1e-6."""
    filt = SafetyFilter(model, config, backend=backend)
    q = model.q_home + np.array([0.1, 0.1, -0.1, 0.1, 0.0, 0.1, 0.0])
    v_des = np.array([0.05, -0.03, 0.02, 0.05, 0.0, -0.05])
    expected = _resolved_rate(model, config, q, v_des)
    # Arrive already moving at that velocity, so the acceleration bound is not what shapes it.
    result = filt.step(_state(q, expected), v_des)
    assert result.status == FilterStatus.OK, result.message
    assert np.max(np.abs(result.dq_cmd - expected)) <= 1e-6
    assert np.max(np.abs(result.dq_cmd - filt.last_problem.unconstrained_dq())) <= 1e-6
    assert result.active == []
    assert result.slack <= 1e-9
    np.testing.assert_allclose(result.safe_twist, model.kinematics(q).ee_jac @ result.dq_cmd)
    np.testing.assert_allclose(result.q_cmd, q + config.dt * result.dq_cmd)
    np.testing.assert_allclose(result.proposed_twist, v_des)


def test_backends_give_the_same_command_in_closed_loop(model, config):
    """The daqp and cvxpy filters produce the same commands along a table-pushing run."""
    fast, ref = SafetyFilter(model, config, 'daqp'), SafetyFilter(model, config, 'cvxpy')
    q, dq = model.q_home.copy(), np.zeros(7)
    v_des = np.array([0.3, 0.1, -0.6, 0.0, 0.2, 0.0])
    for step in range(60):
        a = fast.step(_state(q, dq, 0.01 * step), v_des)
        b = ref.step(_state(q, dq, 0.01 * step), v_des)
        assert a.status == b.status
        assert np.max(np.abs(a.dq_cmd - b.dq_cmd)) <= 1e-5
        q, dq = q + config.dt * a.dq_cmd, a.dq_cmd


def test_speed_cap_polytope_lies_inside_the_ball():
    """Every vertex of the inner polytope is within the cap, and it is not too conservative."""
    from scipy.spatial import HalfspaceIntersection
    normals, offset = barriers_module.inner_speed_polytope(0.25, 32)
    vertices = HalfspaceIntersection(np.hstack([normals, -offset * np.ones((32, 1))]),
                                     np.zeros(3)).intersections
    assert np.max(np.linalg.norm(vertices, axis=1)) <= 0.25 + 1e-12
    assert offset >= 0.8 * 0.25   # inscribed radius of the polytope


def test_reports_have_readable_names(model, config):
    """One report per group, with the documented names, and obstacle groups follow updates."""
    filt = SafetyFilter(model, config)
    result = filt.step(_state(model.q_home), np.zeros(6))
    names = [r.name for r in result.barriers]
    assert len(names) == len(set(names)) == len(filt.report_names())
    for expected in ('table:ee', 'table:panda_link5#2', 'workspace:x_max', 'obstacle:0',
                     'obstacle:1', 'joint_limit:panda_joint4_upper',
                     'joint_velocity:panda_joint7', 'speed_cap', 'acceleration:panda_joint1'):
        assert expected in names
    assert not any(n.startswith('table:panda_hand') for n in names)  # excluded in the YAML
    filt.set_obstacles(np.array([[0.5, 0.3, 0.2], [0.5, -0.3, 0.2], [0.0, 0.5, 0.5]]),
                       [0.05, 0.05, 0.05])
    result = filt.step(_state(model.q_home), np.zeros(6))
    names = [r.name for r in result.barriers]
    assert 'obstacle:2' in names and 'obstacle:3' not in names
    geometry = filt.barriers.obstacle_geometry()
    assert len(geometry) == 3
    np.testing.assert_allclose(geometry[2][0], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(geometry[2][1], [0.0, 0.5, 0.5])
    assert geometry[2][2] == 0.05
    value = {r.name: r.value for r in result.barriers}
    ee = model.kinematics(model.q_home).ee_pos
    assert value['table:ee'] == pytest.approx(ee[2] - config.table.ee_margin_m)
    assert value['workspace:x_max'] == pytest.approx(config.workspace.upper_m[0] - ee[0])
    with pytest.raises(ValueError):
        filt.set_obstacles(np.zeros((2, 3)), [0.1])


def test_no_reference_decelerates_to_hold(model, config):
    """Without a reference the arm stops within the acceleration bound, then holds."""
    filt = SafetyFilter(model, config)
    q = model.q_home.copy()
    dq = np.array([0.3, -0.2, 0.2, 0.3, -0.3, 0.2, 0.4])
    a_max = config.acceleration_scale * model.limits.acceleration
    for step in range(100):
        result = filt.step(_state(q, dq, 0.01 * step), None)
        assert result.status == FilterStatus.STALE_REFERENCE
        assert np.all(np.abs(result.dq_cmd - dq) <= a_max * config.dt + 1e-9)
        q, dq = q + config.dt * result.dq_cmd, result.dq_cmd
    assert np.max(np.abs(dq)) <= 1e-6
    assert result.slack == 0.0


@pytest.mark.parametrize('bad', ['nan_q', 'inf_dq', 'short_q', 'none_q', 'nan_reference',
                                 'long_reference'])
def test_invalid_input_falls_back_without_raising(model, config, bad):
    """NaN/Inf/wrong sizes give INVALID_INPUT_FALLBACK and a decelerating command."""
    filt = SafetyFilter(model, config)
    q = model.q_home.copy()
    dq = np.full(7, 0.2)
    filt.step(_state(q, dq), np.array([0.05, 0, 0, 0, 0, 0]))
    prev = filt.step(_state(q, dq), np.array([0.05, 0, 0, 0, 0, 0])).dq_cmd
    state, reference = _state(q, dq), np.array([0.05, 0, 0, 0, 0, 0])
    if bad == 'nan_q':
        state.q[2] = np.nan
    elif bad == 'inf_dq':
        state.dq[0] = np.inf
    elif bad == 'short_q':
        state.q = state.q[:6]
    elif bad == 'none_q':
        state.q = None
    elif bad == 'nan_reference':
        reference[1] = np.nan
    else:
        reference = np.zeros(7)
    result = filt.step(state, reference)
    assert result.status == FilterStatus.INVALID_INPUT_FALLBACK
    assert result.detail
    assert np.all(np.isfinite(result.dq_cmd)) and np.all(np.isfinite(result.q_cmd))
    a_max = config.acceleration_scale * model.limits.acceleration
    assert np.all(np.abs(result.dq_cmd - prev) <= a_max * config.dt + 1e-9)
    assert np.linalg.norm(result.dq_cmd) < np.linalg.norm(prev)


def test_invalid_first_state_commands_zero_velocity(model, config):
    """With no valid state ever seen, the fallback is zero velocity and no position target."""
    filt = SafetyFilter(model, config)
    result = filt.step(RobotState(np.full(7, np.nan), np.zeros(7), 0.0), None)
    assert result.status == FilterStatus.INVALID_INPUT_FALLBACK
    assert np.all(result.dq_cmd == 0.0) and np.all(np.isnan(result.q_cmd))


def test_conflicting_constraints_fall_back(model, config):
    """An obstacle engulfing the hand cannot be escaped within the limits: fallback, no crash."""
    filt = SafetyFilter(model, config)
    q = model.q_home.copy()
    dq = np.array([0.0, 0.1, 0.0, -0.1, 0.0, 0.1, 0.0])
    dq = filt.step(_state(q, dq), np.array([0.0, 0.0, -0.2, 0, 0, 0])).dq_cmd
    assert np.linalg.norm(dq) > 0.05
    ee = model.kinematics(q).ee_pos
    filt.set_obstacles(ee[None, :], [0.2])
    statuses = []
    for step in range(60):
        result = filt.step(_state(q, dq, 0.01 * step), np.array([0.0, 0.0, -0.2, 0, 0, 0]))
        statuses.append(result.status)
        assert result.status == FilterStatus.INFEASIBLE_FALLBACK, result.status
        assert np.all(np.abs(result.dq_cmd - dq) <= filt.a_max * config.dt + 1e-9)
        q, dq = result.q_cmd, result.dq_cmd
    assert np.all(dq == 0.0)                       # came to rest and holds
    assert not any(r.active for r in result.barriers)
    assert {r.name: r.value for r in result.barriers}['obstacle:0'] < 0.0


def test_obstacle_at_the_workspace_edge_hard_barrier_wins(model, config):
    """An obstacle appears intruding on the hand, with the box face 5 mm behind the TCP.

    Backing off violates the soft box, so slack is used; the hard obstacle barrier recovers to
    >= 0 and never gets worse, and nothing falls back or raises.
    """
    q = model.q_home.copy()
    kin = model.kinematics(q)
    box = dataclasses.replace(config.workspace, x_min_m=float(kin.ee_pos[0]) - 0.005)
    filt = SafetyFilter(model, dataclasses.replace(config, workspace=box))
    front = np.max(kin.sphere_centers[:, 0] + model.sphere_radii)
    # A 1 m sphere (a wall, locally) whose surface cuts 1 cm into the hand's spheres.
    center = [front + 1.0 - 0.01 - config.obstacles.margin_m, kin.ee_pos[1], kin.ee_pos[2]]
    filt.set_obstacles(np.array([center]), [1.0])
    h = filt.barriers.true_values(q)['obstacle:0']
    assert h < -0.005
    dq, seen = np.zeros(7), []
    for step in range(100):
        result = filt.step(_state(q, dq, 0.01 * step), np.zeros(6))
        seen.append(result.status)
        q, dq = result.q_cmd, result.dq_cmd
        h_next = filt.barriers.true_values(q)['obstacle:0']
        assert h_next >= h - 1e-9
        h = h_next
    assert seen[0] == FilterStatus.SLACK_USED and 'obstacle:0' in result.active
    assert not any(s.is_fallback for s in seen)
    assert h >= 0.0


def test_table_above_the_hand_is_infeasible(model, config):
    """A table 5 cm above the TCP cannot be escaped under the speed cap: fallback, no crash."""
    table = dataclasses.replace(config.table, height_m=float(model.kinematics(
        model.q_home).ee_pos[2]) + 0.05)
    filt = SafetyFilter(model, dataclasses.replace(config, table=table))
    result = filt.step(_state(model.q_home), np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.0]))
    assert result.status == FilterStatus.INFEASIBLE_FALLBACK
    assert np.all(result.dq_cmd == 0.0)
    assert {r.name: r.value for r in result.barriers}['table:ee'] < 0.0


class _LyingBackend:
    """A solver that claims success but returns an unsafe command (fault injection)."""

    name = 'lying'

    def solve(self, problem):
        x = np.zeros(problem.n)
        x[:problem.nq] = 10.0          # far beyond every velocity bound
        return QPSolution(x, 'solved', 1e-5)

    def reset(self):
        pass


class _CrashingBackend(_LyingBackend):
    """A solver that raises."""

    def solve(self, problem):
        raise RuntimeError('solver exploded')


@pytest.mark.parametrize('backend', [_LyingBackend(), _CrashingBackend()])
def test_solver_claims_are_checked(model, config, backend):
    """A 'solved' flag with an infeasible answer, or an exception, ends in the fallback."""
    filt = SafetyFilter(model, config)
    filt.backend = backend
    dq = np.full(7, 0.1)
    result = filt.step(_state(model.q_home, dq), np.array([0.1, 0, 0, 0, 0, 0]))
    assert result.status == FilterStatus.SOLVER_FAILED_FALLBACK
    assert result.detail
    assert np.all(np.abs(result.dq_cmd) <= np.abs(dq))


def test_time_budget_fallback(model, config):
    """A solve slower than the budget is discarded."""
    filt = SafetyFilter(model, dataclasses.replace(config, solve_time_budget_s=1e-9))
    result = filt.step(_state(model.q_home), np.array([0.1, 0, 0, 0, 0, 0]))
    assert result.status == FilterStatus.TIME_BUDGET_FALLBACK
    assert result.solve_time_s > 1e-9
    assert np.all(result.dq_cmd == 0.0)


def test_reset_restarts_from_measured_velocity(model, config):
    """After reset the acceleration bound is taken around the measured dq again."""
    filt = SafetyFilter(model, config)
    q = model.q_home.copy()
    filt.step(_state(q, np.zeros(7)), None)
    filt.reset()
    dq = np.array([0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0])
    result = filt.step(_state(q, dq), None)
    assert np.all(np.abs(result.dq_cmd - dq) <= filt.a_max * config.dt + 1e-9)
    assert result.dq_cmd[1] > 0.3


def test_step_tracking_follows_a_chunk(model, config):
    """Tracker + filter bring the TCP onto a chunk's final pose within a few millimetres."""
    filt = SafetyFilter(model, config)
    tracker = ReferenceTracker(config.tracking)
    q = model.q_home.copy()
    kin = model.kinematics(q)
    goal = kin.ee_pos + np.array([0.1, 0.05, -0.15])
    from scipy.spatial.transform import Rotation
    quat = Rotation.from_matrix(kin.ee_rot).as_quat()   # xyzw
    tracker.set_chunk_arrays(0.0, [0.5, 1.0], [kin.ee_pos + 0.5 * (goal - kin.ee_pos), goal],
                             [quat, quat])
    dq = np.zeros(7)
    for step in range(300):
        t = 0.01 * step
        if step % 40 == 0:   # the policy re-sends the chunk (fresh stamp) every 0.4 s
            tracker.set_chunk_arrays(t, [max(0.5 - t, 0.01), max(1.0 - t, 0.02)],
                                     [kin.ee_pos + 0.5 * (goal - kin.ee_pos), goal], [quat, quat])
        result = filt.step_tracking(_state(q, dq, t), tracker)
        assert not result.status.is_fallback
        q, dq = result.q_cmd, result.dq_cmd
    assert np.linalg.norm(model.kinematics(q).ee_pos - goal) < 0.005
    # The chunk goes stale 0.5 s after its stamp: the arm comes to rest.
    for step in range(300, 400):
        result = filt.step_tracking(_state(q, dq, 0.01 * step), tracker)
        q, dq = result.q_cmd, result.dq_cmd
    assert result.status == FilterStatus.STALE_REFERENCE
    assert np.max(np.abs(dq)) < 1e-6


def test_config_loads_and_validates():
    """The YAML has every field; flattened ROS names work; bad values are rejected."""
    params = load_parameters()
    cfg = SafetyConfig.from_dict(params)
    assert cfg.dt == pytest.approx(1.0 / params['control_rate_hz'])
    assert cfg.speed_cap.max_speed_mps == 0.25
    assert cfg.joint_limits.margin_rad == (0.1, 0.1, 0.1, 0.03, 0.1, 0.1, 0.1)
    flat = {}

    def flatten(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(f'{prefix}{key}.', value)
            else:
                flat[f'{prefix}{key}'] = value
    flatten('', params)
    from_flat = SafetyConfig.from_dict(flat)
    assert from_flat.table == cfg.table and from_flat.speed_cap == cfg.speed_cap
    np.testing.assert_array_equal(from_flat.obstacles.centers_m, cfg.obstacles.centers_m)
    bad = dict(params, table=dict(params['table'], gain=1.5))
    with pytest.raises(ValueError):
        SafetyConfig.from_dict(bad)
    with pytest.raises(ValueError):
        SafetyConfig.from_dict(dict(params, backend='osqp'))


def test_yaml_uses_ros_parameter_types():
    """Every leaf is bool/int/float/str or a flat homogeneous non-empty list of those."""
    with open(config_path('safety.yaml'), encoding='utf-8') as stream:
        doc = yaml.safe_load(stream)
    assert list(doc) == ['safety_filter_node']
    leaves = []

    def walk(node):
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            else:
                leaves.append(value)
    walk(doc['safety_filter_node']['ros__parameters'])
    for value in leaves:
        if isinstance(value, list):
            assert value, 'ROS cannot type an empty list'
            assert len({type(v) for v in value}) == 1
            assert isinstance(value[0], (bool, int, float, str))
        else:
            assert isinstance(value, (bool, int, float, str))


def test_fallback_keeps_the_speed_cap(model, config):
    """Even the stopping law never commands the TCP above the speed cap."""
    filt = SafetyFilter(model, config)
    filt.backend = _CrashingBackend()
    dq = np.full(7, 1.5)   # measured motion far above the cap at the TCP
    jac = model.kinematics(model.q_home).ee_jac
    assert np.linalg.norm(jac[:3] @ dq) > 1.0
    result = filt.step(_state(model.q_home, dq), np.zeros(6))
    assert result.status == FilterStatus.SOLVER_FAILED_FALLBACK
    assert np.linalg.norm(jac[:3] @ result.dq_cmd) <= config.speed_cap.max_speed_mps
    ratio = result.dq_cmd / dq    # it slows down along the same joint-space direction
    assert np.allclose(ratio, ratio[0]) and 0.0 <= ratio[0] < 1.0


def test_obstacle_added_while_moving_is_respected(model, config):
    """An obstacle set at runtime ahead of the moving TCP is never entered."""
    filt = SafetyFilter(model, config)
    q, dq = model.q_home.copy(), np.zeros(7)
    push = np.array([0.0, 0.0, -0.25, 0.0, 0.0, 0.0])
    for step in range(30):
        result = filt.step(_state(q, dq, 0.01 * step), push)
        q, dq = result.q_cmd, result.dq_cmd
    ee = model.kinematics(q).ee_pos
    filt.set_obstacles(np.array([[ee[0], ee[1], ee[2] - 0.20]]), [0.05])
    assert filt.barriers.true_values(q)['obstacle:0'] > 0.0
    for step in range(30, 200):
        result = filt.step(_state(q, dq, 0.01 * step), push)
        assert not result.status.is_fallback
        q, dq = result.q_cmd, result.dq_cmd
        assert filt.barriers.true_values(q)['obstacle:0'] >= -1e-6
    assert 'obstacle:0' in result.active
