"""Thin ROS 2 wrapper of the policies: the learned flow policy or the scripted expert.

Subscribes the camera (sensor_data QoS) and ``/joint_states`` (the EE position comes from the
robot model's forward kinematics); at ``decision_rate_hz`` it runs the policy on a worker thread
(never on the executor, so callbacks keep flowing during inference) and publishes
``/genpolicy/action_chunk`` — the upcoming EE targets of the executed plan, stamped with the
observation time — and, when a new chunk was sampled, ``/genpolicy/chunk_samples`` (N sampled
chunks for the monitor). ``~/reset_episode``
(std_srvs/Trigger) starts a new episode: frame history and chunk queue forgotten. A stale or
malformed image is refused with a throttled log line and a diagnostics entry and no chunk is
published, so the filter's chunk timeout brings the arm to hold.

``policy_type: expert`` runs the scripted push expert on the simulator's ground truth
(``/genpolicy/sim/cube_pose``, ``/genpolicy/sim/goal``): the reference the learned policy imitates.
A checkpoint with the goal input (``goal_dim: 2``) also reads the goal xy from
``/genpolicy/sim/goal`` (in the sim the task publishes it; beside a real arm the operator does)
and does not plan, with a diagnostics entry saying so, until one has arrived.
"""

import threading
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseStamped
import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import MultiDOFJointTrajectory

from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.nodes.params import declare_from_yaml
from genpolicy_ros.nodes.runner import run_node
from genpolicy_ros.policy.chunk_plan import DOWN_QUATERNION, ExpertPlanner, FlowPlanner, Plan
from genpolicy_ros.policy.config import PolicyRuntimeConfig
from genpolicy_ros.robot import FrankaModel

NODE_NAME = 'policy_node'
LOG_THROTTLE_S = 1.0
FRAME = 'world'


