"""The sim node through real rclpy: joint states, camera, commands, refusals, stale hold.

Bad commands are refused without a crash and a silent commander gets a decelerating hold.
Frames are rendered in a separate process, so joint states keep flowing while frames render
and when that process dies.
"""

import os
import signal
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState

from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes.sim_node import SimNode
from ros_harness import ros_graph, wait_for

ARM = [f'panda_joint{i}' for i in range(1, 8)]


def _q(probe) -> np.ndarray:
    q, _ = cv.joint_arrays(probe.last('/joint_states'), ARM)
    return q


def _dq(probe) -> np.ndarray:
    _, dq = cv.joint_arrays(probe.last('/joint_states'), ARM, need_velocity=True)
    return dq


@pytest.fixture(scope='module')
def graph():
    with ros_graph(lambda ctx: SimNode(context=ctx)) as (context, probe, nodes):
        probe.watch(JointState, '/joint_states', 50)
        probe.watch(Image, '/camera/color/image_raw', qos_profile_sensor_data)
        probe.watch(CameraInfo, '/camera/color/camera_info', qos_profile_sensor_data)
        probe.watch(DiagnosticArray, '/diagnostics', 50)
        pub = probe.create_publisher(JointState, '/genpolicy/arm_command', 10)
        assert wait_for(lambda: probe.count('/joint_states') > 10, 10.0)
        # The render process is up once a frame arrives: its start-up burns CPU for a moment.
        assert wait_for(lambda: probe.count('/camera/color/image_raw') > 0, 30.0)
        yield probe, pub, nodes[0]


def test_joint_states_and_camera_flow(graph):
    probe, _, sim = graph
    probe.clear('/joint_states')
    # Flow, waited for against a deadline a loaded machine meets; the rate is a benchmark's job.
    assert wait_for(lambda: probe.count('/joint_states') >= 10, 10.0), \
        f"only {probe.count('/joint_states')} joint states in 10 s"
    msg = probe.last('/joint_states')
    assert msg.name[:7] == ARM and len(msg.position) == 9 and len(msg.velocity) == 9
    assert wait_for(lambda: probe.count('/camera/color/image_raw') >= 3, 20.0)
    img = cv.image_to_numpy(probe.last('/camera/color/image_raw'))
    info = probe.last('/camera/color/camera_info')
    assert img.shape == (info.height, info.width, 3)
    assert info.k[0] > 0 and info.k[8] == 1.0
    assert img.std() > 5.0, 'camera image is blank'


def test_joint_states_keep_flowing_while_frames_render(graph, record_property):
    probe, _, sim = graph
    assert sim.camera.alive and sim.camera.pid != os.getpid()
    frames = sim.stats['frames']
    probe.clear('/joint_states')
    time.sleep(2.0)
    arrivals = np.array(probe.arrival['/joint_states'])
    rendered = sim.stats['frames'] - frames
    gaps_ms = np.diff(arrivals) * 1e3
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    p99 = float(np.percentile(gaps_ms, 99))
    report = (f'/joint_states {rate:.0f} Hz (nominal {sim.config.joint_state_rate_hz:.0f}), '
              f'gaps p50 '
              f'{np.percentile(gaps_ms, 50):.1f} p99 {p99:.1f} max {gaps_ms.max():.1f} ms, '
              f'{rendered / 2.0:.1f} frames/s')
    record_property('joint_state_timing', report)
    print(report)
    # Behaviour, not speed (rates belong to benchmarks; a loaded CI machine varies 4x): frames
    # keep coming and joint states never stop for anything like a stale-input bound while
    # frames render. Measured here: p99 15-30 ms out of process vs 30-80 ms in process.
    assert rendered >= 2, f'only {rendered} frames in 2 s'
    assert gaps_ms.max() < 1000.0, report  # a saturated 2-core machine showed 630 ms


def test_command_moves_the_arm_and_stale_command_decelerates_to_hold(graph):
    probe, pub, sim = graph
    q0 = _q(probe)
    v = np.zeros(7)
    v[0] = 0.3  # rad/s on joint 1
    t_end = time.monotonic() + 5.0
    q_cmd = q0.copy()
    # A commander at ~100 Hz integrating its own target, until the arm has clearly followed
    # (how long that takes depends on machine load, not on the node's behaviour).
    while time.monotonic() < t_end and _q(probe)[0] - q0[0] < 0.08:
        q_cmd = q_cmd + 0.01 * v
        pub.publish(cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q_cmd, v))
        time.sleep(0.01)
    moved = _q(probe)[0] - q0[0]
    assert moved >= 0.08, f'joint 1 moved only {moved:.3f} rad'
    # Commander goes silent: the driver must bring the arm to rest, not keep going.
    assert wait_for(lambda: np.max(np.abs(_dq(probe))) < 0.02, 5.0), _dq(probe)
    q_rest = _q(probe)
    time.sleep(0.3)
    assert np.max(np.abs(_q(probe) - q_rest)) < 1e-3, 'arm drifts while holding'
    assert sim.stats['stale_holds'] >= 1


