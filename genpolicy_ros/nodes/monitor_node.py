"""Thin ROS 2 wrapper of :class:`genpolicy_ros.monitor.monitor.RuntimeMonitor`: the last gate.

Subscribes ``/genpolicy/safe_command`` (+ ``/genpolicy/filter/status``),
``/genpolicy/chunk_samples``, ``/joint_states`` and the camera; at ``node.control_rate_hz``
publishes ``/genpolicy/arm_command`` (only gated commands reach the driver),
``/genpolicy/monitor/{mode,score,threshold}`` and ``/diagnostics``. Services ``~/hold`` and
``~/reset`` (std_srvs/Trigger): HOLD is latched and reset is refused, with the reason, while its
cause persists.
"""

from dataclasses import replace
import threading
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import MultiDOFJointTrajectory

from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.monitor.monitor import MonitorConfig, RuntimeMonitor
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.nodes.params import declare_from_yaml
from genpolicy_ros.nodes.runner import run_node
from genpolicy_ros.robot import FrankaModel

NODE_NAME = 'monitor_node'
LOG_THROTTLE_S = 1.0
FRAME = 'world'
_LEVEL = {Mode.NOMINAL: diag.OK, Mode.SLOW: diag.WARN, Mode.HOLD: diag.ERROR}


class MonitorNode(Node):
    """Gate the filter's commands by the policy's consistency and the inputs' health."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_from_yaml(self, 'monitor.yaml', NODE_NAME)
        node_params = params.pop('node')  # node-only settings beside the monitor's
        self.config = MonitorConfig.from_dict(params)
        if bool(node_params['require_reset_after_start']):
            self.config = replace(self.config, gate=replace(self.config.gate,
                                                            auto_release_startup_hold=False))
        limits = self.limits = FrankaModel().limits
        self.monitor = RuntimeMonitor.from_files(self.config, limits.velocity, limits.acceleration)
        if self.monitor.camera_checks.model is not None:
            import torch  # loaded by the novelty model already
            torch.set_num_threads(int(node_params['torch_threads']))
        else:
            self.get_logger().warning(
                f'no novelty model config/{self.config.novelty.model_file}: camera images are '
                f'checked for freezing only, not for novelty (run genpolicy-calibrate)')
        self.joint_names = [f'panda_joint{i}' for i in range(1, 8)]
        self.diagnostics_period_s = 1.0 / float(node_params['diagnostics_rate_hz'])
        self._lock = threading.Lock()
        self._measured: Optional[tuple] = None
        self._filter_fallback = False
        self._last_mode: Optional[Mode] = None
        self._last_diag_s = -np.inf
        self.commands_sent = 0
        self.pub_cmd = self.create_publisher(JointState, '/genpolicy/arm_command', 10)
        self.pub_mode = self.create_publisher(String, '/genpolicy/monitor/mode', 10)
        self.pub_score = self.create_publisher(Float64, '/genpolicy/monitor/score', 10)
        self.pub_threshold = self.create_publisher(Float64, '/genpolicy/monitor/threshold', 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.transport = diag.TransportHealth(self)
        for msg_type, topic, callback in (
                (JointState, '/genpolicy/safe_command', self._on_safe_command),
                (String, '/genpolicy/filter/status', self._on_filter_status),
                (MultiDOFJointTrajectory, '/genpolicy/chunk_samples', self._on_samples),
                (JointState, '/joint_states', self._on_joint_state)):
            self.create_subscription(msg_type, topic, callback, 10,
                                     event_callbacks=self.transport.callbacks(topic))
        self.create_subscription(Image, '/camera/color/image_raw', self._on_camera,
                                 qos_profile_sensor_data)
        self.create_service(Trigger, '~/hold', self._on_hold)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.create_timer(1.0 / float(node_params['control_rate_hz']), self._step)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)

    # ------------------------------------------------------------------ inputs
    def _on_filter_status(self, msg: String) -> None:
        with self._lock:
            self._filter_fallback = msg.data.endswith('_FALLBACK')

    def _on_safe_command(self, msg: JointState) -> None:
        now = self._now()
        try:
            q, dq = cv.joint_arrays(msg, self.joint_names, need_velocity=True)
        except cv.InputError as exc:
            # The watchdog still needs to know a bad command came: feed NaN so it faults.
            self._warn(f'safe command refused: {exc}')
            q = dq = np.full(len(self.joint_names), np.nan)
        with self._lock:
            ok = self.monitor.on_safe_command(q, dq, cv.stamp_to_s(msg.header.stamp),
                                              self._filter_fallback, now)
        if not ok:
            self._warn('safe command rejected by the watchdogs (see /diagnostics)')

    def _on_samples(self, msg: MultiDOFJointTrajectory) -> None:
        now = self._now()
        try:
            stamp, times, samples = cv.msg_to_samples(msg, FRAME)
        except cv.InputError as exc:
            self._warn(f'chunk samples refused: {exc}')
            stamp, times, samples = cv.stamp_to_s(msg.header.stamp), np.zeros(0), np.full(
                (1, 1, 3), np.nan)
        with self._lock:
            self.monitor.on_chunk_samples(stamp, times, samples, now)

    def _on_joint_state(self, msg: JointState) -> None:
        now = self._now()
        rejected = None
        try:
            q, dq = cv.joint_arrays(msg, self.joint_names, need_velocity=True)
            cv.check_joint_ranges(q, dq, self.limits.lower, self.limits.upper,
                                  self.limits.velocity)
        except cv.InputError as exc:
            # The watchdog must know a bad measurement came (a fault), not just miss it.
            self._warn(f'joint state refused: {exc}')
            rejected = str(exc)
            q = dq = np.zeros(len(self.joint_names))
        with self._lock:
            if self.monitor.on_joint_state(q, dq, cv.stamp_to_s(msg.header.stamp), now,
                                           rejected):
                self._measured = (q, dq)

    def _on_camera(self, msg: Image) -> None:
        now = self._now()
        try:
            image: Optional[np.ndarray] = cv.image_to_numpy(msg)
            model = self.monitor.camera_checks.model
            if model is not None:
                # Judge the frame the policy sees: the same crop and shrink as its node.
                image = cv.fit_image(image, model.image_size_px)
        except cv.InputError as exc:
            # The stamp still counts for the stale watchdog; the content cannot be checked.
            self._warn(f'camera image not checked: {exc}')
            image = None
        with self._lock:
            self.monitor.on_camera(cv.stamp_to_s(msg.header.stamp), now, image)

    # ------------------------------------------------------------------ services
    def _on_hold(self, request, response):
        with self._lock:
            self.monitor.request_hold('operator request (~/hold)', self._now())
        response.success = True
        response.message = 'HOLD latched; call ~/reset to resume'
        self.get_logger().warning('HOLD requested by the operator')
        return response

    def _on_reset(self, request, response):
        with self._lock:
            ok, message = self.monitor.reset(self._now())
        response.success, response.message = bool(ok), message
        if ok:
            self.get_logger().info(f'reset: {message}')
        else:
            self.get_logger().warning(f'reset refused: {message}')
        return response

    def reset_episode(self) -> str:
        """Between episodes: try to leave HOLD (refused, with the reason, if a cause persists)."""
        with self._lock:
            ok, message = self.monitor.reset(self._now())
        return message

    # ------------------------------------------------------------------ gate
    def _step(self) -> None:
        now = self._now()
        with self._lock:
            measured = self._measured
            if measured is None:
                mode = self.monitor.update(now)
                cmd = None
            else:
                q_cmd, dq_cmd, mode = self.monitor.gated_command(measured[0], measured[1], now)
                cmd = (q_cmd, dq_cmd)
            status = self.monitor.status(now)
        stamp = self.get_clock().now().to_msg()
        if cmd is not None:
            self.pub_cmd.publish(cv.make_joint_state(self.joint_names, stamp, *cmd))
            self.commands_sent += 1
        if mode != self._last_mode:
            if mode == Mode.NOMINAL:
                self.get_logger().info(f'mode {mode.name}: {status.reason}')
            else:
                self.get_logger().warning(f'mode {mode.name}: {status.reason}')
            self._last_mode = mode
        self.pub_mode.publish(String(data=mode.name))
        if status.score is not None:
            self.pub_score.publish(Float64(data=float(status.score)))
        if status.threshold is not None:
            self.pub_threshold.publish(Float64(data=float(status.threshold)))
        if now - self._last_diag_s >= self.diagnostics_period_s:
            self._last_diag_s = now
            self.pub_diag.publish(diag.array(stamp, [diag.status(
                NODE_NAME, 'gate', _LEVEL[mode], f'{mode.name}: {status.reason}',
                dict(status.as_key_values())), self.transport.report(NODE_NAME)]))


def main(args=None) -> None:
    """Run the node (``ros2 run genpolicy_ros monitor_node``)."""
    run_node(MonitorNode, args)