class PolicyNode(Node):
    """Camera + joint states in, EE action chunks (and their samples) out."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_from_yaml(self, 'policy.yaml', NODE_NAME)
        node_params = params.pop('node')  # node-only settings beside the policy's
        self.runtime = PolicyRuntimeConfig.from_dict(params)
        self.policy_type = str(node_params['policy_type'])
        self.image_timeout_s = float(node_params['image_timeout_s'])
        self.joint_state_timeout_s = float(node_params['joint_state_timeout_s'])
        self.frame_wait_s = float(node_params['frame_wait_s'])
        if self.frame_wait_s < 0.0:
            raise ValueError(f'node.frame_wait_s must be >= 0, got {self.frame_wait_s}')
        self.model = FrankaModel()
        self.joint_names = list(self.model.joint_names)
        if self.policy_type == 'flow':
            self.planner = FlowPlanner.load(self.runtime)
        elif self.policy_type == 'expert':
            self.planner = ExpertPlanner(self.runtime)
        else:
            raise ValueError(f'policy_type must be flow or expert, got {self.policy_type!r}')
        self._lock = threading.Lock()        # inputs
        self._new_frame = threading.Condition(self._lock)  # notified on every accepted frame
        self._plan_lock = threading.Lock()   # the planner (worker thread vs episode reset)
        self._image: Optional[tuple] = None      # (array, stamp_s, receipt monotonic)
        self._joints: Optional[tuple] = None     # (q, receipt monotonic)
        self._cube: Optional[np.ndarray] = None
        self._goal: Optional[np.ndarray] = None
        self.stats = dict(chunks=0, samples=0, skipped=0, rejected_images=0)
        self.last_problem = ''
        self.inference_ms: list = []
        self.pub_chunk = self.create_publisher(MultiDOFJointTrajectory,
                                               '/genpolicy/action_chunk', 10)
        self.pub_samples = self.create_publisher(MultiDOFJointTrajectory,
                                                 '/genpolicy/chunk_samples', 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_subscription(Image, '/camera/color/image_raw', self._on_image,
                                 qos_profile_sensor_data)
        self.transport = diag.TransportHealth(self)
        self.create_subscription(JointState, '/joint_states', self._on_joint_state, 10,
                                 event_callbacks=self.transport.callbacks('/joint_states'))
        self.create_subscription(PoseStamped, '/genpolicy/sim/cube_pose', self._on_cube, 10)
        self.create_subscription(PointStamped, '/genpolicy/sim/goal', self._on_goal, 10)
        self.create_timer(1.0 / float(node_params['diagnostics_rate_hz']), self._publish_diag)
        self.create_service(Trigger, '~/reset_episode', self._on_reset_episode)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name='policy_inference', daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ inputs
    def _problem(self, text: str) -> None:
        self.last_problem = text
        self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)

    def _on_image(self, msg: Image) -> None:
        try:
            img = cv.image_to_numpy(msg)
            size = self.planner.image_size_px
            if size is not None:
                img = cv.fit_image(img, size)   # a camera's 640x480: crop + shrink
        except cv.InputError as exc:
            self.stats['rejected_images'] += 1
            self._problem(f'camera image refused: {exc}')
            return
        with self._lock:
            self._image = (img, cv.stamp_to_s(msg.header.stamp), time.monotonic())
            self._new_frame.notify_all()

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, dq = cv.joint_arrays(msg, self.joint_names)
            lim = self.model.limits
            cv.check_joint_ranges(q, dq, lim.lower, lim.upper, lim.velocity)
        except cv.InputError as exc:
            self._problem(f'joint state refused: {exc}')
            return
        with self._lock:
            self._joints = (q, time.monotonic())

    def _on_cube(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            self._cube = np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w])

    def _on_goal(self, msg: PointStamped) -> None:
        with self._lock:
            self._goal = np.array([msg.point.x, msg.point.y])

    # ------------------------------------------------------------------ inference loop
    def _observation(self) -> Optional[dict]:
        """Return the newest complete observation, or None (and say why) if it is unusable."""
        now = time.monotonic()
        with self._lock:
            image, joints, cube, goal = self._image, self._joints, self._cube, self._goal
        if image is None or now - image[2] > self.image_timeout_s:
            self._problem('no camera image for '
                          f'{self.image_timeout_s * 1e3:.0f} ms: not planning')
            return None
        if joints is None or now - joints[1] > self.joint_state_timeout_s:
            self._problem('no joint state for '
                          f'{self.joint_state_timeout_s * 1e3:.0f} ms: not planning')
            return None
        obs = {'image': image[0], 'stamp': image[1], 'time_s': image[1],
               'ee_pos': self.model.ee_pose(joints[0])[0], 'q': joints[0]}
        if goal is not None:
            obs['goal'] = goal
        elif self.planner.needs_goal:
            self._problem('this policy takes the goal: nothing on /genpolicy/sim/goal yet')
            return None
        if cube is not None:
            obs['cube_pose'] = cube
        elif self.policy_type == 'expert':
            self._problem('the expert needs /genpolicy/sim/cube_pose and /genpolicy/sim/goal')
            return None
        return obs

    def _await_fresh_frame(self, due: float) -> None:
        """Wait up to ``frame_wait_s`` for a frame received at or after ``due`` (monotonic).

        Planning on the newest frame at the tick would use one up to a camera period old (plus
        the tick's own phase); waiting for the next frame makes the chunk start from what the
        camera sees now, and the camera-to-command latency transport + inference + two gate
        steps instead of up to a decision period more.
        """
        if self.frame_wait_s <= 0.0:
            return
        with self._new_frame:
            self._new_frame.wait_for(
                lambda: self._stop.is_set() or (self._image is not None
                                                and self._image[2] >= due),
                timeout=self.frame_wait_s)

    def _run(self) -> None:
        period = 1.0 / self.runtime.decision_rate_hz
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self._await_fresh_frame(next_tick)
            next_tick += period
            obs = self._observation()
            if obs is None:
                self.stats['skipped'] += 1
            else:
                try:
                    with self._plan_lock:
                        plan = self.planner.plan(obs)
                    self._publish(plan)
                except ValueError as exc:
                    self.stats['skipped'] += 1
                    self._problem(f'policy refused the observation: {exc}')
            delay = next_tick - time.monotonic()
            if delay < 0.0:  # overran: do not try to catch up with a burst of decisions
                next_tick = time.monotonic()
            self._stop.wait(max(delay, 0.0))

    def _publish(self, plan: Plan) -> None:
        self.pub_chunk.publish(cv.chunk_to_msg(cv.ChunkArrays(
            plan.stamp_s, FRAME, plan.times_from_start_s, plan.positions,
            np.tile(DOWN_QUATERNION, (len(plan.positions), 1)))))
        self.stats['chunks'] += 1
        if plan.samples is not None:
            self.pub_samples.publish(cv.samples_to_msg(
                plan.stamp_s, FRAME, plan.sample_times_s, plan.samples, DOWN_QUATERNION))
            self.stats['samples'] += 1
            self.inference_ms.append(plan.compute_time_s * 1e3)

    def _publish_diag(self) -> None:
        stats = dict(self.stats)
        recent = self.inference_ms[-50:]
        values = dict(stats, policy_type=self.policy_type, last_problem=self.last_problem,
                      inference_p50_ms=float(np.median(recent)) if recent else 0.0)
        level = diag.WARN if stats['skipped'] or stats['rejected_images'] else diag.OK
        self.pub_diag.publish(diag.array(self.get_clock().now().to_msg(), [diag.status(
            NODE_NAME, 'policy', level, self.last_problem or 'planning', values),
            self.transport.report(NODE_NAME)]))

    def reset_episode(self) -> None:
        """Forget the frame history, chunk queue and previous target (a new episode)."""
        with self._lock:
            self._image = None
        with self._plan_lock:
            self.planner.reset()

    def _on_reset_episode(self, request, response):
        """``~/reset_episode`` (std_srvs/Trigger): :meth:`reset_episode` for another process."""
        self.reset_episode()
        response.success = True
        response.message = f'{self.policy_type} policy reset'
        return response

    def destroy_node(self) -> None:
        """Stop the inference thread before the node goes away."""
        self._stop.set()
        with self._new_frame:
            self._new_frame.notify_all()  # do not let it sit out a frame wait
        self._worker.join(timeout=2.0)
        super().destroy_node()


def main(args=None) -> None:
    """Run the node (``ros2 run genpolicy_ros policy_node``)."""
    run_node(PolicyNode, args)


if __name__ == '__main__':
    main()
