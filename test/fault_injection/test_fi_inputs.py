"""Bad input on every topic of the loop: the node at the edge refuses it and the arm stays safe.

NaN/Inf, denormals, huge values, wrong sizes and joint names, malformed chunks, stamps from the
future and the past or going backwards, a clock jump. Each test drives the arm with the nominal
push motion, attacks one input, and judges the arm's observed behaviour: never above the speed
cap, never through a barrier, at rest when the attacked input is one it cannot do without, and
the monitor in HOLD (with the right fault on /diagnostics) when it is one the monitor watches.
"""

import copy
import threading
import time
from typing import Callable, Optional

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState

from fi_checks import (check_safe, fault_keys, hold_metrics, move_nominally,
                       move_with_policy_node, stays, wait_for_motion, wait_mode, wait_rest)
from fi_graph import chunk_msg, LinkFault, samples_msg, SAFE_COMMAND, time_to_rest

pytestmark = pytest.mark.fault_injection

BURST_S = 1.0
DENORMAL = 1e-310           # subnormal double: well below the smallest normal 2.2e-308
HUGE = 1e12


def _full(*args):
    return pytest.param(*args, marks=pytest.mark.fault_full)


# ----------------------------------------------------------------------------- corruptions
def corrupt_joint_state(kind: str) -> Callable[[JointState], JointState]:
    """Return a mutation of a JointState: ``nan`` (NaN/Inf), ``huge`` or ``denormal`` values."""
    def mutate(msg: JointState) -> JointState:
        pos, vel = list(msg.position), list(msg.velocity)
        if kind == 'nan':
            pos[1], vel[3] = float('nan'), float('inf')
        elif kind == 'huge':
            pos = [p + HUGE for p in pos]
        elif kind == 'denormal':
            # Values that are ~0 become subnormal: the arithmetic on them must stay exact.
            pos = [DENORMAL if abs(p) < 1e-3 else p for p in pos]
            vel = [DENORMAL if abs(v) < 1e-3 else v for v in vel]
        msg.position, msg.velocity = pos, vel
        return msg
    return mutate


def corrupt_positions(positions: np.ndarray, kind: str) -> np.ndarray:
    """Return chunk positions (K, 3) with ``nan``, ``huge`` or ``denormal`` values."""
    out = np.array(positions, dtype=float)
    if kind == 'nan':
        out[2, 0], out[3, 1] = np.nan, np.inf
    elif kind == 'huge':
        out += HUGE
    elif kind == 'denormal':
        out[:, 1] = np.where(np.abs(out[:, 1]) < 1e-2, DENORMAL, out[:, 1])
    return out


def corrupt_image(kind: str) -> Callable[[Image], Image]:
    """Return a mutation of an Image: ``nan`` (float image of NaNs), ``huge`` (absurd size)."""
    def mutate(msg: Image) -> Image:
        if kind == 'nan':
            msg.encoding = '32FC1'
            msg.step = 4 * msg.width
            msg.data = np.full(msg.height * msg.width, np.nan, np.float32).tobytes()
        elif kind == 'huge':
            msg.height = msg.width = 2 ** 31
        return msg
    return mutate


class Repeater:
    """Publish ``make()`` at ``rate_hz`` from a thread while in a ``with`` block (an attacker)."""

    def __init__(self, publisher, make: Callable[[], Optional[object]], rate_hz: float) -> None:
        self.publisher, self.make, self.period = publisher, make, 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> 'Repeater':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            msg = self.make()
            if msg is not None:
                self.publisher.publish(msg)


def _attack(graph, topic: str, kind: str, seconds: float) -> None:
    """Corrupt ``topic`` with ``kind`` values for ``seconds``."""
    if topic == 'joint_states':
        graph.relays['joint_states'].set_fault(LinkFault(mutate=corrupt_joint_state(kind)))
    elif topic == 'arm_command':
        graph.relays['arm_command'].set_fault(LinkFault(mutate=corrupt_joint_state(kind)))
    elif topic == 'camera':
        graph.relays['camera'].set_fault(LinkFault(mutate=corrupt_image(kind)))
    elif topic in ('action_chunk', 'chunk_samples'):
        rng = np.random.default_rng(1)

        def make(stamp, positions):
            bad = corrupt_positions(positions, kind)
            if topic == 'action_chunk':
                return chunk_msg(stamp, bad), samples_msg(stamp, positions, rng)
            return chunk_msg(stamp, positions), samples_msg(stamp, bad, rng)
        graph.policy.make_messages = make
    elif topic == 'safe_command':
        mutate = corrupt_joint_state(kind)

        def make():
            last = graph.observer.last_safe_command
            return None if last is None else mutate(copy.deepcopy(last))
        with Repeater(graph.publisher(JointState, SAFE_COMMAND), make, 100.0):
            time.sleep(seconds)
        return
    else:
        raise ValueError(topic)
    time.sleep(seconds)
    graph.clear_faults()