def test_a_command_resent_unchanged_is_not_followed_past_its_position(graph):
    # The monitor re-sends the newest safe command every tick until it is stale. A copy is not
    # a successor: the driver follows a command's velocity for its coasting time, then stops
    # at its position, however often it is re-sent (else the arm runs on past where the filter
    # checked it).
    probe, pub, sim = graph
    q0 = _q(probe)
    v = np.zeros(7)
    v[0] = 0.3  # rad/s on joint 1
    msg = cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q0 + 0.01 * v, v)
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        pub.publish(msg)
        time.sleep(0.01)
    # Followed at 0.3 rad/s for the whole second it would have moved 0.3 rad; one command
    # covers 3 mm (one period), plus its coasting period and the servo's deceleration.
    moved = _q(probe)[0] - q0[0]
    assert moved < 0.02, f'joint 1 ran on {moved:.3f} rad on a re-sent command'
    assert wait_for(lambda: np.max(np.abs(_dq(probe))) < 0.02, 5.0), _dq(probe)


@pytest.mark.parametrize('case', ['nan', 'inf', 'short', 'wrong_names', 'vel_length'])
def test_bad_commands_are_refused_and_node_keeps_running(graph, case):
    probe, pub, sim = graph
    q0 = _q(probe)
    before = sim.stats['rejected']
    msg = cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q0 + 0.3, np.zeros(7))
    if case == 'nan':
        msg.position[2] = float('nan')
    elif case == 'inf':
        msg.velocity[0] = float('inf')
    elif case == 'short':
        msg.position = msg.position[:5]
    elif case == 'wrong_names':
        msg.name = [f'fr3_jointX{i}' for i in range(7)]
    elif case == 'vel_length':
        msg.velocity = [0.0, 0.0]
    for _ in range(5):
        pub.publish(msg)
        time.sleep(0.02)
    # Deadlines a loaded machine meets (the node's executor thread waits for a core).
    assert wait_for(lambda: sim.stats['rejected'] >= before + 5, 10.0)
    probe.clear('/joint_states')
    assert wait_for(lambda: probe.count('/joint_states') > 20, 10.0), 'node stopped publishing'
    assert np.max(np.abs(_q(probe) - q0)) < 0.01, 'a refused command moved the arm'
    probe.clear('/diagnostics')

    def reported():
        for arr in probe.messages.get('/diagnostics', []):
            for st in arr.status:
                if st.name == 'sim_node: driver' and 'refused' in st.message:
                    return True
        return False
    assert wait_for(reported, 10.0), 'refusal not reported on /diagnostics'


def test_dead_render_process_is_reported_and_restarted_while_joints_flow(graph):
    probe, _, sim = graph
    pid = sim.camera.pid
    failures = sim.stats['render_failures']
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: sim.stats['render_failures'] > failures, 10.0)
    probe.clear('/joint_states')
    probe.clear('/diagnostics')
    # Flowing, not a rate: the restarting render process takes CPU from the node meanwhile,
    # and a loaded CI machine gave 17 messages in 0.5 s, so wait for them instead of timing.
    assert wait_for(lambda: probe.count('/joint_states') > 20, 10.0), \
        'joint states stopped with the renderer'

    def reported():
        for arr in probe.messages.get('/diagnostics', []):
            for st in arr.status:
                values = {kv.key: kv.value for kv in st.values}
                if st.name == 'sim_node: driver' and int(values['render_failures']) > failures:
                    return True
        return False
    assert wait_for(reported, 10.0), 'render failure not reported on /diagnostics'
    # A later frame restarts the process and images flow again.
    probe.clear('/camera/color/image_raw')
    assert wait_for(lambda: probe.count('/camera/color/image_raw') >= 3, 20.0)
    assert sim.camera.alive and sim.camera.pid != pid
    assert cv.image_to_numpy(probe.last('/camera/color/image_raw')).std() > 5.0
