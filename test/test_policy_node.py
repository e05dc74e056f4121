"""policy_node over real rclpy with the shipped checkpoint: chunks out, bad images refused."""

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import MultiDOFJointTrajectory

from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes.policy_node import PolicyNode
from genpolicy_ros.robot import FrankaModel
from ros_harness import ros_graph, wait_for

ARM = [f'panda_joint{i}' for i in range(1, 8)]


@pytest.fixture(scope='module')
def graph():
    with ros_graph(lambda ctx: PolicyNode(context=ctx)) as (ctx, probe, nodes):
        probe.watch(MultiDOFJointTrajectory, '/genpolicy/action_chunk', 50)
        probe.watch(MultiDOFJointTrajectory, '/genpolicy/chunk_samples', 50)
        probe.watch(DiagnosticArray, '/diagnostics', 50)
        pub_img = probe.create_publisher(Image, '/camera/color/image_raw',
                                         qos_profile_sensor_data)
        pub_js = probe.create_publisher(JointState, '/joint_states', 10)
        yield probe, nodes[0], pub_img, pub_js


def _feed(probe, pub_img, pub_js, seconds, image=None):
    q = FrankaModel().q_home
    rng = np.random.default_rng(0)
    t_end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < t_end:
        stamp = probe.get_clock().now().to_msg()
        pub_js.publish(cv.make_joint_state(ARM, stamp, q, np.zeros(7)))
        if k % 5 == 0:
            img = image if image is not None else rng.integers(0, 255, (96, 96, 3), np.uint8)
            msg = img if isinstance(img, Image) else cv.numpy_to_image(img, stamp, 'cam')
            msg.header.stamp = stamp
            pub_img.publish(msg)
        k += 1
        time.sleep(0.01)


def test_publishes_chunks_and_samples_from_camera_and_joint_states(graph):
    probe, node, pub_img, pub_js = graph
    _feed(probe, pub_img, pub_js, 1.5)
    assert wait_for(lambda: probe.count('/genpolicy/chunk_samples') >= 1, 3.0)
    chunk = cv.msg_to_chunk(probe.last('/genpolicy/action_chunk'), 'world')
    assert chunk.positions.shape[1] == 3 and len(chunk.positions) >= 2
    assert np.all(np.isfinite(chunk.positions))
    assert np.all(np.diff(chunk.times_from_start_s) > 0)
    stamp, times, samples = cv.msg_to_samples(probe.last('/genpolicy/chunk_samples'), 'world')
    assert samples.shape == (node.runtime.n_samples, len(times), 3)
    # the executed plan's z is the trained push height; xy stays on the table in reach
    assert np.allclose(chunk.positions[1:, 2], chunk.positions[1, 2])
    assert np.all(np.linalg.norm(chunk.positions[:, :2], axis=1) < 0.9)


def test_refuses_wrong_size_and_encoding_and_stops_planning_when_camera_stale(graph):
    probe, node, pub_img, pub_js = graph
    before = node.stats['rejected_images']
    small = cv.numpy_to_image(np.zeros((48, 64, 3), np.uint8), probe.get_clock().now().to_msg(),
                              'cam')
    _feed(probe, pub_img, pub_js, 1.0, image=small)
    mono = cv.numpy_to_image(np.zeros((96, 96, 3), np.uint8), probe.get_clock().now().to_msg(),
                             'cam')
    mono.encoding = 'mono8'
    _feed(probe, pub_img, pub_js, 1.0, image=mono)
    assert wait_for(lambda: node.stats['rejected_images'] >= before + 4, 3.0)
    # Only bad images for > image_timeout: no fresh chunk may appear.
    time.sleep(0.4)
    n = probe.count('/genpolicy/action_chunk')
    _feed(probe, pub_img, pub_js, 0.5, image=mono)
    assert probe.count('/genpolicy/action_chunk') == n, 'planned on a stale camera'

    def reported():
        return any(st.name == 'policy_node: policy' and 'refused' in st.message
                   or st.name == 'policy_node: policy' and 'no camera' in st.message
                   for a in probe.messages['/diagnostics'] for st in a.status)
    assert wait_for(reported, 3.0)


