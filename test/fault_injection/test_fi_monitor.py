"""The runtime monitor against its own claims: few false alarms, every OOD condition caught.

Both run the whole stack lock-step (``genpolicy_ros.monitor_eval``: the same policy, filter and
monitor cores as the nodes, on PyBullet, on simulated time), so they are deterministic per seed
and immune to machine load: 20 held-out nominal episodes must alarm (SLOW or HOLD) in at most
a fraction alpha of them, and every injected out-of-distribution condition must put the monitor
in SLOW or HOLD after its onset and before any barrier or speed violation.
"""

from typing import Iterator

import pytest

pytestmark = [pytest.mark.fault_injection, pytest.mark.fault_full]

NOMINAL_EPISODES = 20
OOD_SEEDS = 2


@pytest.fixture(scope='module')
def stack() -> Iterator[object]:
    """Build the lock-step stack once (the learned policy, the shipped calibration)."""
    torch = pytest.importorskip('torch')
    torch.set_num_threads(1)
    from genpolicy_ros.monitor_eval import MonitorEvalStack, ScenarioHook
    s = MonitorEvalStack('flow', None, ScenarioHook())
    try:
        yield s
    finally:
        s.close()


def test_false_positive_rate_on_20_nominal_episodes_is_at_most_alpha(stack, scenario):
    from genpolicy_ros.monitor_eval import run_one
    from genpolicy_ros.sim.task import EVAL_SEED_START
    stack.hook.scenario = None
    outcomes = [run_one(stack, 'nominal', EVAL_SEED_START + i) for i in range(NOMINAL_EPISODES)]
    alarms = [o for o in outcomes if o.alarms]
    alpha = stack.calibration.alpha
    fpr = len(alarms) / len(outcomes)
    scenario.record(episodes=len(outcomes), false_positives=len(alarms), fpr=fpr, alpha=alpha,
                    violations=sum(o.violations for o in outcomes))
    assert fpr <= alpha, [(o.seed, o.alarms[0]) for o in alarms]
    assert sum(o.violations for o in outcomes) == 0


def _ood_names():
    from genpolicy_ros.monitor_eval import scenarios
    return list(scenarios())


@pytest.mark.parametrize('name', _ood_names())
def test_every_ood_scenario_ends_in_slow_or_hold_before_any_violation(stack, scenario, name):
    from genpolicy_ros.monitor_eval import run_one, scenarios
    from genpolicy_ros.sim.task import EVAL_SEED_START
    stack.hook.scenario = scenarios()[name]
    outcomes = [run_one(stack, name, EVAL_SEED_START + i) for i in range(OOD_SEEDS)]
    stack.hook.scenario = None
    exposed = [o for o in outcomes if o.exposed]
    missed = [o.seed for o in exposed if o.detection() is None]
    late = [o.seed for o in exposed if o.first_violation_s is not None
            and (o.detection() is None or o.detection()[0] > o.first_violation_s)]
    latencies = [o.latency_s for o in exposed if o.detection() is not None]
    scenario.record(episodes=len(outcomes), exposed=len(exposed), detected=len(latencies),
                    detection_latency_s=max(latencies) if latencies else None,
                    violations=sum(o.violations for o in outcomes))
    assert exposed, 'no episode lasted until the onset'
    assert not missed, f'no SLOW/HOLD after the onset on seeds {missed}'
    assert not late, f'a violation came before the alarm on seeds {late}'