# What each attack must lead to: 'hold' (monitor HOLD, arm at rest, the fault on
# /diagnostics), 'rest' (the arm comes to rest: the consumer refuses the input and has no other),
# 'driver' (the driver refuses the commands and holds by itself while they last) or 'safe'
# (harmless or followed within the limits: only the safety properties).
EXPECT = {
    ('joint_states', 'nan'): ('hold', 'fault.joint_states.MALFORMED'),
    ('joint_states', 'huge'): ('hold', 'fault.joint_states.MALFORMED'),
    ('joint_states', 'denormal'): ('safe', None),
    ('camera', 'nan'): ('rest', None),
    ('camera', 'huge'): ('rest', None),
    ('action_chunk', 'nan'): ('rest', None),
    ('action_chunk', 'huge'): ('rest', None),
    ('action_chunk', 'denormal'): ('safe', None),
    ('chunk_samples', 'nan'): ('hold', 'fault.chunks.NON_FINITE'),
    ('chunk_samples', 'huge'): ('hold', None),
    ('chunk_samples', 'denormal'): ('safe', None),
    ('safe_command', 'nan'): ('hold', 'fault.safe_command.NON_FINITE'),
    ('safe_command', 'huge'): ('hold', 'fault.safe_command.COMMAND_JUMP'),
    ('safe_command', 'denormal'): ('safe', None),
    ('arm_command', 'nan'): ('driver', None),
    ('arm_command', 'huge'): ('driver', None),
    ('arm_command', 'denormal'): ('safe', None),
}
FAST = {('joint_states', 'nan'), ('arm_command', 'huge'), ('chunk_samples', 'nan')}


@pytest.mark.parametrize('topic,kind', [
    (t, k) if (t, k) in FAST else _full(t, k) for t, k in EXPECT])
def test_bad_values_on_every_input(graph, scenario, topic, kind):
    expect, key = EXPECT[(topic, kind)]
    if topic == 'camera':
        t_start = move_with_policy_node(graph)   # the camera's consumer: the real policy
    else:
        t_start = move_nominally(graph, 1.5)
    t_fault = graph.now()
    _attack(graph, topic, kind, BURST_S)
    t_end_burst = graph.now()
    if expect == 'driver':
        # Every command refused for BURST_S: the driver's own timeout must have held the arm.
        t, _, dq = graph.observer.arm_window(t_fault, t_end_burst)
        timeout = graph.sim_command_timeout_s
        tth = time_to_rest(t, dq, t_fault + timeout, settle_s=0.1)
        metrics = hold_metrics(graph, t_fault + timeout, t_end_burst)
        check_safe(graph, scenario, t_start, **metrics)
        assert tth is not None, 'the driver did not hold while every command was refused'
    elif expect in ('hold', 'rest'):
        assert wait_rest(graph, 8.0), 'the arm did not come to rest'
        if expect == 'hold':
            assert wait_mode(graph, 'HOLD', 5.0), graph.observer.mode()
            if key is not None:
                assert key in fault_keys(graph, t_fault, [key]), fault_keys(graph, t_fault)
        check_safe(graph, scenario, t_start)
    else:
        time.sleep(1.0)
        check_safe(graph, scenario, t_start)
        if kind == 'denormal':
            # Harmless values must not be reported as bad ones.
            bad = {k for k in fault_keys(graph, t_fault)
                   if k.endswith(('.NON_FINITE', '.MALFORMED', '.COMMAND_JUMP'))}
            assert not bad, bad


