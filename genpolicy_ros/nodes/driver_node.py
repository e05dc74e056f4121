"""The arm driver node: ``backend: pybullet`` (today's sim_node) or ``backend: franka``.

Like franka_ros2's ``use_fake_hardware``, one parameter picks the hardware: ``driver_node``
with ``backend: pybullet`` runs :class:`~genpolicy_ros.nodes.sim_node.SimNode` (PyBullet arm and
camera, ``config/sim.yaml``) unchanged; with ``backend: franka`` it runs
:class:`FrankaDriverNode` on a real FR3 / Panda through pylibfranka (``config/driver.yaml``).

FrankaDriverNode (lifecycle; thin: the robot logic is in ``drivers/franka_*.py``):

* publishes ``/joint_states`` (7 arm joints, plus the two fingers while the gripper reports)
  at ``node.joint_state_rate_hz`` from the 1 kHz loop's newest sample, ``~/ee_pose``
  (PoseStamped, libfranka's O_T_EE in ``base_frame``), ``~/robot_mode`` (String: libfranka's
  RobotMode, or ``Disconnected``) and ``/diagnostics``;
* follows ``/genpolicy/arm_command`` (JointState position + velocity); bad commands (NaN,
  limits, jumps) are refused at the edge with a throttled log line and a diagnostics entry;
  without fresh commands the arm decelerates and holds;
* services ``~/hold`` (latch a hold), ``~/recover`` (after a reflex: libfranka's
  ``automatic_error_recovery``; also releases a hold), ``~/gripper/homing``; topics
  ``~/gripper/move`` and ``~/gripper/grasp`` (std_msgs/Float64: width [m]).

Parameters are read on configure, so cleanup -> set parameters -> configure applies new ones.
"""

import threading
from typing import Any, Dict, List, Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile
from rclpy.service import Service
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from genpolicy_ros.config_io import unflatten
from genpolicy_ros.drivers.franka_backend import FrankaBackend, FrankaBackendError
from genpolicy_ros.drivers.franka_config import FrankaConfig
from genpolicy_ros.drivers.franka_control import Status
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.nodes.params import declare_from_yaml, load_node_params
from genpolicy_ros.nodes.runner import run_node

NODE_NAME = 'driver_node'
CONFIG_FILE = 'driver.yaml'
BACKENDS = ('pybullet', 'franka')
LOG_THROTTLE_S = 1.0
_LEVEL = {Status.ACTIVE: diag.OK, Status.IDLE: diag.WARN, Status.HOLD: diag.WARN,
          Status.STARTING: diag.WARN, Status.CONNECTING: diag.ERROR,
          Status.DISCONNECTED: diag.ERROR, Status.REFLEX: diag.ERROR, Status.STOPPED: diag.ERROR}