def test_a_decision_waits_for_the_next_camera_frame(graph):
    probe, node, pub_img, pub_js = graph
    img = np.zeros((96, 96, 3), np.uint8)

    def await_in_thread(due):
        done = threading.Event()
        threading.Thread(target=lambda: (node._await_fresh_frame(due), done.set()),
                         daemon=True).start()
        return done

    # No frame comes: the wait ends after frame_wait_s, and the decision uses the newest one.
    first = probe.get_clock().now().to_msg()
    pub_img.publish(cv.numpy_to_image(img, first, 'cam'))
    assert wait_for(lambda: node._image is not None
                    and node._image[1] == cv.stamp_to_s(first), 3.0)
    due = time.monotonic()
    done = await_in_thread(due)
    assert done.wait(node.frame_wait_s + 3.0)
    assert node._image[2] < due
    # A frame comes while it waits: the wait ends with that frame (a generous bound, so the
    # end comes from the frame, not the timeout).
    saved, node.frame_wait_s = node.frame_wait_s, 30.0
    try:
        due = time.monotonic()
        done = await_in_thread(due)
        time.sleep(0.2)
        assert not done.is_set()
        stamp = probe.get_clock().now().to_msg()
        pub_img.publish(cv.numpy_to_image(img, stamp, 'cam'))
        assert done.wait(10.0)
        assert node._image[2] >= due and node._image[1] == cv.stamp_to_s(stamp)
    finally:
        node.frame_wait_s = saved


def test_a_goal_policy_plans_only_once_it_has_a_goal(tmp_path):
    """A checkpoint with the goal input waits for /genpolicy/sim/goal (and says so), then plans."""
    from geometry_msgs.msg import PointStamped
    from rclpy.parameter import Parameter
    from genpolicy_ros.paths import checkpoint_path
    from genpolicy_ros.policy.checkpoint import export_checkpoint
    from genpolicy_ros.policy.dataset import write_synthetic_demos
    from genpolicy_ros.policy.train import main as train_main

    # Policy v3 widened by --add-goal-input (lr 0: weights unchanged, goal weights 0).
    demos = write_synthetic_demos(tmp_path / 'demos', n_episodes=2, length=10, seed=0)
    train_main(['--demos', str(demos), '--out', str(tmp_path / 'run'), '--iters', '1',
                '--batch-size', '4', '--threads', '1', '--no-progress', '--learning-rate', '0',
                '--init-from', str(checkpoint_path('push_flow_v3.pt')), '--add-goal-input'])
    goal_ckpt = tmp_path / 'goal.pt'
    export_checkpoint(tmp_path / 'run' / 'checkpoint.pt', goal_ckpt)

    def make(ctx):
        return PolicyNode(context=ctx, parameter_overrides=[
            Parameter('checkpoint', value=str(goal_ckpt))])

    with ros_graph(make) as (ctx, probe, nodes):
        node = nodes[0]
        assert node.planner.needs_goal
        probe.watch(DiagnosticArray, '/diagnostics', 50)
        pub_img = probe.create_publisher(Image, '/camera/color/image_raw',
                                         qos_profile_sensor_data)
        pub_js = probe.create_publisher(JointState, '/joint_states', 10)
        pub_goal = probe.create_publisher(PointStamped, '/genpolicy/sim/goal', 10)
        # This node's own count: the module's other policy node (fixture ``graph``, alive
        # until the module ends) plans on the same frames and publishes on the same topic.
        _feed(probe, pub_img, pub_js, 1.5)
        assert node.stats['chunks'] == 0, 'planned without a goal'
        assert node.stats['skipped'] > 0 and 'goal' in node.last_problem

        def reported():
            return any(st.name == 'policy_node: policy' and 'goal' in st.message
                       for a in probe.messages['/diagnostics'] for st in a.status)
        assert wait_for(reported, 3.0)
        goal = PointStamped()
        goal.header.frame_id = 'world'
        goal.point.x, goal.point.y = 0.55, 0.1
        pub_goal.publish(goal)
        _feed(probe, pub_img, pub_js, 1.5)
        assert wait_for(lambda: node.stats['chunks'] >= 1, 3.0)
