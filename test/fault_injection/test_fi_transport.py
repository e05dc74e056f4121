"""Timing and transport faults: silent inputs, drops, delays, duplicates, reordering, QoS, bursts.

A silent input must bring the arm to a hold within 100 ms of that input's timeout with bounded
deceleration and jerk; lossy or slow links must never make the arm unsafe; a QoS mismatch must
be reported on /diagnostics instead of leaving a silently dead link.
"""

import time

import numpy as np
import pytest

from fi_checks import (assert_held, check_safe, fault_keys, hold_metrics, move_nominally,
                       wait_mode, wait_rest)
from fi_graph import chunk_msg, LinkFault, node_parameters, samples_msg, wait_for

pytestmark = pytest.mark.fault_injection


def _full(*args):
    return pytest.param(*args, marks=pytest.mark.fault_full)


def _timeouts(graph) -> dict:
    """Return each stream's first timeout [s] anywhere in the stack (the one that stops it)."""
    monitor = node_parameters('monitor.yaml', 'monitor_node')['watchdogs']
    filt = node_parameters('safety.yaml', 'safety_filter_node')
    return {
        'camera': monitor['camera']['stale_ms'] / 1e3,
        'joint_states': min(filt['node']['joint_state_timeout_s'],
                            monitor['joint_states']['stale_ms'] / 1e3),
        'chunks': filt['tracking']['chunk_timeout_s'],
    }


@pytest.mark.parametrize('stream', ['joint_states', _full('camera'), 'chunks'])
def test_silent_input_holds_within_100ms_of_its_timeout(graph, scenario, stream):
    t_start = move_nominally(graph, 1.5)
    if stream == 'chunks':
        graph.policy.enabled = False
        last = graph.policy.last_stamp
    else:
        relay = graph.relays[stream]
        relay.set_fault(LinkFault(silent=True))
        time.sleep(0.05)
        last = relay.last_forwarded_stamp
    t_timeout = last + _timeouts(graph)[stream]
    assert wait_rest(graph, 8.0), 'the arm did not come to rest'
    time.sleep(0.3)
    metrics = hold_metrics(graph, t_timeout, graph.now())
    check_safe(graph, scenario, t_start, **metrics)
    assert_held(graph, metrics)
    if stream != 'chunks':
        # The monitor latches HOLD for the stale input (chunks: its 1.5 s bound comes later).
        assert wait_mode(graph, 'HOLD', 5.0)
        key = f'fault.{stream}.STALE'
        assert key in fault_keys(graph, t_timeout - 1.0, [key])


@pytest.mark.parametrize('rate', [_full(0.1), _full(0.5)])
def test_dropped_messages_never_make_the_arm_unsafe(graph, scenario, rate):
    t_start = move_nominally(graph, 1.0)
    for name in ('joint_states', 'arm_command', 'camera'):
        graph.relays[name].set_fault(LinkFault(drop=rate))
    time.sleep(4.0)
    graph.clear_faults()
    modes = graph.observer.modes_since(t_start)
    check_safe(graph, scenario, t_start,
               nominal_fraction=modes.count('NOMINAL') / max(len(modes), 1))


@pytest.mark.parametrize('stream', [_full('joint_states'), _full('arm_command')])
def test_delayed_messages_100_to_500ms(graph, scenario, stream):
    t_start = move_nominally(graph, 1.0)
    t_fault = graph.now()
    graph.relays[stream].set_fault(LinkFault(delay_s=(0.1, 0.5)))
    time.sleep(3.0)
    if stream == 'joint_states':
        # Measurements 100-500 ms old are stale by the monitor's bound: it must hold.
        assert wait_rest(graph, 8.0)
        assert graph.observer.mode() == 'HOLD'
        key = 'fault.joint_states.STALE'
        wanted = [key, 'fault.joint_states.TIME_BACKWARDS']
        assert fault_keys(graph, t_fault, wanted) & set(wanted)
    graph.clear_faults()
    time.sleep(0.6)   # let the delayed queue drain into the check window
    check_safe(graph, scenario, t_start)


@pytest.mark.fault_full
def test_duplicated_messages_are_harmless(graph, scenario):
    t_start = move_nominally(graph, 1.0)
    t_fault = graph.now()
    for name in ('joint_states', 'arm_command', 'camera'):
        graph.relays[name].set_fault(LinkFault(duplicate=True))
    time.sleep(3.0)
    graph.clear_faults()
    check_safe(graph, scenario, t_start)
    bad = {k for k in fault_keys(graph, t_fault)
           if k.endswith(('TIME_BACKWARDS', 'TIME_JUMP', 'MALFORMED', 'NON_FINITE'))}
    assert not bad, f'duplicates reported as faults: {bad}'


@pytest.mark.fault_full
def test_reordered_joint_states_hold_and_reordered_chunks_never_win(graph, scenario):
    t_start = move_nominally(graph, 1.0)
    t_fault = graph.now()
    # Chunks: every other one arrives after its successor; an older plan must never replace
    # a newer one (the filter refuses it and says so).
    held = {'msgs': None}
    rng = np.random.default_rng(4)

    def swap(stamp, positions):
        msgs = (chunk_msg(stamp, positions), samples_msg(stamp, positions, rng))
        if held['msgs'] is None:
            held['msgs'] = msgs
            return None, None
        older, held['msgs'] = held['msgs'], None
        graph.policy.pub_chunk.publish(msgs[0])
        graph.policy.pub_samples.publish(msgs[1])
        return older
    graph.policy.make_messages = swap
    time.sleep(2.0)
    status = graph.observer.diagnostic('safety_filter_node: status', since=t_fault + 1.0)
    values = {kv.key: kv.value for kv in status.values}
    assert int(values['rejected_chunks']) > 0, values
    graph.clear_faults()
    # Joint states: swapped pairs go back in time, a hard fault for the monitor.
    graph.relays['joint_states'].set_fault(LinkFault(reorder=True))
    assert wait_rest(graph, 8.0)
    assert wait_mode(graph, 'HOLD', 5.0)
    key = 'fault.joint_states.TIME_BACKWARDS'
    assert key in fault_keys(graph, t_fault, [key])
    check_safe(graph, scenario, t_start)


def test_qos_mismatch_is_reported_not_silently_dead(graph, scenario):
    # The driver's joint states turn best effort: reliable subscribers (filter, monitor,
    # policy) can no longer match them.
    t_start = move_nominally(graph, 1.0)
    t_fault = graph.now()
    graph.relays['joint_states'].set_fault(LinkFault(best_effort=True))
    assert wait_rest(graph, 8.0)
    assert wait_mode(graph, 'HOLD', 5.0)
    for node in ('safety_filter_node', 'monitor_node', 'policy_node'):
        name = f'{node}: transport'

        def reported(name=name) -> bool:
            st = graph.observer.diagnostic(name, since=t_fault)
            return st is not None and any(kv.key == 'incompatible_qos./joint_states'
                                          for kv in st.values)
        assert wait_for(reported, 5.0), f'{node} did not report the QoS mismatch'
        assert graph.observer.diagnostic(name).level == b'\x02'   # ERROR
    check_safe(graph, scenario, t_start)


@pytest.mark.fault_full
def test_ten_times_burst_of_chunks(graph, scenario):
    t_start = move_nominally(graph, 1.0)
    graph.policy.burst = 10
    time.sleep(3.0)
    graph.policy.burst = 1
    report = check_safe(graph, scenario, t_start)
    assert report.samples > 0
    assert all(p.alive for p in graph.procs.values())
