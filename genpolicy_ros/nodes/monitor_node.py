"""Thin ROS 2 wrapper of :class:`genpolicy_ros.monitor.monitor.RuntimeMonitor`: the last gate.

Subscribes ``/genpolicy/safe_command`` (+ ``/genpolicy/filter/status``),
``/genpolicy/chunk_samples``, ``/joint_states`` and the camera; at ``node.control_rate_hz``
publishes ``/genpolicy/arm_command`` (only gated commands reach the driver); publishes
``/genpolicy/monitor/{mode,score,threshold}`` when they change and at ``node.status_rate_hz``,
and ``/diagnostics`` at ``node.diagnostics_rate_hz`` and at once on every mode change, with its
reason. Services ``~/hold`` and
``~/reset`` (std_srvs/Trigger): HOLD is latched and reset is refused, with the reason, while its
cause persists. The gate steps on a thread of its own, SCHED_FIFO at ``node.realtime_priority``
where permitted (:mod:`genpolicy_ros.nodes.realtime`).
"""

from dataclasses import replace
import threading
import time
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
from genpolicy_ros.nodes.realtime import PeriodicThread, realtime_process
from genpolicy_ros.nodes.runner import run_node
from genpolicy_ros.robot import FrankaModel

NODE_NAME = 'monitor_node'
LOG_THROTTLE_S = 1.0
# A gate step that comes this many control periods after the previous one found the process
# descheduled (a loaded machine): it is deferred once, see MonitorNode._step.
LATE_STEP_PERIODS = 5.0
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
        self.control_period_s = 1.0 / float(node_params['control_rate_hz'])
        self.status_period_s = 1.0 / float(node_params['status_rate_hz'])
        self._last_status_s = -np.inf
        self._published: tuple = (None, None)   # score and threshold last published
        self._last_step_wall: Optional[float] = None
        self._deferred = False
        self.deferred_steps = 0
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
        # The gate runs on a thread of its own, not an executor timer: a timer waits behind the
        # callback in progress (a camera frame: ~3 ms). Real-time where permitted: the gate
        # thread here, one level above the rest of the process, which main() makes real-time
        # too (a node in a process of its own; a test or genpolicy-sim --in-process must not
        # turn their whole process real-time).
        self.realtime_priority = int(node_params['realtime_priority'])
        self._gate = PeriodicThread(
            'monitor_gate', self.control_period_s, self._step,
            self.realtime_priority + 1 if self.realtime_priority else 0,
            self._on_step_error)
        self._gate.start()   # after the assignment: a step reads self._gate
        if self._gate.realtime_error:
            self.get_logger().warning(f'gate at normal priority: {self._gate.realtime_error}')

    def _on_step_error(self, exc: BaseException) -> None:
        # No command goes out from a failed step: the driver's watchdog holds the arm.
        self.get_logger().error(f'gate step failed: {type(exc).__name__}: {exc}',
                                throttle_duration_sec=LOG_THROTTLE_S)

    def destroy_node(self) -> None:
        """Stop the gate thread before the node's publishers go away."""
        self._gate.stop()
        super().destroy_node()

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
        stamp = cv.stamp_to_s(msg.header.stamp)
        readings = None
        if image is not None:
            # The encoder's look at the frame (~3 ms) outside the lock: the gate thread takes
            # it every period and must not wait for a frame.
            checks = self.monitor.camera_checks
            with self._lock:
                q = checks.joints_at(stamp)
            readings = checks.read(image, q)
        with self._lock:
            self.monitor.on_camera(stamp, now, image, readings)

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
    def _late(self) -> bool:
        """Return True if this step should wait for the messages that queued up meanwhile.

        When this process was not scheduled for a while (a loaded machine), the gate thread
        wakes before the executor thread has taken the fresh messages waiting in its queues;
        the step would judge the inputs' ages without them and latch HOLD for a stale input
        that is not stale. Such a late step is deferred once (the executor takes the queued
        messages meanwhile, the gate runs again one period later); the next one always runs,
        so a real silence is detected at most one period later.
        """
        wall = time.monotonic()
        late = (self._last_step_wall is not None and not self._deferred
                and wall - self._last_step_wall > LATE_STEP_PERIODS * self.control_period_s)
        self._last_step_wall = wall
        self._deferred = late
        if late:
            self.deferred_steps += 1
        return late

    def _step(self) -> None:
        if self._late():
            return
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
        changed = mode != self._last_mode
        if changed:
            if mode == Mode.NOMINAL:
                self.get_logger().info(f'mode {mode.name}: {status.reason}')
            else:
                self.get_logger().warning(f'mode {mode.name}: {status.reason}')
            self._last_mode = mode
        # Mode, score and threshold change at most once per decision: published when they
        # change and at status_rate_hz (late subscribers, liveness), not at the gate's 100 Hz
        # (each message costs every subscriber's process CPU time; a recorder sees them all).
        heartbeat = now - self._last_status_s >= self.status_period_s
        if heartbeat:
            self._last_status_s = now
        if changed or heartbeat:
            self.pub_mode.publish(String(data=mode.name))
        last_score, last_threshold = self._published
        if status.score is not None and (heartbeat or status.score != last_score):
            self.pub_score.publish(Float64(data=float(status.score)))
            last_score = status.score
        if status.threshold is not None and (heartbeat or status.threshold != last_threshold):
            self.pub_threshold.publish(Float64(data=float(status.threshold)))
            last_threshold = status.threshold
        self._published = (last_score, last_threshold)
        # Every mode change is reported at once with its reason (operators and genpolicy-sim
        # see each transition, however short), and at the diagnostics rate in between.
        if changed or now - self._last_diag_s >= self.diagnostics_period_s:
            self._last_diag_s = now
            values = dict(status.as_key_values(), deferred_steps=self.deferred_steps,
                          gate_realtime=self._gate.realtime)
            last = status.last_transition
            if last is not None:
                values.update(last_transition=f'{last.from_mode.name}->{last.to_mode.name}',
                              last_transition_time=f'{last.time:.6f}',
                              last_transition_reason=last.reason)
            self.pub_diag.publish(diag.array(stamp, [diag.status(
                NODE_NAME, 'gate', _LEVEL[mode], f'{mode.name}: {status.reason}', values),
                self.transport.report(NODE_NAME)]))


def _node_owning_its_process() -> MonitorNode:
    node = MonitorNode()
    refused = realtime_process(node.realtime_priority)
    if refused:
        node.get_logger().warning(f'callbacks at normal priority: {refused}')
    return node


def main(args=None) -> None:
    """Run the node (``ros2 run genpolicy_ros monitor_node``)."""
    run_node(_node_owning_its_process, args)


if __name__ == '__main__':
    main()
