"""Lifecycle node that runs the PyBullet world as the arm driver of the stack.

Publishes ``/joint_states`` and the camera (``/camera/color/image_raw``, ``camera_info``),
consumes ``/genpolicy/arm_command`` (JointState: position + velocity targets). With no valid
command for ``command_timeout_s`` the arm decelerates to a hold (``safety.hold.decelerate``).
Bad commands are refused at the edge with a throttled log line and a diagnostics entry. The
sim also publishes the task's ground truth (``/genpolicy/sim/cube_pose``, ``.../goal``) which
only the scripted expert and operators use; a learned policy sees the camera.

Threading: every PyBullet call on the node's world runs in the mutually exclusive
``_sim_group`` (PyBullet is not thread-safe). The camera frame is only *captured* there (a
``RenderSnapshot``, cheap); a separate process renders it (``FrameRenderer`` /
``CameraProcess``) while the renderer's own thread waits on a pipe without holding the GIL and
then publishes the image, so physics ticks and /joint_states go on while a frame renders, with
a multi-threaded executor or with the single-threaded one per node of ``genpolicy-sim``. If the
render process dies, the frame is dropped, the failure is logged and counted on /diagnostics,
joint states keep flowing, and a later frame restarts the process (at most once per
``CAMERA_RESTART_S``).
"""

import threading
import time
from typing import List, Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseStamped
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import Trigger

from genpolicy_ros.drivers.command_interpolation import CommandInterpolator
from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.nodes.params import declare_from_yaml
from genpolicy_ros.nodes.runner import run_node
from genpolicy_ros.safety.hold import decelerate
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.render_process import CameraProcess, FrameRenderer
from genpolicy_ros.sim.world import PandaWorld

NODE_NAME = 'sim_node'
LOG_THROTTLE_S = 1.0
CAMERA_RESTART_S = 1.0  # minimum time between restarts of a dead camera render process
COMMAND_QUEUE_DEPTH = 1  # /genpolicy/arm_command: keep only the newest (see on_configure)


