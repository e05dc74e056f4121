"""The fast QP backend (DAQP) agrees with the cvxpy/Clarabel reference on the same problems."""

import numpy as np
import pytest

from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.backend_cvxpy import CvxpyBackend
from genpolicy_ros.safety.backend_daqp import DaqpBackend
from genpolicy_ros.safety.barriers import BarrierSet
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.qp import build_problem, max_violation, QPProblem

AGREE_TOL = 1e-5


@pytest.fixture(scope='module')
def setup():
    """Return the model, YAML config and barrier set shared by the module."""
    model = FrankaModel()
    config = SafetyConfig.load()
    return model, config, BarrierSet(model, config)


def _safe_configuration(model, bset, rng) -> np.ndarray:
    """Rejection-sample q around home with every barrier >= 0 (inside the safe set)."""
    while True:
        q = np.clip(model.q_home + rng.normal(0.0, 0.6, model.nq), bset.q_lower, bset.q_upper)
        if min(bset.true_values(q).values()) >= 0.0:
            return q


def _random_problem(model, config, bset, rng) -> QPProblem:
    q = _safe_configuration(model, bset, rng)
    kin = model.kinematics(q)
    dq_prev = rng.normal(0.0, 0.2, model.nq)
    rows = bset.rows(q, kin, dq_prev)
    # Mix gentle references with adversarial ones far beyond the speed cap.
    scale = rng.choice([0.1, 0.5, 2.5])
    v_des = rng.normal(0.0, scale, 6)
    obj = config.objective
    weights = np.array([obj.linear_weight] * 3 + [obj.angular_weight] * 3)
    posture = obj.posture_gain_per_s * (model.q_home - q)
    return build_problem(kin.ee_jac, v_des, weights, obj.damping_weight, obj.posture_weight,
                         posture, rows, bset.n_slack, config.slack_linear_weight,
                         config.slack_quadratic_weight)


def _compare(setup, count: int, seed: int) -> None:
    model, config, bset = setup
    rng = np.random.default_rng(seed)
    fast, reference = DaqpBackend(), CvxpyBackend()
    agreed = slack_used = 0
    worst = 0.0
    for _ in range(count):
        problem = _random_problem(model, config, bset, rng)
        a, b = fast.solve(problem), reference.solve(problem)
        assert a.status == b.status, (a.status, a.detail, b.status, b.detail)
        if a.status != 'solved':
            continue
        # Both must really satisfy the rows, not just claim to.
        assert max_violation(problem, a.x) <= 1e-7
        assert max_violation(problem, b.x) <= 1e-6
        err = float(np.max(np.abs(a.x - b.x)))
        worst = max(worst, err)
        assert err <= AGREE_TOL, f'backends disagree by {err:.2e}'
        cost = [0.5 * x @ problem.H @ x + problem.f @ x for x in (a.x, b.x)]
        # Clarabel may buy a slightly lower cost with a ~1e-9 violation; DAQP must not be worse.
        assert cost[0] <= cost[1] + 1e-7 * max(1.0, abs(cost[1]))
        agreed += 1
        slack_used += bool(np.any(a.x[problem.nq:] > 1e-7))
    # The sample must be mostly feasible and exercise the soft rows too.
    assert agreed >= 0.9 * count
    assert slack_used > 0
    assert worst <= AGREE_TOL


def test_reference_problem_is_dpp(setup):
    """The cvxpy problem is DPP: a solve only rewrites parameter values."""
    model, config, bset = setup
    backend = CvxpyBackend()
    problem = _random_problem(model, config, bset, np.random.default_rng(3))
    assert backend.solve(problem).status == 'solved'
    assert backend.is_dpp


def test_backends_agree_200_random_instances(setup):
    """Default run: 200 random instances (1000 under the slow marker)."""
    _compare(setup, 200, seed=1)


@pytest.mark.slow
def test_backends_agree_1000_random_instances(setup):
    """Slow run: 1000 random instances."""
    _compare(setup, 1000, seed=2)


def test_backends_agree_infeasible(setup):
    """Both backends report a hard row that no velocity can meet as infeasible."""
    model, config, bset = setup
    problem = _random_problem(model, config, bset, np.random.default_rng(5))
    # A hard row demanding more than the velocity bounds allow: a . dq >= |a|_1 * v_max + 1.
    problem.b[0] = float(np.abs(problem.A[0, :problem.nq]) @ problem.ub[:problem.nq]) + 1.0
    assert DaqpBackend().solve(problem).status == 'infeasible'
    assert CvxpyBackend().solve(problem).status == 'infeasible'


def test_daqp_warm_start_matches_cold_start(setup):
    """Warm starting changes the work done, never the answer."""
    model, config, bset = setup
    rng = np.random.default_rng(7)
    warm, cold = DaqpBackend(warm_start=True), DaqpBackend(warm_start=False)
    for _ in range(50):
        problem = _random_problem(model, config, bset, rng)
        a, b = warm.solve(problem), cold.solve(problem)
        assert a.status == b.status
        if a.status == 'solved':
            assert np.max(np.abs(a.x - b.x)) <= 1e-8
