"""Adversarial references: the filter keeps the speed cap, the table, obstacles and joint limits.

Step and ramp references at 10x the EE speed cap, references into the table and into an
obstacle for 10^4 control steps, constraints that cannot all hold (fallback to a hold), and the
jerk of hold transitions. Judged on the arm's measured joint states: EE speed from the robot
model, barrier values recomputed with the filter's own barrier code.
"""

import time

import numpy as np
import pytest

from fi_checks import (assert_held, AutoRelease, check_safe, hold_metrics, move_nominally,
                       stage, stays, TRAVEL_Z_M, wait_for_motion, wait_rest)
from fi_graph import filter_overrides, ros_param_args, TEST_OBSTACLE, wait_for

pytestmark = [pytest.mark.fault_injection, pytest.mark.usefixtures('filter_under_test')]

CAP_FACTOR = 10.0


@pytest.fixture(scope='module')
def filter_under_test(fault_graph):
    """Run this module with the monitor's camera-novelty channel off (its freezing check on).

    The filter is under test here, and its attacks drive the arm through views the policy never
    saw (above the push height, beside the push area): the novelty channel rightly holds the
    arm there, and no reset may override it, which would stop every attack. It is tested on
    its own in test_fi_monitor.py.
    """
    shipped = fault_graph.shipped_args['monitor_node']
    fault_graph.restart_with('monitor_node', shipped + ['-p', 'novelty.model_file:=none.npz'])
    fault_graph.recover(120.0)
    yield
    fault_graph.restart_with('monitor_node', shipped)
    fault_graph.recover(120.0)


def _full(*args):
    return pytest.param(*args, marks=pytest.mark.fault_full)


def test_step_reference_at_10x_the_speed_cap(graph, scenario):
    cap = graph.safety.speed_cap.max_speed_mps
    start = np.array([0.35, -0.10, TRAVEL_Z_M])
    assert stage(graph, start)
    target = np.array([0.60, 0.15, TRAVEL_Z_M])
    distance = float(np.linalg.norm(target - start))
    t_step = graph.now() + 0.3
    # The chunk steps from here to the target within one 0.1 s waypoint interval.
    graph.policy.reference = lambda t: start if t < t_step else target
    assert distance / 0.1 >= CAP_FACTOR * cap
    t0 = graph.now()
    with AutoRelease(graph) as operator:
        # distance / cap at the cap; holds on a loaded machine (the operator resets them) make
        # that longer, so the arrival is waited for against a generous deadline.
        arrived = wait_for(lambda: np.linalg.norm(graph.ee() - target) < 0.05,
                           distance / cap + 30.0, 0.05)
    report = check_safe(graph, scenario, t0, requested_speed_mps=distance / 0.1,
                        monitor_resets=operator.resets)
    # The filter slowed the step down to the cap; it did not refuse to move.
    assert report.max_speed_mps >= 0.5 * cap, report
    assert arrived, graph.ee()


def test_ramp_reference_at_10x_the_speed_cap(graph, scenario):
    cap = graph.safety.speed_cap.max_speed_mps
    speed = CAP_FACTOR * cap
    centre = np.array([0.50, 0.0, TRAVEL_Z_M])
    amplitude = 0.15
    period = 4.0 * amplitude / speed

    def triangle(t: float) -> np.ndarray:
        phase = (t % period) / period
        s = 4.0 * phase - 1.0 if phase < 0.5 else 3.0 - 4.0 * phase   # -1 -> 1 -> -1
        return centre + np.array([0.0, amplitude * s, 0.0])
    assert stage(graph, centre)
    t0 = graph.now()
    with AutoRelease(graph) as operator:
        graph.policy.reference = triangle
        time.sleep(4.0)
    report = check_safe(graph, scenario, t0, requested_speed_mps=speed,
                        monitor_resets=operator.resets)
    assert report.max_speed_mps >= 0.5 * cap, report