class SimNode(LifecycleNode):
    """PyBullet arm + camera behind the same topics a real driver would serve."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_from_yaml(self, 'sim.yaml', NODE_NAME)
        node_params = params.pop('node')  # node-only settings beside the world's
        self.config = SimConfig.from_dict(params)
        self.autostart = bool(node_params['autostart'])
        self.episode_seed = int(node_params['episode_seed'])
        # Deceleration bound of the stale-command hold: the arm's own acceleration limits.
        self.limits = FrankaModel().limits
        self.max_decel_radps2 = self.limits.acceleration
        self.max_step_s = float(node_params['max_catch_up_s'])
        # Commands are handed to PyBullet's stiff servo interpolated at every physics step: a
        # step target would make the arm dash faster than commanded (command_interpolation.py).
        self._servo = CommandInterpolator(1.0 / self.config.control_hz,
                                          float(node_params['servo_correction_gain_per_s']),
                                          float(node_params['servo_max_correction_radps']),
                                          self.limits.acceleration, self.limits.jerk)
        self.backend: Optional[PyBulletBackend] = None
        self._lock = threading.Lock()
        self._cmd: Optional[tuple] = None           # (q, dq) last valid command
        self._cmd_wall: Optional[float] = None      # monotonic time it arrived
        self._cmd_first: Optional[float] = None     # ... its first copy (the age the servo uses)
        self._hold_cmd: Optional[tuple] = None      # current decelerating command when stale
        self._last_tick: Optional[float] = None
        self.stats = dict(commands=0, rejected=0, stale_holds=0, ticks=0, frames=0,
                          render_failures=0)
        self._last_reject = ''
        self._timers: List = []
        self._renderer: Optional[FrameRenderer] = None
        self._camera_error = ''                     # last render failure, '' once frames flow
        if self.autostart:
            self.trigger_configure()
            self.trigger_activate()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create the world, publishers and subscriptions."""
        world = PandaWorld(self.config)
        world.reset(self.episode_seed)
        self.backend = PyBulletBackend(world)
        self.backend.stop()
        self._update_task_status()
        names = self.backend.joint_names
        self.joint_names = names
        self.finger_names = list(self.config.arm.finger_joint_names)
        self.pub_js = self.create_lifecycle_publisher(JointState, '/joint_states', 10)
        self.pub_img = self.create_lifecycle_publisher(
            Image, '/camera/color/image_raw', qos_profile_sensor_data)
        self.pub_info = self.create_lifecycle_publisher(
            CameraInfo, '/camera/color/camera_info', qos_profile_sensor_data)
        self.pub_cube = self.create_lifecycle_publisher(
            PoseStamped, '/genpolicy/sim/cube_pose', 10)
        self.pub_goal = self.create_lifecycle_publisher(PointStamped, '/genpolicy/sim/goal', 10)
        self.pub_diag = self.create_lifecycle_publisher(DiagnosticArray, '/diagnostics', 10)
        # Only the newest command matters to the arm. The executor takes one message per
        # subscription and wake-up, after the ready timers (the 250 Hz tick is nearly always
        # ready on a loaded machine): with a deeper queue the backlog was applied oldest first,
        # ~100 ms late, and commands timed out into stale holds.
        self.create_subscription(JointState, '/genpolicy/arm_command', self._on_command,
                                 COMMAND_QUEUE_DEPTH)
        # Everything that touches PyBullet runs in one mutually exclusive group: it is not
        # thread-safe, and the executor is multi-threaded.
        self._sim_group = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, '~/reset_episode', self._on_reset_episode,
                            callback_group=self._sim_group)
        # Frames render in another process, waited for on the renderer's thread.
        self._renderer = FrameRenderer(self.config, self._publish_frame, self._on_render_error,
                                       restart_period_s=CAMERA_RESTART_S)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start stepping physics and publishing."""
        group = self._sim_group
        self._last_tick = time.monotonic()
        self._timers = [
            self.create_timer(1.0 / self.config.joint_state_rate_hz, self._tick, group),
            self.create_timer(1.0 / self.config.camera.rate_hz, self._capture_frame, group),
            self.create_timer(1.0, self._publish_diagnostics, group),
        ]
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the timers and hold the arm."""
        for t in self._timers:
            self.destroy_timer(t)
        self._timers = []
        if self.backend is not None:
            self.backend.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the world and the camera render process."""
        self._close_camera()
        if self.backend is not None:
            self.backend.close()
            self.backend.world.close()
            self.backend = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the world on shutdown from any state (stopping the timers if active)."""
        for t in self._timers:
            self.destroy_timer(t)
        self._timers = []
        return self.on_cleanup(state)

    def destroy_node(self) -> None:
        """Stop the camera render process too (the node may be destroyed in any state)."""
        self._close_camera()
        super().destroy_node()

    def _close_camera(self) -> None:
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            renderer.close()

    @property
    def camera(self) -> Optional[CameraProcess]:
        """The camera render process (None unless configured)."""
        renderer = self._renderer
        return renderer.camera if renderer is not None else None

    # ------------------------------------------------------------------ commands
    def _on_command(self, msg: JointState) -> None:
        try:
            q, dq = cv.joint_arrays(msg, self.joint_names)
            # Finite but absurd targets (1e12 rad, 10x the speed limit) never reach the servo.
            cv.check_joint_ranges(q, dq, self.limits.lower, self.limits.upper,
                                  self.limits.velocity, cv.COMMAND_POSITION_MARGIN_RAD,
                                  cv.COMMAND_VELOCITY_FACTOR)
        except cv.InputError as exc:
            with self._lock:
                self.stats['rejected'] += 1
                self._last_reject = str(exc)
            self.get_logger().warning(f'arm command refused: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        if dq is None:
            dq = np.zeros_like(q)
        with self._lock:
            # The monitor re-sends the newest safe command every tick until it is stale: a copy
            # is not a successor, and must not restart the command's period, or the servo's
            # coasting bound never ends it and the arm runs on at a velocity the filter chose
            # for a configuration it has left (past the speed cap where J dq grows on the way).
            resent = (self._cmd is not None and np.array_equal(q, self._cmd[0])
                      and np.array_equal(dq, self._cmd[1]))
            self._cmd = (q, dq)
            self._cmd_wall = time.monotonic()
            if not resent or self._cmd_first is None:
                self._cmd_first = self._cmd_wall
            self._hold_cmd = None
            self.stats['commands'] += 1

    def _current_command(self, now: float, dt: float) -> Optional[tuple]:
        """Return the command to apply now: the latest, or a deceleration once it is stale."""
        with self._lock:
            if self._cmd is None:
                return None
            if now - self._cmd_wall <= self.config.command_timeout_s:
                return self._cmd
            if self._hold_cmd is None:
                self.stats['stale_holds'] += 1
                self.get_logger().warning(
                    f'no arm command for {self.config.command_timeout_s * 1e3:.0f} ms: '
                    'decelerating to hold', throttle_duration_sec=LOG_THROTTLE_S)
                # Stop from where the servo reference is, not from the last command's position:
                # the two differ by whatever the commander's timing left uncorrected.
                self._hold_cmd = self._servo.state or self._cmd
            q, dq = self._hold_cmd
            self._hold_cmd = decelerate(q, dq, self.max_decel_radps2, dt)
            return self._hold_cmd

    # ------------------------------------------------------------------ loop
    def _tick(self) -> None:
        now = time.monotonic()
        # The physics below is advanced to this instant: the joint state shows the arm now, not
        # when the stepping (up to a few ms, more on a starved tick) has finished. Stamped
        # later, a state's stamp would jitter by that compute time and a velocity change
        # would look faster or slower than it was.
        stamp = self.get_clock().now().to_msg()
        # Advance simulated time with the wall clock (bounded so a stall does not explode).
        dt = min(max(now - self._last_tick, 0.0), self.max_step_s)
        self._last_tick = now
        cmd = self._current_command(now, max(dt, 1e-3))
        if cmd is None:
            self._servo.reset()
            self.backend.advance(dt)
        else:
            self._advance_interpolated(cmd, now, dt)
        self.stats['ticks'] += 1
        state = self.backend.read_state()
        width = state.gripper_width / 2.0
        self.pub_js.publish(cv.make_joint_state(
            self.joint_names + self.finger_names, stamp,
            np.concatenate([state.q, [width, width]]),
            np.concatenate([state.dq, [0.0, 0.0]]),
            np.concatenate([state.tau, [0.0, 0.0]])))

    def _advance_interpolated(self, cmd: tuple, now: float, dt: float) -> None:
        """Step physics by ``dt``, giving the servo the interpolated command at every step."""
        with self._lock:
            # A stale hold's decelerating command is made for this tick: its position is due now.
            age = (self._servo.period_s if self._hold_cmd is not None
                   else now - dt - self._cmd_first)
        if self._servo.reference is None:
            self._servo.reset(self.backend.read_state().q)
        step = 1.0 / self.config.physics_hz
        for k in range(int(round(dt / step))):
            self.backend.command(*self._servo.step(cmd[0], cmd[1], age + k * step, step))
            self.backend.advance(step)

    def _capture_frame(self) -> None:
        # Sim group: capture what the frame shows and the ground truth at this instant (cheap),
        # then hand the snapshot to the renderer.
        world = self.backend.world
        stamp = self.get_clock().now().to_msg()
        snapshot = world.render_snapshot()
        info = world.camera_info()
        cube = world.cube_pose()
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, 'world'
        (pose.pose.position.x, pose.pose.position.y, pose.pose.position.z) = map(float, cube[:3])
        (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
         pose.pose.orientation.w) = map(float, cube[3:])
        self.pub_cube.publish(pose)
        goal = PointStamped()
        goal.header = pose.header
        goal.point.x, goal.point.y = float(world.goal_xy[0]), float(world.goal_xy[1])
        self.pub_goal.publish(goal)
        self._update_task_status()
        renderer = self._renderer
        if renderer is not None:
            renderer.submit(snapshot, (info, stamp))  # never blocks; an unrendered one is dropped

    def _publish_frame(self, img: np.ndarray, tag: tuple) -> None:
        # Renderer thread: no PyBullet call on the node's world here. The image carries the
        # stamp of the instant it shows (its capture), like a real camera's exposure time.
        info, stamp = tag
        self.pub_img.publish(cv.numpy_to_image(img, stamp, info.frame_id))
        self.pub_info.publish(cv.make_camera_info(info.width, info.height, info.k, info.p,
                                                  stamp, info.frame_id))
        with self._lock:
            self.stats['frames'] += 1
            self._camera_error = ''

    def _on_render_error(self, exc: RuntimeError) -> None:
        with self._lock:
            self.stats['render_failures'] += 1
            self._camera_error = str(exc)
        self.get_logger().error(f'camera frame dropped: {exc}',
                                throttle_duration_sec=LOG_THROTTLE_S)

    def _update_task_status(self) -> None:
        # Called from the sim's own callbacks only: PyBullet must not be touched concurrently.
        world = self.backend.world
        cube_xy = world.cube_pose()[:2]
        status = dict(distance_m=world.task.distance_to_goal(cube_xy, world.goal_xy),
                      success=world.task.is_success(cube_xy, world.goal_xy),
                      sim_time_s=world.sim_time)
        with self._lock:
            self._task_status = status

    def task_status(self) -> dict:
        """Return the cube's distance to the goal [m], success, sim time (as of the last frame)."""
        with self._lock:
            return dict(self._task_status)

    def _publish_diagnostics(self) -> None:
        with self._lock:
            stats = dict(self.stats)
            stale = self._hold_cmd is not None
            last_reject = self._last_reject
            camera_error = self._camera_error
        problems = []
        if stale:
            problems.append('holding: arm command stale')
        if camera_error:
            problems.append(f'camera frames dropped: {camera_error}')
        if stats['rejected']:
            problems.append(f'refused {stats["rejected"]} commands (last: {last_reject})')
        level = diag.WARN if problems else diag.OK
        msg = '; '.join(problems) or 'running'
        task = self.task_status()
        self.pub_diag.publish(diag.array(self.get_clock().now().to_msg(), [
            diag.status(NODE_NAME, 'driver', level, msg, stats),
            diag.status(NODE_NAME, 'task', diag.OK,
                        'cube at goal' if task['success'] else 'cube not at goal', task)]))

    def _on_reset_episode(self, request, response):
        """Start the next episode (seed + 1): new cube and goal, arm back at the start."""
        self.episode_seed += 1
        world = self.backend.world
        world.reset(self.episode_seed)
        self.backend.reset_watchdog()
        self.backend.stop()
        with self._lock:
            self._cmd = None
            self._hold_cmd = None
        self._servo.reset()
        self._update_task_status()
        response.success = True
        response.message = f'episode seed {self.episode_seed}'
        return response


def main(args=None) -> None:
    """Run the node (``ros2 run genpolicy_ros sim_node``)."""
    run_node(SimNode, args)


if __name__ == '__main__':
    main()
