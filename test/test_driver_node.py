"""driver_node with ``backend: franka`` through real rclpy, against the franka-sim FCI server.

The same topics and services a real FR3 bring-up uses: /joint_states (arm + fingers),
~/ee_pose, ~/robot_mode, /diagnostics, /genpolicy/arm_command, ~/hold, ~/recover, the gripper.
The reflex path reconfigures the node through its lifecycle services with smoothing switched
off (a test-only setting), so a commanded step reaches the robot as a discontinuity.
"""

import os
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes.driver_node import FrankaDriverNode, make_driver_node
from genpolicy_ros.nodes.params import load_node_params
from genpolicy_ros.nodes.sim_node import SimNode
from ros_harness import ros_graph, wait_for

ARM = [f'panda_joint{i}' for i in range(1, 8)]
FINGERS = ['panda_finger_joint1', 'panda_finger_joint2']
NAME = 'driver_node'
OVERRIDES = [Parameter('backend', value='franka'),
             Parameter('franka.robot_ip', value='127.0.0.1'),
             Parameter('franka.realtime_config', value='ignore'),
             Parameter('franka.connection.reconnect_period_s', value=0.5)]
RAW = {'franka.motion.interpolate': False, 'franka.motion.limit_rate': False,
       'franka.motion.lowpass_cutoff_hz': 1000.0}
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _q(probe) -> np.ndarray:
    return cv.joint_arrays(probe.last('/joint_states'), ARM)[0]


def _call(probe, srv_type, name, request, timeout_s=20.0):
    client = probe.client(srv_type, name)
    assert client.wait_for_service(timeout_sec=10.0), f'{name} not available'
    future = client.call_async(request)
    assert wait_for(future.done, timeout_s), f'{name} did not answer'
    return future.result()


def _driver_diag(probe):
    for arr in reversed(probe.messages.get('/diagnostics', [])):
        for st in arr.status:
            if st.name == f'{NAME}: driver':
                return st
    return None


def _set_params(probe, values):
    req = SetParameters.Request()
    req.parameters = [ParameterMsg(name=k, value=Parameter(k, value=v).to_parameter_msg().value)
                      for k, v in values.items()]
    res = _call(probe, SetParameters, f'/{NAME}/set_parameters', req)
    assert all(r.successful for r in res.results), res


def _transition(probe, transition_id):
    res = _call(probe, ChangeState, f'/{NAME}/change_state',
                ChangeState.Request(transition=Transition(id=transition_id)))
    assert res.success, f'lifecycle transition {transition_id} failed'


@pytest.fixture(scope='module')
def graph(franka_sim):
    with ros_graph(lambda ctx: FrankaDriverNode(context=ctx, parameter_overrides=OVERRIDES)) \
            as (context, probe, nodes):
        probe.watch(JointState, '/joint_states', 100)
        probe.watch(PoseStamped, f'/{NAME}/ee_pose', 100)
        probe.watch(String, f'/{NAME}/robot_mode', LATCHED)
        probe.watch(DiagnosticArray, '/diagnostics', 50)
        pub = probe.create_publisher(JointState, '/genpolicy/arm_command', 10)
        assert wait_for(lambda: probe.count('/joint_states') > 20, 30.0), \
            nodes[0].driver_status()
        yield probe, pub, nodes[0]


def _wait_active(probe, node, timeout_s=20.0):
    assert wait_for(lambda: node.driver_status()['status'] == 'ACTIVE', timeout_s), \
        node.driver_status()


def test_publishes_joint_states_pose_mode_and_diagnostics(graph):
    probe, _, node = graph
    _wait_active(probe, node)
    probe.clear('/joint_states')
    time.sleep(1.0)
    assert probe.count('/joint_states') >= 10  # flow; the rate is the benchmark's business
    msg = probe.last('/joint_states')
    assert wait_for(lambda: list(probe.last('/joint_states').name) == ARM + FINGERS, 5.0), msg.name
    assert len(msg.position) == len(msg.velocity) == len(msg.name)
    assert wait_for(lambda: probe.count(f'/{NAME}/ee_pose') > 0, 5.0)
    pose = probe.last(f'/{NAME}/ee_pose')
    assert pose.header.frame_id == 'panda_link0'
    quat = pose.pose.orientation
    assert abs(np.linalg.norm([quat.x, quat.y, quat.z, quat.w]) - 1.0) < 1e-6
    assert wait_for(lambda: probe.last(f'/{NAME}/robot_mode') is not None
                    and probe.last(f'/{NAME}/robot_mode').data == 'Move', 5.0)
    assert wait_for(lambda: _driver_diag(probe) is not None, 5.0)
    values = {kv.key: kv.value for kv in _driver_diag(probe).values}
    assert values['status'] == 'ACTIVE' and values['robot_mode'] == 'Move'