@pytest.mark.parametrize('steps', [1000, _full(10000)])
def test_references_into_the_table_and_an_obstacle(graph, scenario, steps):
    # Beside the push area (the cube is a real body the filter does not model): 10 cm below
    # the table top next to the test obstacle, and the obstacle's centre.
    obstacle_target = np.array(TEST_OBSTACLE['center_m'])
    table_target = obstacle_target + np.array([-0.12, -0.02, -0.18])
    assert stage(graph, np.array([table_target[0], table_target[1], TRAVEL_Z_M]))
    switch_s = 3.0
    t0 = graph.now()

    def reference(t: float) -> np.ndarray:
        return table_target if int((t - t0) / switch_s) % 2 == 0 else obstacle_target
    graph.policy.reference = reference
    deadline = time.monotonic() + steps / 100.0 * 4.0 + 60.0
    with AutoRelease(graph) as operator:
        while len(graph.observer.statuses_since(t0)) < steps and time.monotonic() < deadline:
            time.sleep(1.0)
    done = len(graph.observer.statuses_since(t0))
    report = check_safe(graph, scenario, t0, filter_steps=done, monitor_resets=operator.resets)
    assert done >= steps, f'only {done} filter steps before the deadline'
    # It was pressed against both: the barriers came close to zero without going below.
    assert report.min_distance_barrier_m < 0.01, report


def test_conflicting_constraints_fall_back_to_a_hold(graph, scenario):
    # An obstacle appears around the hand (a filter restarted with a new keep-out sphere): the
    # obstacle barrier asks for an escape faster than the speed cap allows; no command keeps
    # both, so the filter must fall back to a hold instead of picking one.
    t_start = move_nominally(graph, 1.5)
    filt = graph.procs['safety_filter_node']
    shipped_args = list(filt.args)
    ee = graph.ee()
    params = filter_overrides()
    params['obstacles.centers_m'] = params['obstacles.centers_m'] + [
        float(ee[0]), float(ee[1]), float(ee[2] + 0.03)]
    params['obstacles.radii_m'] = params['obstacles.radii_m'] + [0.08]
    try:
        filt.kill9()
        filt.args = ros_param_args(params)
        filt.start()
        assert wait_for(lambda: 'INFEASIBLE_FALLBACK' in graph.observer.statuses_since(
            graph.now() - 0.5), 60.0), 'the restarted filter never reported a conflict'
        t_conflict = graph.now()
        # The operator lets commands through again (SLOW: the fallback rate is a soft fault).
        graph.release(30.0, ('NOMINAL', 'SLOW'))
        held, why = stays(graph, lambda: graph.not_moving(0.2), 2.0)
        statuses = graph.observer.statuses_since(t_conflict)
        assert held, f'the arm moved under conflicting constraints ({why})'
        assert statuses.count('INFEASIBLE_FALLBACK') > 0.9 * len(statuses), set(statuses)
        metrics = hold_metrics(graph, t_start, graph.now())
        check_safe(graph, scenario, t_start, **metrics)
        assert metrics['jerk_ratio'] <= 1.0, metrics
    finally:
        filt.kill9()
        filt.args = shipped_args
        filt.start()


def test_hold_transitions_stay_within_the_jerk_limit(graph, scenario):
    # Full speed, then an operator hold, then a reset: the stop and the restart are the
    # transitions where a careless stack steps the velocity.
    cap = graph.safety.speed_cap.max_speed_mps
    start = np.array([0.35, 0.15, TRAVEL_Z_M])
    assert stage(graph, start)
    far = np.array([0.65, -0.20, TRAVEL_Z_M])
    graph.policy.reference = lambda t: far
    t0 = graph.now()
    assert wait_for(lambda: graph.report(graph.now() - 0.2).max_speed_mps > 0.8 * cap, 5.0)
    t_hold = graph.now()
    ok, _ = graph.hold_monitor()
    assert ok
    assert wait_rest(graph, 5.0)
    stop = hold_metrics(graph, t_hold, graph.now())
    assert_held(graph, stop)
    graph.policy.reference = lambda t: start
    t_reset = graph.now()
    graph.release(30.0)
    assert wait_for_motion(graph, t_reset)
    time.sleep(1.0)
    restart = hold_metrics(graph, t_reset, graph.now())
    check_safe(graph, scenario, t0, time_to_hold_s=stop['time_to_hold_s'],
               jerk_ratio=max(stop['jerk_ratio'], restart['jerk_ratio']),
               decel_ratio=stop['decel_ratio'])
    assert restart['jerk_ratio'] <= 1.0, restart
