"""PeriodicThread: period, no burst after an overrun, errors survive, priority fallback."""

import os
import threading
import time

import numpy as np
import pytest

from genpolicy_ros.nodes.realtime import PeriodicThread


def test_steps_at_its_period_and_stops():
    times = []
    loop = PeriodicThread('test_loop', 0.01, lambda: times.append(time.monotonic()), 0,
                          lambda exc: None).start()
    time.sleep(0.3)
    loop.stop()
    count = len(times)
    time.sleep(0.05)
    assert len(times) == count           # stopped
    periods = np.diff(times)
    # ~30 steps in 0.3 s: deadlines are absolute, so the mean period is the period.
    assert 20 <= count <= 32 and np.mean(periods) == pytest.approx(0.01, rel=0.2)
    assert not loop.realtime and loop.realtime_error is None


def test_an_overrun_is_not_made_up_for_with_a_burst():
    times = []

    def step():
        times.append(time.monotonic())
        if len(times) == 3:
            time.sleep(0.1)              # ten periods

    loop = PeriodicThread('test_loop', 0.01, step, 0, lambda exc: None).start()
    time.sleep(0.25)
    loop.stop()
    after = np.diff(times[3:])
    assert len(after) > 3 and after.min() > 0.005   # no back-to-back catch-up steps


def test_an_exception_goes_to_on_error_and_the_loop_goes_on():
    errors, calls = [], []

    def step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError('bad step')

    loop = PeriodicThread('test_loop', 0.01, step, 0, errors.append).start()
    time.sleep(0.1)
    loop.stop()
    assert len(errors) == 1 and 'bad step' in str(errors[0]) and len(calls) > 3


def test_realtime_priority_is_granted_or_refused_with_a_reason():
    seen = {}

    def step():
        seen['policy'] = os.sched_getscheduler(0)

    loop = PeriodicThread('test_loop', 0.01, step, 5, lambda exc: None).start()
    time.sleep(0.05)
    loop.stop()
    if loop.realtime:           # root or CAP_SYS_NICE (this container: yes)
        assert seen['policy'] == os.SCHED_FIFO and loop.realtime_error is None
    else:
        assert seen['policy'] == os.SCHED_OTHER and 'SCHED_FIFO 5 refused' in loop.realtime_error
    # Only the loop's own thread changed its scheduling.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert threading.current_thread() is threading.main_thread()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='period'):
        PeriodicThread('x', 0.0, lambda: None, 0, lambda exc: None)
    with pytest.raises(ValueError, match='priority'):
        PeriodicThread('x', 0.01, lambda: None, 100, lambda exc: None)