def test_follows_commands_and_holds_when_they_stop(graph):
    probe, pub, node = graph
    _wait_active(probe, node)
    q0 = _q(probe)
    v = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3])
    q = q0.copy()
    end = time.monotonic() + 5.0
    # A commander at ~100 Hz (each command: position due one period ahead, velocity) until
    # the arm has clearly followed; how long that takes depends on machine load.
    while time.monotonic() < end and _q(probe)[6] - q0[6] < 0.1:
        q = q + 0.01 * v
        pub.publish(cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q + 0.01 * v, v))
        time.sleep(0.01)
    assert _q(probe)[6] - q0[6] >= 0.1, \
        f'the arm did not follow /genpolicy/arm_command: {node.driver_status()}'
    assert node.stats['commands'] > 5, node.stats

    def speed():
        return np.max(np.abs(cv.joint_arrays(probe.last('/joint_states'), ARM,
                                             need_velocity=True)[1]))

    def settled():
        # At rest = slow over a whole 0.1 s window: one slow sample can be the turning point
        # of the position-controlled arm's overshoot as it catches up with the stopped
        # set-point (1.6 mrad back on joint 7 was seen from such an instant).
        q1 = _q(probe)
        time.sleep(0.1)
        return speed() < 1e-3 and np.max(np.abs(_q(probe) - q1)) < 1e-4

    # Silence: decelerate and hold, and say so on /diagnostics.
    assert wait_for(lambda: speed() < 1e-3 and settled(), 3.0), \
        f'still moving at {speed()} rad/s'
    rest = _q(probe)
    time.sleep(0.3)
    assert np.max(np.abs(_q(probe) - rest)) < 1e-3, 'the arm drifts while holding'
    probe.clear('/diagnostics')
    assert wait_for(lambda: _driver_diag(probe) is not None
                    and 'holding' in _driver_diag(probe).message, 3.0), node.driver_status()


@pytest.mark.parametrize('case', ['nan', 'wrong_names', 'limit', 'jump'])
def test_bad_commands_are_refused_and_reported(graph, case):
    probe, pub, node = graph
    _wait_active(probe, node)
    q0 = _q(probe)
    before = node.stats['refused']
    q = q0.copy()
    msg = cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q, np.zeros(7))
    if case == 'nan':
        msg.position[2] = float('nan')
    elif case == 'wrong_names':
        msg.name = [f'fr3_jointX{i}' for i in range(7)]
    elif case == 'limit':
        msg.position[3] = 0.5  # joint 4 must stay negative
    else:
        msg.position[0] += 0.5
    for _ in range(3):
        pub.publish(msg)
        time.sleep(0.02)
    assert wait_for(lambda: node.stats['refused'] >= before + 3, 3.0)
    assert np.max(np.abs(_q(probe) - q0)) < 1e-3, 'a refused command moved the arm'
    probe.clear('/diagnostics')
    assert wait_for(lambda: _driver_diag(probe) is not None
                    and 'refused' in _driver_diag(probe).message, 3.0)


def test_hold_service_latches_until_recover(graph):
    probe, pub, node = graph
    _wait_active(probe, node)
    res = _call(probe, Trigger, f'/{NAME}/hold', Trigger.Request())
    assert res.success and '~/recover' in res.message
    q0 = _q(probe)
    v = np.full(7, 0.2)
    for _ in range(30):
        pub.publish(cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q0 + 0.01 * v, v))
        time.sleep(0.01)
    assert np.max(np.abs(_q(probe) - q0)) < 1e-3, 'held arm followed a command'
    probe.clear('/diagnostics')
    assert wait_for(lambda: _driver_diag(probe) is not None
                    and 'HOLD' in _driver_diag(probe).message, 3.0)
    res = _call(probe, Trigger, f'/{NAME}/recover', Trigger.Request())
    assert res.success, res.message
    _wait_active(probe, node, 5.0)