class FrankaDriverNode(LifecycleNode):
    """A real Franka behind the same topics the PyBullet driver serves."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare_from_yaml(self, CONFIG_FILE, NODE_NAME)
        self._param_names = list(load_node_params(CONFIG_FILE, NODE_NAME))
        node_params = self._params()['node']
        self.backend: Optional[FrankaBackend] = None
        self.config: Optional[FrankaConfig] = None
        self._lock = threading.Lock()
        self._timers: List[Any] = []
        self._entities: List[Any] = []   # subscriptions and services made on configure
        self._publishers: List[Any] = []
        self._last_mode = ''
        self.stats: Dict[str, int] = dict(commands=0, refused=0, stale_states=0,
                                          gripper_commands=0, gripper_refused=0)
        self._last_reject = ''
        self._gripper_result = ''
        if bool(node_params['autostart']):
            self.trigger_configure()
            self.trigger_activate()

    def _params(self) -> Dict[str, Any]:
        return unflatten({name: self.get_parameter(name).value for name in self._param_names})

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the control and gripper processes; create publishers, topics and services."""
        params = self._params()
        if params['backend'] != 'franka':
            self.get_logger().error(f'FrankaDriverNode needs backend: franka, got '
                                    f'{params["backend"]!r} (driver_node picks the class)')
            return TransitionCallbackReturn.FAILURE
        try:
            self.config = FrankaConfig.from_dict(params['franka'])
            self.backend = FrankaBackend(self.config)
        except (ValueError, FrankaBackendError) as exc:
            self.get_logger().error(f'cannot configure the Franka driver: {exc}')
            return TransitionCallbackReturn.FAILURE
        node = params['node']
        self.joint_state_period_s = 1.0 / float(node['joint_state_rate_hz'])
        self.diagnostics_period_s = 1.0 / float(node['diagnostics_rate_hz'])
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_js = self.create_lifecycle_publisher(JointState, '/joint_states', 10)
        self.pub_pose = self.create_lifecycle_publisher(PoseStamped, '~/ee_pose', 10)
        self.pub_mode = self.create_lifecycle_publisher(String, '~/robot_mode', latched)
        self.pub_diag = self.create_lifecycle_publisher(DiagnosticArray, '/diagnostics', 10)
        self._publishers = [self.pub_js, self.pub_pose, self.pub_mode, self.pub_diag]
        self._entities = [
            self.create_subscription(JointState, '/genpolicy/arm_command', self._on_command, 10),
            self.create_subscription(Float64, '~/gripper/move', self._on_gripper_move, 10),
            self.create_subscription(Float64, '~/gripper/grasp', self._on_gripper_grasp, 10),
            self.create_service(Trigger, '~/recover', self._on_recover),
            self.create_service(Trigger, '~/hold', self._on_hold),
            self.create_service(Trigger, '~/gripper/homing', self._on_gripper_homing),
        ]
        self.get_logger().info(f'Franka driver configured for {self.config.robot_ip} '
                               f'({self.config.control_mode} control, realtime '
                               f'{self.config.realtime_config})')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the motion (as soon as connected) and the publishing timers."""
        try:
            self.backend.enable()
        except FrankaBackendError as exc:
            self.get_logger().error(f'cannot activate: {exc}')
            return TransitionCallbackReturn.FAILURE
        self._timers = [self.create_timer(self.joint_state_period_s, self._publish_state),
                        self.create_timer(self.diagnostics_period_s, self._publish_diagnostics)]
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Bring the arm to rest and finish the motion; stop the timers."""
        self._stop_timers()
        if self.backend is not None:
            try:
                ok, message = self.backend.disable()
                if not ok:
                    self.get_logger().warning(f'deactivate: {message}')
            except FrankaBackendError as exc:
                self.get_logger().error(f'deactivate: {exc}')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the control and gripper processes; drop topics and services."""
        self._close_backend()
        for entity in self._entities:
            if isinstance(entity, Service):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        for pub in self._publishers:
            self.destroy_publisher(pub)
        self._entities, self._publishers = [], []
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the arm from any state."""
        self._stop_timers()
        self._close_backend()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the control processes too (the node may be destroyed in any state)."""
        self._stop_timers()
        self._close_backend()
        super().destroy_node()

    def _stop_timers(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []

    def _close_backend(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    # ------------------------------------------------------------------ commands
    def _refuse(self, key: str, text: str) -> None:
        with self._lock:
            self.stats[key] += 1
            self._last_reject = text
        self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)

    def _on_command(self, msg: JointState) -> None:
        backend = self.backend
        if backend is None:
            return
        try:
            q, dq = cv.joint_arrays(msg, backend.joint_names)
            backend.command(q, np.zeros_like(q) if dq is None else dq)
        except ValueError as exc:  # InputError and CommandRefused
            self._refuse('refused', f'arm command refused: {exc}')
            return
        with self._lock:
            self.stats['commands'] += 1

    def _on_recover(self, request, response):
        if self.backend is None:
            response.success, response.message = False, 'driver not configured'
            return response
        try:
            ok, message = self.backend.recover()
        except FrankaBackendError as exc:
            ok, message = False, str(exc)
        response.success, response.message = ok, message
        log = self.get_logger().info if ok else self.get_logger().error
        log(f'~/recover: {message}')
        return response

    def _on_hold(self, request, response):
        if self.backend is None:
            response.success, response.message = False, 'driver not configured'
            return response
        try:
            response.message = self.backend.hold('operator hold (~/hold)') + \
                '; call ~/recover to resume'
            response.success = True
        except FrankaBackendError as exc:
            response.success, response.message = False, str(exc)
        self.get_logger().warning(f'~/hold: {response.message}')
        return response

    # ------------------------------------------------------------------ gripper
    def _gripper_request(self, op: str, width: Optional[float] = None) -> str:
        gripper = self.backend.gripper if self.backend is not None else None
        if gripper is None:
            raise ValueError('no gripper (franka.gripper.enabled is false)')
        state = gripper.state()
        if not state['connected']:
            raise ValueError(f'gripper unavailable: {state["message"]}')
        gripper.request(op, width)
        with self._lock:
            self.stats['gripper_commands'] += 1
        return f'gripper {op} requested' + (f' (width {width} m)' if width is not None else '')

    def _on_gripper_homing(self, request, response):
        try:
            response.message = self._gripper_request('homing')
            response.success = True
        except ValueError as exc:
            self._refuse('gripper_refused', f'gripper command refused: {exc}')
            response.success, response.message = False, str(exc)
        return response

    def _on_gripper_move(self, msg: Float64) -> None:
        self._gripper_width_command('move', msg.data)

    def _on_gripper_grasp(self, msg: Float64) -> None:
        self._gripper_width_command('grasp', msg.data)

    def _gripper_width_command(self, op: str, width: float) -> None:
        try:
            if not np.isfinite(width):
                raise ValueError(f'gripper width {width} is not finite')
            self.get_logger().info(self._gripper_request(op, float(width)))
        except ValueError as exc:
            self._refuse('gripper_refused', f'gripper command refused: {exc}')

    # ------------------------------------------------------------------ publishing
    def _publish_state(self) -> None:
        backend = self.backend
        if backend is None:
            return
        s = backend.sample()
        mode = s.robot_mode if s.age_s <= self.config.connection.state_timeout_s \
            else 'Disconnected'
        if mode != self._last_mode:
            self._last_mode = mode
            self.pub_mode.publish(String(data=mode))
        if mode == 'Disconnected':
            with self._lock:
                self.stats['stale_states'] += 1
            return  # no state is better than a stale one: the monitor's watchdog sees it
        now = self.get_clock().now()
        stamp = (now - rclpy.duration.Duration(seconds=max(s.age_s, 0.0))).to_msg()
        names = list(backend.joint_names)
        q, dq, tau = s.q, s.dq, s.tau
        gripper = backend.gripper
        if gripper is not None:
            for result in gripper.results():
                self._gripper_result = f'{result.op}: {result.message}'
                log = self.get_logger().info if result.ok else self.get_logger().warning
                log(f'gripper {self._gripper_result}')
            g = gripper.state()
            if g['connected']:
                half = g['width'] / 2.0
                names += list(self.config.finger_joint_names)
                q = np.concatenate([q, [half, half]])
                dq, tau = np.concatenate([dq, [0.0, 0.0]]), np.concatenate([tau, [0.0, 0.0]])
        self.pub_js.publish(cv.make_joint_state(names, stamp, q, dq, tau))
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, self.config.base_frame
        T = s.ee_pose
        (pose.pose.position.x, pose.pose.position.y, pose.pose.position.z) = map(float, T[:3, 3])
        quat = Rotation.from_matrix(T[:3, :3]).as_quat() if np.all(np.isfinite(T)) and \
            abs(np.linalg.det(T[:3, :3]) - 1.0) < 1e-3 else np.array([0.0, 0.0, 0.0, 1.0])
        (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
         pose.pose.orientation.w) = map(float, quat)
        self.pub_pose.publish(pose)

    def driver_status(self) -> Dict[str, Any]:
        """Return the status, message, errors and counters the diagnostics report."""
        backend = self.backend
        if backend is None:
            return {'status': 'UNCONFIGURED', 'message': 'not configured', 'level': diag.ERROR}
        st, s = backend.status(), backend.sample()
        with self._lock:
            stats = dict(self.stats)
            last_reject = self._last_reject
        problems = []
        if st.status == Status.REFLEX:
            problems.append(f'HOLD: reflex {st.errors}: call ~/recover')
        elif st.status == Status.HOLD:
            problems.append(f'HOLD: {st.hold_reason}')
        elif st.status != Status.ACTIVE:
            problems.append(st.message)
        elif not s.following:
            problems.append('holding: no fresh arm command' + (
                f' ({s.counters["stale_holds"]} stale holds)' if s.counters['stale_holds']
                else ''))
        if stats['refused']:
            problems.append(f'refused {stats["refused"]} commands (last: {last_reject})')
        level = _LEVEL[st.status]
        if level == diag.OK and problems:
            level = diag.WARN
        values = dict(status=st.status.name, robot_mode=s.robot_mode or 'unknown',
                      errors=', '.join(st.errors), hold_reason=st.hold_reason,
                      state_message=st.message, success_rate=s.success_rate,
                      state_age_s=s.age_s, **s.counters, **stats)
        gripper = backend.gripper
        if gripper is not None:
            g = gripper.state()
            values.update(gripper=g['status'], gripper_width_m=g['width'],
                          gripper_last_result=self._gripper_result)
        return {'status': st.status.name, 'level': level,
                'message': '; '.join(problems) or 'following arm commands',
                'values': values, 'errors': st.errors}

    def _publish_diagnostics(self) -> None:
        report = self.driver_status()
        self.pub_diag.publish(diag.array(self.get_clock().now().to_msg(), [
            diag.status(self.get_name(), 'driver', report['level'], report['message'],
                        report.get('values'), hardware_id=f'franka@{self.config.robot_ip}')]))
        self.pub_mode.publish(String(data=self._last_mode or 'unknown'))


def requested_backend(context: Optional[Context] = None) -> str:
    """Return the ``backend`` parameter this process was started with (YAML default otherwise).

    Read through a short-lived node of the same name, so remapping, parameter files and
    ``-p backend:=...`` apply exactly as they will to the driver node itself.
    """
    default = load_node_params(CONFIG_FILE, NODE_NAME)['backend']
    probe = rclpy.create_node(NODE_NAME, context=context,
                              automatically_declare_parameters_from_overrides=True,
                              start_parameter_services=False, enable_rosout=False)
    try:
        param = probe.get_parameter_or('backend', None)
        value = param.value if param is not None and param.value is not None else default
    finally:
        probe.destroy_node()
    if value not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {value!r}')
    return str(value)


def make_driver_node(context: Optional[Context] = None) -> LifecycleNode:
    """Build the driver for the requested backend (rclpy must be initialised)."""
    kwargs = {} if context is None else {'context': context}
    if requested_backend(context) == 'pybullet':
        from genpolicy_ros.nodes.sim_node import SimNode  # PyBullet only when asked for
        return SimNode(**kwargs)
    return FrankaDriverNode(**kwargs)


def main(args=None) -> None:
    """Run the driver (``ros2 run genpolicy_ros driver_node --ros-args -p backend:=franka``)."""
    run_node(make_driver_node, args)
