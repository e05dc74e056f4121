"""EE position target -> joint command through PyBullet's inverse kinematics.

The plain controller used to record demonstrations and for ``--no-filter`` runs. The CBF safety
filter implements the same two methods, so episode code can use either:

``reset(state: ArmState) -> None`` and
``command(state: ArmState, ee_target: np.ndarray (3,)) -> (q_cmd (7,), dq_cmd (7,))``.

It keeps its own kinematic PyBullet copy of the Panda (no physics), so it works unchanged with
the real arm's backend.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pybullet as pb
import pybullet_data

from genpolicy_ros.drivers.backend import ArmState
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PANDA_URDF


class IKController:
    """Cartesian set-point tracker with a fixed down-pointing TCP orientation.

    Between calls the set-point moves toward the target at no more than ``max_speed_mps`` and
    never leads the measured TCP by more than ``max_setpoint_lead_m`` (so a blocked arm does not
    wind up). IK uses the Panda's joint limits and a null space pulling toward home.
    """

    def __init__(self, config: Optional[SimConfig] = None,
                 control_hz: Optional[float] = None) -> None:
        self.config = config if config is not None else SimConfig.load()
        self.control_hz = float(control_hz if control_hz is not None else self.config.control_hz)
        self.dt = 1.0 / self.control_hz
        ik = self.config.ik
        self.orientation = pb.getQuaternionFromEuler(ik.orientation_rpy_rad)
        self.velocity_limits = np.asarray(self.config.arm.velocity_limits_radps, dtype=float)
        self.client = pb.connect(pb.DIRECT)
        pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self.client)
        self.robot_id = pb.loadURDF(PANDA_URDF, useFixedBase=True, physicsClientId=self.client)
        names = {}
        movable = []
        for j in range(pb.getNumJoints(self.robot_id, physicsClientId=self.client)):
            info = pb.getJointInfo(self.robot_id, j, physicsClientId=self.client)
            names[info[1].decode()] = j
            if info[12].decode() == self.config.arm.tcp_link:
                self.tcp_link = j
            if info[2] != pb.JOINT_FIXED:
                movable.append(info)
        self.arm_joints = [names[n] for n in self.config.arm.joint_names]
        self.lower = [info[8] for info in movable]
        self.upper = [info[9] for info in movable]
        self.ranges = [u - lo for lo, u in zip(self.lower, self.upper)]
        self.rest = list(self.config.arm.home_q_rad) + [0.0] * (len(movable) - 7)
        self.setpoint: Optional[np.ndarray] = None
        self._q_prev: Optional[np.ndarray] = None

    def forward(self, q: np.ndarray) -> np.ndarray:
        """Return the TCP position [m] for joints ``q`` (also loads ``q`` into the copy)."""
        for j, qi in zip(self.arm_joints, q):
            pb.resetJointState(self.robot_id, j, float(qi), 0.0, physicsClientId=self.client)
        return np.asarray(pb.getLinkState(self.robot_id, self.tcp_link,
                                          computeForwardKinematics=True,
                                          physicsClientId=self.client)[4])

    def reset(self, state: ArmState) -> None:
        """Start tracking from the measured TCP position of ``state``."""
        self.setpoint = self.forward(state.q)
        self._q_prev = np.asarray(state.q, dtype=float).copy()

    def command(self, state: ArmState, ee_target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``(q_cmd, dq_cmd)`` moving the TCP toward ``ee_target`` (3,) [m].

        Raises ValueError for a non-finite or wrongly shaped target.
        """
        target = np.asarray(ee_target, dtype=float)
        if target.shape != (3,) or not np.all(np.isfinite(target)):
            raise ValueError(f'ee_target must be a finite (3,) array, got {ee_target!r}')
        if self.setpoint is None:
            self.reset(state)
        ik = self.config.ik
        tcp = self.forward(state.q)
        step = target - self.setpoint
        max_step = ik.max_speed_mps * self.dt
        norm = np.linalg.norm(step)
        if norm > max_step:
            step *= max_step / norm
        setpoint = self.setpoint + step
        lead = setpoint - tcp
        lead_norm = np.linalg.norm(lead)
        if lead_norm > ik.max_setpoint_lead_m:
            setpoint = tcp + lead * (ik.max_setpoint_lead_m / lead_norm)
        self.setpoint = setpoint
        # Seed the IK with the previous command, not the measured joints: successive answers
        # then form a smooth joint path and the velocity feed-forward does not amplify jitter.
        self.forward(self._q_prev)
        sol = pb.calculateInverseKinematics(
            self.robot_id, self.tcp_link, setpoint.tolist(), self.orientation,
            lowerLimits=self.lower, upperLimits=self.upper, jointRanges=self.ranges,
            restPoses=self.rest, maxNumIterations=ik.max_iterations,
            residualThreshold=ik.residual_threshold_m, physicsClientId=self.client)
        q_cmd = np.asarray(sol[:7], dtype=float)
        # PyBullet's null-space IK trades millimetres of TCP accuracy for the rest pose; plain
        # damped least squares started at that answer removes the error with a minimal change.
        for _ in range(ik.refine_rounds):
            if np.linalg.norm(self.forward(q_cmd) - setpoint) < ik.residual_threshold_m:
                break
            sol = pb.calculateInverseKinematics(
                self.robot_id, self.tcp_link, setpoint.tolist(), self.orientation,
                maxNumIterations=ik.max_iterations, residualThreshold=ik.residual_threshold_m,
                physicsClientId=self.client)
            q_cmd = np.asarray(sol[:7], dtype=float)
        # Bound the joint step by the Panda's velocity limits, scaling all joints together so
        # the TCP keeps its path (per-joint clipping bends it, e.g. into the table near full
        # reach); the velocity feed-forward is that step over the control period.
        delta = q_cmd - self._q_prev
        scale = float(np.max(np.abs(delta) / (self.velocity_limits * self.dt)))
        if scale > 1.0:
            delta /= scale
            # The set-point could not be reached this tick; hold it where the arm will be.
            self.setpoint = self.forward(self._q_prev + delta)
        q_cmd = self._q_prev + delta
        dq_cmd = (q_cmd - self._q_prev) / self.dt
        self._q_prev = q_cmd
        return q_cmd, dq_cmd

    def close(self) -> None:
        """Disconnect the kinematic copy."""
        if self.client >= 0:
            pb.disconnect(physicsClientId=self.client)
            self.client = -1
