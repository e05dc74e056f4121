"""genpolicy-eval: the lock-step stack (expert -> filter -> monitor -> PyBullet) end to end."""

import re

import pytest

from genpolicy_ros.evaluation import main, wilson_interval

LAST_LINE = re.compile(r'^success_rate=(\S+) violations=(\d+) mean_intervention=(\S+) '
                       r'episodes=(\d+)$')


def test_eval_prints_the_contract_line_and_keeps_every_barrier(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['--policy', 'expert', '--episodes', '1', '--seed', '100004',
              '--monitor', 'observe', '--phases'])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # --phases: the expert driving through the filter moves along its own direction.
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ['phase'])
    rows = [line.split() for line in lines[header + 1:-1]]
    assert {r[0] for r in rows} <= {'orbit', 'blend', 'push'} and 'push' in {r[0] for r in rows}
    assert all(float(r[3]) > 0.9 and 5.0 < float(r[2]) <= 20.0 for r in rows), rows
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) == 1.0, '\n'.join(lines)
    assert int(m.group(2)) == 0
    assert 0.0 <= float(m.group(3)) < 0.25
    assert int(m.group(4)) == 1
    assert 'episode   0 seed 100004: success' in lines[0]


def test_wilson_interval():
    lo, hi = wilson_interval(45, 50)
    assert lo < 0.9 < hi and 0.78 < lo < 0.80 and 0.95 < hi < 0.97
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_lockstep_episodes_do_not_depend_on_how_long_a_solve_takes():
    # Lock-step runs on simulated time: a solve slower than the filter's wall-clock budget (a
    # loaded machine) must not turn into a fallback hold there, or an episode's result (and the
    # monitor's false-alarm test built on it) would depend on machine load.
    from dataclasses import replace

    from genpolicy_ros.evaluation import LockstepStack
    stack = LockstepStack('expert', monitor='off', max_decisions=20)
    try:
        fast = stack.run_episode(100004)
        solve = stack.filter.backend.solve

        def slow_solve(problem):
            # The same answer, reported as 50 ms of wall time (the budget is 8 ms).
            return replace(solve(problem), solve_time_s=0.05)

        stack.filter.backend.solve = slow_solve
        slow = stack.run_episode(100004)
    finally:
        stack.close()
    assert 'TIME_BUDGET_FALLBACK' not in slow.filter_status, slow.filter_status
    assert slow.filter_status == fast.filter_status
    assert (slow.decisions, slow.final_distance_m, slow.violations) == \
        (fast.decisions, fast.final_distance_m, fast.violations)
    assert slow.intervention_mps == fast.intervention_mps


def test_runtime_overrides_reach_the_policy_and_bad_ones_are_refused():
    # --flow-steps / --samples: the sampler's K and N come from the command line, not the YAML.
    from genpolicy_ros.evaluation import LockstepStack
    stack = LockstepStack('flow', monitor='off', max_decisions=3,
                          runtime_overrides={'flow_steps': 5, 'n_samples': 2})
    try:
        policy = stack.planner.policy
        assert (policy.steps, policy.n_samples) == (5, 2)
        r = stack.run_episode(100004)
        assert r.decisions == 3 and r.violations == 0
    finally:
        stack.close()
    with pytest.raises(ValueError, match='flow_steps and n_samples must be >= 1'):
        LockstepStack('flow', monitor='off', runtime_overrides={'flow_steps': 0})


def test_gating_a_policy_the_monitor_was_not_calibrated_on_warns():
    import warnings

    from genpolicy_ros.evaluation import LockstepStack
    from genpolicy_ros.paths import checkpoint_path
    with warnings.catch_warnings():
        # The shipped policy with its own calibration: silent.
        warnings.simplefilter('error', UserWarning)
        LockstepStack('flow', monitor='gate').close()
    with pytest.warns(UserWarning, match='monitor was calibrated for push_flow_f3.pt'):
        stack = LockstepStack('flow', str(checkpoint_path('push_flow_v3.pt')), monitor='gate')
    stack.close()