@pytest.mark.parametrize('case', ['short_arrays', _full('wrong_names')])
@pytest.mark.parametrize('topic', ['joint_states', _full('arm_command'), _full('safe_command')])
def test_wrong_array_lengths_and_joint_names(graph, scenario, topic, case):
    def mutate(msg: JointState) -> JointState:
        if case == 'short_arrays':
            msg.position = list(msg.position)[:5]
        else:
            msg.name = [n.replace('panda_', 'fr3_') for n in msg.name]
        return msg
    t_start = move_nominally(graph, 1.5)
    t_fault = graph.now()
    if topic == 'safe_command':
        def make():
            last = graph.observer.last_safe_command
            return None if last is None else mutate(copy.deepcopy(last))
        with Repeater(graph.publisher(JointState, SAFE_COMMAND), make, 100.0):
            time.sleep(BURST_S)
    else:
        graph.relays[topic].set_fault(LinkFault(mutate=mutate))
        time.sleep(BURST_S)
    t_end_burst = graph.now()
    graph.clear_faults()
    if topic == 'arm_command':
        t, _, dq = graph.observer.arm_window(t_fault, t_end_burst)
        tth = time_to_rest(t, dq, t_fault + graph.sim_command_timeout_s, settle_s=0.1)
        check_safe(graph, scenario, t_start, time_to_hold_s=tth)
        assert tth is not None, 'the driver did not hold while every command was refused'
        return
    assert wait_rest(graph, 8.0)
    assert wait_mode(graph, 'HOLD', 5.0)
    wanted = [f'fault.{topic}.MALFORMED', f'fault.{topic}.NON_FINITE']
    kinds = {k.split('.', 2)[2] for k in fault_keys(graph, t_fault, wanted)
             if k.startswith(f'fault.{topic}.')}
    assert kinds & {'MALFORMED', 'NON_FINITE'}, fault_keys(graph, t_fault)
    check_safe(graph, scenario, t_start)


def _chunk_case(case: str):
    """Return a ``make_messages`` for the scripted policy producing a malformed chunk."""
    rng = np.random.default_rng(2)

    def make(stamp, positions):
        samples = samples_msg(stamp, positions, rng)
        msg = chunk_msg(stamp, positions)
        if case == 'unnormalised_quaternion':
            for pt in msg.points:
                pt.transforms[0].rotation.w = 0.5
        elif case == 'zero_quaternion':
            for pt in msg.points:
                r = pt.transforms[0].rotation
                r.x = r.y = r.z = r.w = 0.0
        elif case == 'wrong_frame':
            msg.header.frame_id = 'camera_color_optical_frame'
        elif case == 'empty':
            msg.points = []
        elif case == 'times_not_increasing':
            msg.points[3].time_from_start = msg.points[2].time_from_start
        elif case == 'two_ee_joints':
            msg.joint_names = ['ee', 'ee2']
        return msg, samples
    return make


@pytest.mark.parametrize('case', ['unnormalised_quaternion', _full('zero_quaternion'),
                                  _full('wrong_frame'), _full('empty'),
                                  _full('times_not_increasing'),
                                  _full('two_ee_joints')])
def test_malformed_chunks_are_refused_and_the_arm_holds(graph, scenario, case):
    t_start = move_nominally(graph, 1.5)
    graph.policy.make_messages = _chunk_case(case)
    t_fault = graph.policy.last_stamp
    # No acceptable chunk from now on: the last good one times out and the filter stops.
    timeout = graph.safety.tracking.chunk_timeout_s
    time.sleep(timeout + 1.5)
    metrics = hold_metrics(graph, t_fault + timeout, graph.now())
    check_safe(graph, scenario, t_start, **metrics)
    assert graph.at_rest(0.5), 'the filter kept moving the arm on malformed chunks'
    assert 'STALE_REFERENCE' in graph.observer.statuses_since(t_fault + timeout)
    status = graph.observer.diagnostic('safety_filter_node: status', since=t_fault)
    values = {kv.key: kv.value for kv in status.values}
    assert int(values['rejected_chunks']) > 0


# ----------------------------------------------------------------------------- timestamps
def _stamped(offset: Callable[[float], float]):
    """Return a ``make_messages`` stamping chunk and samples ``stamp + offset(stamp)``."""
    rng = np.random.default_rng(3)

    def make(stamp, positions):
        s = stamp + offset(stamp)
        return chunk_msg(s, positions), samples_msg(s, positions, rng)
    return make