def test_gripper_homing_and_move(graph):
    probe, _, node = graph
    _wait_active(probe, node)
    res = _call(probe, Trigger, f'/{NAME}/gripper/homing', Trigger.Request())
    assert res.success, res.message
    pub = probe.publisher(Float64, f'/{NAME}/gripper/move')
    assert wait_for(lambda: pub.get_subscription_count() > 0, 5.0)
    pub.publish(Float64(data=0.02))

    def fingers():
        msg = probe.last('/joint_states')
        return list(msg.position[7:]) if len(msg.name) == 9 else []
    assert wait_for(lambda: fingers() and abs(sum(fingers()) - 0.02) < 2e-3, 10.0), fingers()
    before = node.stats['gripper_refused']
    pub.publish(Float64(data=float('nan')))
    assert wait_for(lambda: node.stats['gripper_refused'] == before + 1, 3.0)


def test_reflex_is_reported_and_recovered_by_the_service(graph, record_property):
    probe, pub, node = graph
    _transition(probe, Transition.TRANSITION_DEACTIVATE)
    _transition(probe, Transition.TRANSITION_CLEANUP)
    _set_params(probe, RAW)
    _transition(probe, Transition.TRANSITION_CONFIGURE)
    _transition(probe, Transition.TRANSITION_ACTIVATE)
    try:
        _wait_active(probe, node)
        assert wait_for(lambda: probe.count('/joint_states') > 0, 5.0)
        q = _q(probe)
        q[0] += 0.02
        pub.publish(cv.make_joint_state(ARM, probe.get_clock().now().to_msg(), q, np.zeros(7)))
        assert wait_for(lambda: node.driver_status()['status'] == 'REFLEX', 5.0), \
            node.driver_status()
        probe.clear('/diagnostics')
        assert wait_for(lambda: _driver_diag(probe) is not None, 3.0)
        st = _driver_diag(probe)
        record_property('driver_reflex_diagnostics', st.message)
        assert st.level == bytes([2]) and 'joint_motion_generator_velocity_discontinuity' in \
            st.message, st.message
        assert wait_for(lambda: probe.last(f'/{NAME}/robot_mode').data == 'Reflex', 3.0)
        res = _call(probe, Trigger, f'/{NAME}/recover', Trigger.Request())
        assert res.success and 'joint_motion_generator_velocity_discontinuity' in res.message
        _wait_active(probe, node, 5.0)
        assert wait_for(lambda: probe.last(f'/{NAME}/robot_mode').data == 'Move', 3.0)
    finally:
        _transition(probe, Transition.TRANSITION_DEACTIVATE)
        _transition(probe, Transition.TRANSITION_CLEANUP)
        defaults = load_node_params('driver.yaml', NAME)
        _set_params(probe, {k: defaults[k] for k in RAW})
        _transition(probe, Transition.TRANSITION_CONFIGURE)
        _transition(probe, Transition.TRANSITION_ACTIVATE)
    _wait_active(probe, node)


def test_lifecycle_shutdown_leaves_no_process(graph):
    probe, _, node = graph  # last user of the graph: the FCI takes one client at a time
    pids = node.backend.child_pids
    assert pids and all(os.path.exists(f'/proc/{p}') for p in pids)
    _transition(probe, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert node.backend is None
    assert not any(os.path.exists(f'/proc/{p}') for p in pids), 'a driver process survived'


@pytest.mark.parametrize('backend', ['franka', 'pybullet'])
def test_backend_parameter_picks_the_driver(backend):
    context = rclpy.context.Context()
    rclpy.init(context=context, args=['--ros-args', '-p', f'backend:={backend}',
                                      '-p', 'node.autostart:=false'])
    try:
        node = make_driver_node(context)
        try:
            expected = FrankaDriverNode if backend == 'franka' else SimNode
            assert type(node) is expected
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
