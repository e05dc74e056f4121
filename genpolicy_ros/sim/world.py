"""PyBullet world: Panda arm on a table, a pushable cube, a goal disc and a fixed RGB camera.

Conventions (other parts depend on them): robot base at the world origin, table top at z = 0,
joints ``panda_joint1..7`` plus two finger joints, TCP = ``panda_grasptarget``. Every reset
rebuilds the simulation from scratch, so a seed fully determines the state and the images.
A :class:`RenderSnapshot` carries what an image depends on to another world (the camera
render process, ``genpolicy_ros.sim.render_process``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import pybullet as pb
import pybullet_data
from scipy.spatial.transform import Rotation

from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.task import PushEpisodeSpec, PushTask

PANDA_URDF = 'franka_panda/panda.urdf'


@dataclasses.dataclass(frozen=True)
class CameraIntrinsics:
    """sensor_msgs/CameraInfo-style intrinsics of the simulated camera (pinhole, no distortion).

    ``k`` is the 3x3 matrix, ``p`` the 3x4 projection, ``d`` the plumb_bob distortion
    coefficients (zeros). Pixel centres are at integer coordinates, as in ROS.
    """

    width: int
    height: int
    k: np.ndarray
    d: np.ndarray
    p: np.ndarray
    distortion_model: str
    frame_id: str


def intrinsics_from_projection(projection: Sequence[float], width: int, height: int,
                               frame_id: str) -> CameraIntrinsics:
    """Derive pinhole intrinsics from an OpenGL projection matrix (PyBullet column-major list).

    NDC x in [-1, 1] spans pixel edges 0..width, so ``fx = P00 * width / 2`` and the principal
    point sits half a pixel before the image centre in ROS's pixel-centre convention.
    """
    m = np.asarray(projection, dtype=float).reshape(4, 4, order='F')
    fx = m[0, 0] * width / 2.0
    fy = m[1, 1] * height / 2.0
    cx = (1.0 - m[0, 2]) * width / 2.0 - 0.5
    cy = (1.0 + m[1, 2]) * height / 2.0 - 0.5
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    p = np.hstack([k, np.zeros((3, 1))])
    return CameraIntrinsics(width, height, k, np.zeros(5), p, 'plumb_bob', frame_id)


@dataclasses.dataclass(frozen=True)
class RenderSnapshot:
    """Everything that determines a camera image of a :class:`PandaWorld` (small, picklable).

    Taken by :meth:`PandaWorld.render_snapshot`, applied to another world (same ``SimConfig``)
    by :meth:`PandaWorld.apply_render_snapshot`, after which its :meth:`PandaWorld.render` gives
    the same image. The table, the robot's looks and the projection come from the config.
    """

    arm_q: Tuple[float, ...]          # 7 arm joint positions [rad]
    finger_q: Tuple[float, ...]       # the 2 finger joint positions [m]
    cube_pose: Tuple[float, ...]      # [x, y, z, qx, qy, qz, qw]
    cube_size: float                  # edge length [m]
    cube_rgba: Tuple[float, ...]
    goal_xy: Tuple[float, ...]
    eye: Tuple[float, ...]            # camera position, view target and up vector (world frame)
    target: Tuple[float, ...]
    up: Tuple[float, ...]
    light: Tuple[Tuple[str, object], ...]  # getCameraImage light keyword arguments


class PandaWorld:
    """Franka Panda push scene in PyBullet (DIRECT by default, GUI on request).

    Joint commands: :meth:`set_joint_targets` (position + velocity targets, Franka velocity and
    effort limits) or :meth:`set_joint_velocities` (pure velocity mode). :meth:`step` advances
    the physics by whole time steps of ``1 / physics_hz`` seconds.
    """

    def __init__(self, config: Optional[SimConfig] = None, gui: Optional[bool] = None,
                 physics_hz: Optional[float] = None) -> None:
        self.config = config if config is not None else SimConfig.load()
        self.gui = self.config.gui if gui is None else bool(gui)
        self.physics_hz = float(physics_hz if physics_hz is not None else self.config.physics_hz)
        if self.physics_hz <= 0.0:
            raise ValueError(f'physics_hz must be > 0, got {self.physics_hz}')
        self.dt = 1.0 / self.physics_hz
        self.task = PushTask(self.config.task)
        arm = self.config.arm
        self.joint_names = list(arm.joint_names)
        self.home_q = np.asarray(arm.home_q_rad, dtype=float)
        self.velocity_limits = np.asarray(arm.velocity_limits_radps, dtype=float)
        self.effort_limits = np.asarray(arm.effort_limits_nm, dtype=float)
        cam = self.config.camera
        # Appearance and camera are world properties that survive resets (OOD hooks).
        self._cube_size = self.config.cube.size_m
        self._cube_rgba = list(self.config.cube.rgba)
        self._light = dict(lightDirection=list(cam.light_direction),
                           lightColor=list(cam.light_color_rgb),
                           lightAmbientCoeff=cam.light_ambient,
                           lightDiffuseCoeff=cam.light_diffuse,
                           lightSpecularCoeff=cam.light_specular,
                           shadow=int(cam.shadows))
        self._projection = pb.computeProjectionMatrixFOV(
            cam.fov_deg, cam.width_px / cam.height_px, cam.near_m, cam.far_m)
        if not 0.0 < float(cam.render_scale) <= 1.0:
            raise ValueError(f'camera.render_scale must be in (0, 1], got {cam.render_scale}')
        # (width, height) TinyRenderer draws; render() enlarges it to the camera's size.
        self._render_size = (max(1, int(round(cam.width_px * cam.render_scale))),
                             max(1, int(round(cam.height_px * cam.render_scale))))
        self.set_camera_pose(cam.eye_m, cam.target_m, cam.up)
        self.client = pb.connect(pb.GUI if self.gui else pb.DIRECT)
        if self.client < 0:
            raise RuntimeError('could not connect to PyBullet')
        self.spec: Optional[PushEpisodeSpec] = None
        self.goal_xy = np.zeros(2)
        self.sim_time = 0.0
        self._build()

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        """(Re)create the whole scene; called on construction and on every reset."""
        c = self.client
        pb.resetSimulation(physicsClientId=c)
        pb.setPhysicsEngineParameter(fixedTimeStep=self.dt,
                                     numSolverIterations=self.config.solver_iterations,
                                     deterministicOverlappingPairs=1, physicsClientId=c)
        pb.setGravity(0.0, 0.0, self.config.gravity_mps2, physicsClientId=c)
        pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        tab = self.config.table
        half = np.asarray(tab.size_m) / 2.0
        self.table_id = pb.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=pb.createCollisionShape(
                pb.GEOM_BOX, halfExtents=half.tolist(), physicsClientId=c),
            baseVisualShapeIndex=pb.createVisualShape(
                pb.GEOM_BOX, halfExtents=half.tolist(), rgbaColor=tab.rgba, physicsClientId=c),
            basePosition=[tab.center_xy_m[0], tab.center_xy_m[1], -half[2]], physicsClientId=c)
        pb.changeDynamics(self.table_id, -1, lateralFriction=tab.lateral_friction,
                          physicsClientId=c)
        self.robot_id = pb.loadURDF(PANDA_URDF, [0.0, 0.0, 0.0], useFixedBase=True,
                                    flags=pb.URDF_ENABLE_CACHED_GRAPHICS_SHAPES,
                                    physicsClientId=c)
        self._index_joints()
        goal = self.config.goal_marker
        self.goal_id = pb.createMultiBody(
            baseMass=0.0, baseCollisionShapeIndex=-1,
            baseVisualShapeIndex=pb.createVisualShape(
                pb.GEOM_CYLINDER, radius=goal.radius_m, length=0.002, rgbaColor=goal.rgba,
                physicsClientId=c),
            basePosition=[self.goal_xy[0], self.goal_xy[1], 0.001], physicsClientId=c)
        self._create_cube([0.5, 0.0, self._cube_size / 2.0], [0.0, 0.0, 0.0, 1.0])
        self.set_arm_configuration(self.home_q)
        self.sim_time = 0.0

    def _index_joints(self) -> None:
        arm = self.config.arm
        by_name = {}
        links = {}
        for j in range(pb.getNumJoints(self.robot_id, physicsClientId=self.client)):
            info = pb.getJointInfo(self.robot_id, j, physicsClientId=self.client)
            by_name[info[1].decode()] = j
            links[info[12].decode()] = j
        self.arm_joints = [by_name[n] for n in arm.joint_names]
        self.finger_joints = [by_name[n] for n in arm.finger_joint_names]
        # Movable joints in PyBullet's IK ordering (arm first, then fingers in this URDF).
        self.movable_joints = sorted(self.arm_joints + self.finger_joints)
        for name in (arm.tcp_link, 'panda_hand'):
            if name in links:
                self.tcp_link = links[name]
                break
        else:
            self.tcp_link = self.arm_joints[-1]

    def _create_cube(self, position: Sequence[float], orientation: Sequence[float]) -> None:
        c = self.client
        cube = self.config.cube
        half = [self._cube_size / 2.0] * 3
        self.cube_id = pb.createMultiBody(
            baseMass=cube.mass_kg,
            baseCollisionShapeIndex=pb.createCollisionShape(
                pb.GEOM_BOX, halfExtents=half, physicsClientId=c),
            baseVisualShapeIndex=pb.createVisualShape(
                pb.GEOM_BOX, halfExtents=half, rgbaColor=self._cube_rgba, physicsClientId=c),
            basePosition=list(position), baseOrientation=list(orientation), physicsClientId=c)
        pb.changeDynamics(self.cube_id, -1, lateralFriction=cube.lateral_friction,
                          spinningFriction=cube.spinning_friction,
                          rollingFriction=cube.rolling_friction, physicsClientId=c)

    # ------------------------------------------------------------------ reset
    def reset(self, seed: Optional[int] = None,
              spec: Optional[PushEpisodeSpec] = None) -> PushEpisodeSpec:
        """Rebuild the scene for task ``seed`` (or an explicit ``spec``) and return the spec.

        The arm starts with the TCP at the push height above the sampled start point, pointing
        down, gripper closed; the cube rests on the table; simulated time restarts at 0.
        """
        if spec is None:
            spec = self.task.sample(0 if seed is None else seed)
        self.spec = spec
        self.goal_xy = np.asarray(spec.goal_xy, dtype=float).copy()
        self._build()
        quat = pb.getQuaternionFromEuler([0.0, 0.0, spec.cube_yaw])
        pb.resetBasePositionAndOrientation(
            self.cube_id, [spec.cube_xy[0], spec.cube_xy[1], self._cube_size / 2.0], quat,
            physicsClientId=self.client)
        start = np.array([spec.ee_start_xy[0], spec.ee_start_xy[1], self.task.tcp_push_z])
        self.set_arm_configuration(self.solve_ik(start, self.home_q))
        return spec

    def set_arm_configuration(self, q: np.ndarray, gripper_width: float = 0.0) -> None:
        """Teleport the arm to ``q`` at rest and hold it there (no physics step)."""
        q = np.asarray(q, dtype=float)
        for j, qi in zip(self.arm_joints, q):
            pb.resetJointState(self.robot_id, j, float(qi), 0.0, physicsClientId=self.client)
        for j in self.finger_joints:
            pb.resetJointState(self.robot_id, j, gripper_width / 2.0, 0.0,
                               physicsClientId=self.client)
        self.set_joint_targets(q, np.zeros(7))
        self.set_gripper(gripper_width)

    def solve_ik(self, position: np.ndarray, q_seed: np.ndarray, iterations: int = 20,
                 tolerance_m: float = 1e-4) -> np.ndarray:
        """Return joints putting the TCP at ``position`` pointing down (used for start poses).

        Iterates PyBullet's IK from ``q_seed`` with the arm teleported each round, because one
        call only linearises around the current state. Leaves the arm at the returned ``q``.
        """
        c = self.client
        orn = pb.getQuaternionFromEuler(self.config.ik.orientation_rpy_rad)
        lower, upper, ranges = self._limits()
        rest = list(self.home_q) + [0.0, 0.0]
        q = np.asarray(q_seed, dtype=float)
        first = True
        for _ in range(iterations):
            for j, qi in zip(self.arm_joints, q):
                pb.resetJointState(self.robot_id, j, float(qi), 0.0, physicsClientId=c)
            pos = np.asarray(pb.getLinkState(self.robot_id, self.tcp_link,
                                             computeForwardKinematics=True,
                                             physicsClientId=c)[4])
            if np.linalg.norm(pos - position) < tolerance_m:
                break
            # Null-space IK (toward home) first, then plain damped least squares to remove
            # the millimetres the null-space variant leaves.
            null_space = dict(lowerLimits=lower, upperLimits=upper, jointRanges=ranges,
                              restPoses=rest) if first else {}
            first = False
            sol = pb.calculateInverseKinematics(
                self.robot_id, self.tcp_link, list(position), orn, maxNumIterations=100,
                residualThreshold=1e-5, physicsClientId=c, **null_space)
            q = np.asarray(sol[:7])
        return q

    def _limits(self) -> Tuple[list, list, list]:
        lower, upper = [], []
        for j in self.movable_joints:
            info = pb.getJointInfo(self.robot_id, j, physicsClientId=self.client)
            lower.append(info[8])
            upper.append(info[9])
        ranges = [u - lo for lo, u in zip(lower, upper)]
        return lower, upper, ranges

    # ------------------------------------------------------------------ commands
    def set_joint_targets(self, q: np.ndarray, dq: np.ndarray) -> None:
        """Track joint position ``q`` [rad] with velocity feed-forward ``dq`` [rad/s].

        PyBullet's POSITION_CONTROL motor with the Panda's per-joint velocity limit
        (``maxVelocity``) and effort limit (``force``).
        """
        arm = self.config.arm
        dq = np.clip(dq, -self.velocity_limits, self.velocity_limits)
        for i, j in enumerate(self.arm_joints):
            pb.setJointMotorControl2(
                self.robot_id, j, pb.POSITION_CONTROL, targetPosition=float(q[i]),
                targetVelocity=float(dq[i]), force=float(self.effort_limits[i]),
                maxVelocity=float(self.velocity_limits[i]), positionGain=arm.position_gain,
                velocityGain=arm.velocity_gain, physicsClientId=self.client)

    def set_joint_velocities(self, dq: np.ndarray) -> None:
        """Pure velocity mode: track ``dq`` [rad/s] (clipped to limits) within effort limits."""
        dq = np.clip(np.asarray(dq, dtype=float), -self.velocity_limits, self.velocity_limits)
        pb.setJointMotorControlArray(
            self.robot_id, self.arm_joints, pb.VELOCITY_CONTROL, targetVelocities=dq.tolist(),
            forces=self.effort_limits.tolist(), physicsClientId=self.client)

    def set_gripper(self, width_m: float) -> None:
        """Command the finger opening [m] (0 = closed, the pushing configuration)."""
        width = float(np.clip(width_m, 0.0, self.config.arm.finger_max_width_m))
        pb.setJointMotorControlArray(
            self.robot_id, self.finger_joints, pb.POSITION_CONTROL,
            targetPositions=[width / 2.0] * 2,
            forces=[self.config.arm.finger_force_n] * 2, physicsClientId=self.client)

    def open_gripper(self) -> None:
        """Open the fingers fully."""
        self.set_gripper(self.config.arm.finger_max_width_m)

    def close_gripper(self) -> None:
        """Close the fingers."""
        self.set_gripper(0.0)

    def step(self, n: int = 1) -> None:
        """Advance the physics by ``n`` time steps of ``1 / physics_hz`` seconds."""
        for _ in range(int(n)):
            pb.stepSimulation(physicsClientId=self.client)
        self.sim_time += int(n) * self.dt

    # ------------------------------------------------------------------ state
    def joint_state(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return arm ``(q [rad], dq [rad/s], tau [Nm])``, each (7,)."""
        states = pb.getJointStates(self.robot_id, self.arm_joints, physicsClientId=self.client)
        q = np.array([s[0] for s in states])
        dq = np.array([s[1] for s in states])
        tau = np.array([s[3] for s in states])
        return q, dq, tau

    def gripper_width(self) -> float:
        """Return the current finger opening [m]."""
        states = pb.getJointStates(self.robot_id, self.finger_joints, physicsClientId=self.client)
        return float(sum(s[0] for s in states))

    def ee_pose(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return the TCP ``(position (3,) [m], quaternion (4,) xyzw)`` in the world frame."""
        s = pb.getLinkState(self.robot_id, self.tcp_link, computeForwardKinematics=True,
                            physicsClientId=self.client)
        return np.asarray(s[4]), np.asarray(s[5])

    def cube_pose(self) -> np.ndarray:
        """Return the cube pose ``[x, y, z, qx, qy, qz, qw]``."""
        pos, orn = pb.getBasePositionAndOrientation(self.cube_id, physicsClientId=self.client)
        return np.array(list(pos) + list(orn))

    def set_goal(self, goal_xy: Sequence[float]) -> None:
        """Move the goal disc to ``goal_xy`` [m]."""
        self.goal_xy = np.asarray(goal_xy, dtype=float)[:2].copy()
        pb.resetBasePositionAndOrientation(
            self.goal_id, [self.goal_xy[0], self.goal_xy[1], 0.001], [0.0, 0.0, 0.0, 1.0],
            physicsClientId=self.client)

    def fingertip_min_z(self) -> float:
        """Return the lowest point of the finger collision boxes [m] (for height checks)."""
        return float(min(pb.getAABB(self.robot_id, j, physicsClientId=self.client)[0][2]
                         for j in self.finger_joints))

    # ------------------------------------------------------------------ camera and looks
    def set_camera_pose(self, eye: Sequence[float], target: Sequence[float],
                        up: Sequence[float] = (0.0, 0.0, 1.0)) -> None:
        """Place the camera at ``eye`` looking at ``target`` (world frame, metres)."""
        self._eye = np.asarray(eye, dtype=float)
        self._target = np.asarray(target, dtype=float)
        self._up = np.asarray(up, dtype=float)
        self._view = pb.computeViewMatrix(self._eye.tolist(), self._target.tolist(),
                                          self._up.tolist())

    def camera_pose(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return the optical frame pose ``(position, quaternion xyzw)`` in the world.

        Optical convention: z along the view direction, x to the image right, y image down.
        """
        z = self._target - self._eye
        z /= np.linalg.norm(z)
        x = np.cross(z, self._up)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        quat = Rotation.from_matrix(np.column_stack([x, y, z])).as_quat()
        return self._eye.copy(), quat

    def camera_info(self) -> CameraIntrinsics:
        """Return the intrinsics derived from the projection matrix."""
        cam = self.config.camera
        return intrinsics_from_projection(self._projection, cam.width_px, cam.height_px,
                                          cam.frame_id)

    def set_light(self, direction: Optional[Sequence[float]] = None,
                  color_rgb: Optional[Sequence[float]] = None,
                  ambient: Optional[float] = None, diffuse: Optional[float] = None,
                  specular: Optional[float] = None, shadows: Optional[bool] = None) -> None:
        """Change the TinyRenderer lighting; arguments left ``None`` keep their value."""
        if direction is not None:
            self._light['lightDirection'] = [float(v) for v in direction]
        if color_rgb is not None:
            self._light['lightColor'] = [float(v) for v in color_rgb]
        for key, value in (('lightAmbientCoeff', ambient), ('lightDiffuseCoeff', diffuse),
                           ('lightSpecularCoeff', specular)):
            if value is not None:
                self._light[key] = float(value)
        if shadows is not None:
            self._light['shadow'] = int(shadows)

    def set_cube_color(self, rgba: Sequence[float]) -> None:
        """Recolour the cube (kept across resets)."""
        self._cube_rgba = [float(v) for v in rgba]
        pb.changeVisualShape(self.cube_id, -1, rgbaColor=self._cube_rgba,
                             physicsClientId=self.client)

    def set_cube_size(self, size_m: float) -> None:
        """Replace the cube by one of edge ``size_m`` at the same xy and yaw (kept on reset)."""
        if size_m <= 0.0:
            raise ValueError(f'cube size must be > 0 m, got {size_m}')
        pose = self.cube_pose()
        pb.removeBody(self.cube_id, physicsClientId=self.client)
        self._cube_size = float(size_m)
        self._create_cube([pose[0], pose[1], self._cube_size / 2.0], pose[3:])

    @property
    def cube_size(self) -> float:
        """Current cube edge length [m]."""
        return self._cube_size

    def render_snapshot(self) -> RenderSnapshot:
        """Capture the state the camera image depends on (cheap: no rendering)."""
        states = pb.getJointStates(self.robot_id, self.arm_joints + self.finger_joints,
                                   physicsClientId=self.client)
        q = tuple(float(s[0]) for s in states)
        n = len(self.arm_joints)
        light = tuple((key, tuple(value) if isinstance(value, list) else value)
                      for key, value in self._light.items())
        return RenderSnapshot(
            arm_q=q[:n], finger_q=q[n:], cube_pose=tuple(float(v) for v in self.cube_pose()),
            cube_size=float(self._cube_size), cube_rgba=tuple(self._cube_rgba),
            goal_xy=tuple(float(v) for v in self.goal_xy), eye=tuple(self._eye.tolist()),
            target=tuple(self._target.tolist()), up=tuple(self._up.tolist()), light=light)

    def apply_render_snapshot(self, snapshot: RenderSnapshot) -> None:
        """Make this world look like the one ``snapshot`` was taken from (teleports, no step).

        Meant for a render-only world: joints are reset at rest and motor targets untouched.
        """
        c = self.client
        joints = self.arm_joints + self.finger_joints
        for j, qi in zip(joints, snapshot.arm_q + snapshot.finger_q):
            pb.resetJointState(self.robot_id, j, float(qi), 0.0, physicsClientId=c)
        pos, orn = list(snapshot.cube_pose[:3]), list(snapshot.cube_pose[3:])
        self._cube_rgba = [float(v) for v in snapshot.cube_rgba]
        if snapshot.cube_size != self._cube_size:
            pb.removeBody(self.cube_id, physicsClientId=c)
            self._cube_size = float(snapshot.cube_size)
            self._create_cube(pos, orn)
        else:
            pb.resetBasePositionAndOrientation(self.cube_id, pos, orn, physicsClientId=c)
            pb.changeVisualShape(self.cube_id, -1, rgbaColor=self._cube_rgba, physicsClientId=c)
        self.set_goal(snapshot.goal_xy)
        self.set_camera_pose(snapshot.eye, snapshot.target, snapshot.up)
        self._light = {key: list(value) if isinstance(value, tuple) else value
                       for key, value in snapshot.light}

    def render(self) -> np.ndarray:
        """Render the fixed camera with TinyRenderer; returns (height, width, 3) uint8 RGB.

        With ``camera.render_scale`` < 1 the image is rendered at that fraction of the size
        (same field of view) and enlarged by repeating pixels: TinyRenderer's time grows with
        the pixel count (here ~18 ms at 96x96, ~70 ms at 640x480), and nearest-neighbour
        enlargement invents no colours the renderer did not draw.
        """
        cam = self.config.camera
        width, height = self._render_size
        _, _, rgba, _, _ = pb.getCameraImage(
            width, height, self._view, self._projection,
            renderer=pb.ER_TINY_RENDERER, flags=pb.ER_NO_SEGMENTATION_MASK,
            physicsClientId=self.client, **self._light)
        rgb = np.ascontiguousarray(
            np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3])
        if (height, width) != (cam.height_px, cam.width_px):
            import cv2  # only an enlarged render needs OpenCV
            rgb = cv2.resize(rgb, (cam.width_px, cam.height_px),
                             interpolation=cv2.INTER_NEAREST)
        return rgb

    def close(self) -> None:
        """Disconnect from PyBullet (idempotent)."""
        if self.client is not None and self.client >= 0:
            try:
                pb.disconnect(physicsClientId=self.client)
            except pb.error:
                pass
            self.client = -1