def _backwards():
    state = {'stamp': None}

    def offset(stamp: float) -> float:
        # Each chunk 0.3 s older than the one before: time runs backwards at 4x the clock.
        state['stamp'] = stamp if state['stamp'] is None else state['stamp'] - 0.3
        return state['stamp'] - stamp
    return offset


@pytest.mark.parametrize('case', ['future', _full('past'), _full('backwards')])
def test_chunk_stamps_from_the_future_the_past_or_going_backwards(graph, scenario, case):
    offsets = {'future': lambda s: 10.0, 'past': lambda s: -10.0}
    t_start = move_nominally(graph, 1.5)
    t_fault = graph.policy.last_stamp
    # A chunk toward a point 10 cm away: followed, it would move the arm.
    graph.policy.reference = lambda t, p=graph.ee() + np.array([0.1, 0.1, 0.0]): p
    graph.policy.make_messages = _stamped(offsets.get(case) or _backwards())
    timeout = graph.safety.tracking.chunk_timeout_s
    time.sleep(timeout + 1.5)
    metrics = hold_metrics(graph, t_fault + timeout, graph.now())
    check_safe(graph, scenario, t_start, **metrics)
    assert graph.at_rest(0.5), 'the filter followed mis-stamped chunks'
    # The monitor sees the same stamps on the samples: a clock fault, HOLD.
    assert wait_mode(graph, 'HOLD', 5.0)
    wanted = {'fault.chunks.TIME_JUMP', 'fault.chunks.TIME_BACKWARDS', 'fault.chunks.STALE'}
    assert fault_keys(graph, t_fault, wanted) & wanted, fault_keys(graph, t_fault)


@pytest.mark.parametrize('case', [_full('future'), _full('past'), _full('backwards')])
def test_joint_state_stamps_from_the_future_the_past_or_going_backwards(graph, scenario, case):
    t_start = move_nominally(graph, 1.5)
    t_fault = graph.now()
    relay = graph.relays['joint_states']
    if case == 'backwards':
        relay.set_fault(LinkFault(reorder=True))
    else:
        relay.set_fault(LinkFault(stamp_offset_s=2.0 if case == 'future' else -2.0))
    assert wait_rest(graph, 8.0), 'the arm kept moving on mis-stamped joint states'
    assert wait_mode(graph, 'HOLD', 5.0)
    expected = {'future': 'fault.joint_states.TIME_JUMP', 'past': 'fault.joint_states.STALE',
                'backwards': 'fault.joint_states.TIME_BACKWARDS'}[case]
    assert expected in fault_keys(graph, t_fault, [expected]), fault_keys(graph, t_fault)
    check_safe(graph, scenario, t_start)


@pytest.mark.fault_full
def test_clock_jump_holds_until_the_clock_is_consistent_and_an_operator_resets(graph, scenario):
    # The driver's clock steps 5 s ahead (NTP step on the robot PC): every stamp it makes jumps.
    t_start = move_nominally(graph, 1.5)
    t_fault = graph.now()
    jump = LinkFault(stamp_offset_s=5.0)
    graph.relays['joint_states'].set_fault(jump)
    graph.relays['camera'].set_fault(jump)
    assert wait_rest(graph, 8.0)
    assert wait_mode(graph, 'HOLD', 5.0)
    key = 'fault.joint_states.TIME_JUMP'
    assert key in fault_keys(graph, t_fault, [key]), fault_keys(graph, t_fault)
    ok, message = graph.reset_monitor()
    assert not ok, f'reset accepted while the clock is 5 s ahead: {message}'
    held, why = stays(graph, lambda: graph.not_moving(0.2), 1.0)
    assert held, why
    # The clock steps back: one backwards stamp, then consistent again; reset is accepted.
    graph.clear_faults()
    t_back = graph.now()
    time.sleep(1.0)
    still, why = stays(graph, lambda: graph.observer.mode() == 'HOLD', 0.5)
    assert still, 'HOLD must stay latched until an explicit reset'
    graph.release(30.0)
    moved = wait_for_motion(graph, t_back)
    check_safe(graph, scenario, t_start)
    assert moved, 'the arm did not resume after the reset'
