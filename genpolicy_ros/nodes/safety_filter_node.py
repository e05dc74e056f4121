"""Thin ROS 2 wrapper of :class:`genpolicy_ros.safety.filter.SafetyFilter`.

Subscribes ``/genpolicy/action_chunk`` (MultiDOFJointTrajectory of EE poses) and
``/joint_states``; at ``control_rate_hz`` publishes ``/genpolicy/safe_command`` (JointState,
position + velocity targets), ``/genpolicy/filter/status`` (String: the status code), the
proposed and safe EE twists, per-barrier ``/diagnostics`` and ``/genpolicy/safety/markers``. A
malformed chunk is refused (throttled log + diagnostics) and the previous one ages out, so the
filter decelerates to hold; so does a stale chunk.
"""

import threading
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, TwistStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import ColorRGBA, String
from trajectory_msgs.msg import MultiDOFJointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.nodes.params import declare_from_yaml
from genpolicy_ros.nodes.runner import run_node
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import FilterResult, FilterStatus, RobotState, SafetyFilter
from genpolicy_ros.safety.reference import ChunkError, ReferenceTracker

NODE_NAME = 'safety_filter_node'
LOG_THROTTLE_S = 1.0
FRAME = 'world'


class SafetyFilterNode(Node):
    """Filter every policy reference through the CBF-QP before it can move the arm."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_from_yaml(self, 'safety.yaml', NODE_NAME)
        node_params = params.pop('node')  # node-only settings beside the filter's
        self.config = SafetyConfig.from_dict(params)
        self.joint_state_timeout_s = float(node_params['joint_state_timeout_s'])
        self.diagnostics_period_s = 1.0 / float(node_params['diagnostics_rate_hz'])
        self.model = FrankaModel()
        self.filter = SafetyFilter(self.model, self.config)
        self.tracker = ReferenceTracker(self.config.tracking)
        self.joint_names = list(self.model.joint_names)
        self._lock = threading.Lock()
        self._state: Optional[tuple] = None   # (q, dq, receipt monotonic time, stamp [s])
        self.last_result: Optional[FilterResult] = None
        self.counts = {s.name: 0 for s in FilterStatus}
        self.active_counts: dict = {}
        self.rejected_chunks = 0
        self._last_reject = ''
        self._last_diag = 0.0
        self.pub_cmd = self.create_publisher(JointState, '/genpolicy/safe_command', 10)
        self.pub_status = self.create_publisher(String, '/genpolicy/filter/status', 10)
        self.pub_prop = self.create_publisher(TwistStamped, '/genpolicy/filter/proposed_twist', 10)
        self.pub_safe = self.create_publisher(TwistStamped, '/genpolicy/filter/safe_twist', 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.pub_markers = self.create_publisher(MarkerArray, '/genpolicy/safety/markers', 10)
        self.transport = diag.TransportHealth(self)
        for msg_type, topic, callback in (
                (MultiDOFJointTrajectory, '/genpolicy/action_chunk', self._on_chunk),
                (JointState, '/joint_states', self._on_joint_state)):
            self.create_subscription(msg_type, topic, callback, 10,
                                     event_callbacks=self.transport.callbacks(topic))
        self.create_timer(self.config.dt, self._step)

    # ------------------------------------------------------------------ inputs
    def _on_chunk(self, msg: MultiDOFJointTrajectory) -> None:
        now_s = self.get_clock().now().nanoseconds * 1e-9
        try:
            chunk = cv.msg_to_chunk(msg, FRAME, self.config.tracking.quaternion_norm_tolerance)
            with self._lock:
                self.tracker.set_chunk_arrays(chunk.stamp_s, chunk.times_from_start_s,
                                              chunk.positions, chunk.orientations, now_s)
        except (cv.InputError, ChunkError) as exc:
            with self._lock:
                self.rejected_chunks += 1
                self._last_reject = str(exc)
            self.get_logger().warning(f'action chunk refused: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, dq = cv.joint_arrays(msg, self.joint_names, need_velocity=True)
            lim = self.model.limits
            cv.check_joint_ranges(q, dq, lim.lower, lim.upper, lim.velocity)
        except cv.InputError as exc:
            self.get_logger().warning(f'joint state refused: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._lock:
            self._state = (q, dq, time.monotonic(), cv.stamp_to_s(msg.header.stamp))

    # ------------------------------------------------------------------ control step
    def _step(self) -> None:
        with self._lock:
            state = self._state
        if state is None:
            return  # nothing to command before the first joint state
        q, dq, received, measured = state
        now_msg = self.get_clock().now()
        now_s = now_msg.nanoseconds * 1e-9
        # The measurement is already old when the step runs (transport, scheduling): near a
        # barrier tens of ms of it let the arm overshoot by millimetres. Carry it forward to now
        # at its own velocity (bounded by the staleness timeout; a stamp ahead of the clock
        # is not extrapolated backwards).
        age = min(max(now_s - measured, 0.0), self.joint_state_timeout_s)
        robot = RobotState(q=q + age * dq, dq=dq, stamp=now_s)
        if time.monotonic() - received > self.joint_state_timeout_s:
            # Blind: no fresh measurement, so no tracking; the stopping law decelerates.
            result = self.filter.step(robot, None)
        else:
            with self._lock:
                result = self.filter.step_tracking(robot, self.tracker, now_s)
        self._record(result)
        stamp = now_msg.to_msg()
        # Status first: the monitor pairs each command with the status that produced it.
        self.pub_status.publish(String(data=result.status.name))
        self.pub_cmd.publish(cv.make_joint_state(self.joint_names, stamp, result.q_cmd,
                                                 result.dq_cmd))
        for pub, twist in ((self.pub_prop, result.proposed_twist),
                           (self.pub_safe, result.safe_twist)):
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = stamp, FRAME
            msg.twist = cv.make_twist(twist)
            pub.publish(msg)
        if time.monotonic() - self._last_diag >= self.diagnostics_period_s:
            self._last_diag = time.monotonic()
            self._publish_diagnostics(stamp, result)
            self.pub_markers.publish(self._markers(stamp, q, result))

    def _record(self, result: FilterResult) -> None:
        self.last_result = result
        self.counts[result.status.name] += 1
        for name in result.active:
            self.active_counts[name] = self.active_counts.get(name, 0) + 1
        if result.status.is_fallback:
            self.get_logger().warning(f'{result.message} ({result.detail})',
                                      throttle_duration_sec=LOG_THROTTLE_S)

    # ------------------------------------------------------------------ reporting
    def _publish_diagnostics(self, stamp, result: FilterResult) -> None:
        level = (diag.ERROR if result.status.is_fallback else
                 diag.WARN if result.status in (FilterStatus.INTERVENED, FilterStatus.SLACK_USED,
                                                FilterStatus.STALE_REFERENCE) else diag.OK)
        with self._lock:
            rejected, last_reject = self.rejected_chunks, self._last_reject
        statuses = [diag.status(NODE_NAME, 'status', level, result.message, {
            'code': result.status.name, 'detail': result.detail,
            'solve_time_us': result.solve_time_s * 1e6, 'slack': result.slack,
            'ee_speed_mps': float(np.linalg.norm(result.safe_twist[:3])),
            'rejected_chunks': rejected, 'last_rejection': last_reject,
            **{f'count_{k}': v for k, v in self.counts.items()}})]
        statuses.append(self.transport.report(NODE_NAME))
        for b in result.barriers:
            statuses.append(diag.status(
                NODE_NAME, f'barrier {b.name}', diag.WARN if b.active else diag.OK,
                'active' if b.active else 'inactive',
                {'value': float(b.value), 'active': bool(b.active),
                 'active_steps': self.active_counts.get(b.name, 0)}))
        self.pub_diag.publish(diag.array(stamp, statuses))

    def _markers(self, stamp, q: np.ndarray, result: FilterResult) -> MarkerArray:
        """Workspace box, obstacles (red when active) and the EE with its proposed/safe twist."""
        out = MarkerArray()
        active = set(result.active)
        ws = self.config.workspace

        def marker(ns: str, mid: int, mtype: int, rgba) -> Marker:
            m = Marker()
            m.header.stamp, m.header.frame_id = stamp, FRAME
            m.ns, m.id, m.type, m.action = ns, mid, mtype, Marker.ADD
            m.pose.orientation.w = 1.0
            m.color = ColorRGBA(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3])
            return m

        box = marker('workspace', 0, Marker.CUBE, (0.2, 0.6, 1.0, 0.08))
        box.pose.position = Point(x=(ws.x_min_m + ws.x_max_m) / 2,
                                  y=(ws.y_min_m + ws.y_max_m) / 2,
                                  z=(ws.z_min_m + ws.z_max_m) / 2)
        box.scale.x, box.scale.y = ws.x_max_m - ws.x_min_m, ws.y_max_m - ws.y_min_m
        box.scale.z = ws.z_max_m - ws.z_min_m
        out.markers.append(box)
        bset = self.filter.barriers
        for k in range(bset.obs_radius.size):
            hot = f'obstacle:{k}' in active
            m = marker('obstacles', k, Marker.CYLINDER if np.any(bset.obs_axis[k]) else
                       Marker.SPHERE, (1.0, 0.1, 0.1, 0.8) if hot else (0.9, 0.6, 0.1, 0.5))
            centre = bset.obs_start[k] + 0.5 * bset.obs_axis[k]
            m.pose.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]))
            length = float(np.linalg.norm(bset.obs_axis[k]))
            m.scale.x = m.scale.y = 2.0 * float(bset.obs_radius[k])
            m.scale.z = length if length > 0 else 2.0 * float(bset.obs_radius[k])
            out.markers.append(m)
        ee = self.model.kinematics(q).ee_pos
        arrows = ((result.proposed_twist, (0.6, 0.6, 0.6, 0.9)),
                  (result.safe_twist, (0.1, 0.9, 0.2, 0.9)))
        for mid, (twist, rgba) in enumerate(arrows):
            arrow = marker('ee_twist', mid, Marker.ARROW, rgba)
            arrow.points = [Point(x=float(ee[0]), y=float(ee[1]), z=float(ee[2])),
                            Point(x=float(ee[0] + twist[0]), y=float(ee[1] + twist[1]),
                                  z=float(ee[2] + twist[2]))]
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.01, 0.02, 0.02
            out.markers.append(arrow)
        return out


def main(args=None) -> None:
    """Run the node (``ros2 run genpolicy_ros safety_filter_node``)."""
    run_node(SafetyFilterNode, args)


if __name__ == '__main__':
    main()
