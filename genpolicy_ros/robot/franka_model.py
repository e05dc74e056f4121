"""Franka Panda kinematics, limits and collision spheres (Pinocchio on ``urdf/panda.urdf``).

The arm is the 7-D configuration ``q`` (``panda_joint1..7``); the finger joints are locked out of
the model, and the ``panda_hand`` collision spheres cover the fingers over their whole stroke.
Position, velocity and effort limits come from the URDF only; acceleration, jerk, the home
configuration and the collision spheres from ``urdf/panda_model.yaml`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pinocchio as pin
import yaml

from genpolicy_ros.paths import urdf_path

ARM_JOINTS = [f'panda_joint{i}' for i in range(1, 8)]
FINGER_JOINTS = ['panda_finger_joint1', 'panda_finger_joint2']
EE_FRAME = 'panda_tcp'
URDF_FILE = 'panda.urdf'
MODEL_YAML_FILE = 'panda_model.yaml'
YAML_ROOT = 'panda_model'


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits of the 7 arm joints, each an array of shape (7,)."""

    lower: np.ndarray  # rad
    upper: np.ndarray  # rad
    velocity: np.ndarray  # rad/s
    effort: np.ndarray  # Nm
    acceleration: np.ndarray  # rad/s^2
    jerk: np.ndarray  # rad/s^3


@dataclass
class Kinematics:
    """Everything a whole-arm safety filter needs, computed by one forward pass.

    The arrays are fresh for every call, so a caller may keep them.
    """

    ee_pos: np.ndarray  # (3,) world position of the TCP [m]
    ee_rot: np.ndarray  # (3, 3) world rotation of the TCP
    ee_jac: np.ndarray  # (6, 7) [linear; angular], world axes at the TCP (LOCAL_WORLD_ALIGNED)
    sphere_centers: np.ndarray  # (S, 3) world [m]
    sphere_jacs: np.ndarray  # (S, 3, 7) linear Jacobians of the sphere centres


@dataclass(frozen=True)
class PandaModelConfig:
    """Model data that URDF cannot express, as read from ``urdf/panda_model.yaml``."""

    acceleration_limits_radps2: np.ndarray  # (7,)
    jerk_limits_radps3: np.ndarray  # (7,)
    q_home_rad: np.ndarray  # (7,)
    sphere_links: tuple[str, ...]  # (S,) parent link of each sphere
    sphere_centers_m: np.ndarray  # (S, 3) in the parent link frame
    sphere_radii_m: np.ndarray  # (S,)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'PandaModelConfig':
        """Build from the mapping under the ``panda_model`` key; raise ValueError if malformed."""
        try:
            spheres = params['collision_spheres_m']
            acc = _vector(params['acceleration_limits_radps2'], 'acceleration_limits_radps2', 7)
            jerk = _vector(params['jerk_limits_radps3'], 'jerk_limits_radps3', 7)
            home = _vector(params['q_home_rad'], 'q_home_rad', 7)
            links = tuple(str(name) for name in spheres['links'])
            radii = _vector(spheres['radii'], 'collision_spheres_m.radii', len(links))
            centers = _vector(spheres['centers'], 'collision_spheres_m.centers', 3 * len(links))
        except KeyError as exc:
            raise ValueError(f'panda model config is missing the key {exc}') from exc
        if not links:
            raise ValueError('panda model config: collision_spheres_m.links is empty')
        if np.any(acc <= 0.0) or np.any(jerk <= 0.0):
            raise ValueError('panda model config: acceleration and jerk limits must be > 0')
        if np.any(radii <= 0.0):
            raise ValueError('panda model config: sphere radii must be > 0')
        return cls(acceleration_limits_radps2=acc, jerk_limits_radps3=jerk, q_home_rad=home,
                   sphere_links=links, sphere_centers_m=centers.reshape(-1, 3),
                   sphere_radii_m=radii)

    @classmethod
    def load(cls, path: str | Path | None = None) -> 'PandaModelConfig':
        """Read the YAML file (default: the package's ``urdf/panda_model.yaml``)."""
        path = Path(path) if path is not None else urdf_path(MODEL_YAML_FILE)
        with open(path, encoding='utf-8') as stream:
            data = yaml.safe_load(stream)
        if not isinstance(data, dict) or YAML_ROOT not in data:
            raise ValueError(f'{path}: expected a top-level "{YAML_ROOT}" mapping')
        return cls.from_dict(data[YAML_ROOT])


def _skew(v: np.ndarray) -> np.ndarray:
    """Return the 3x3 matrix of the cross product ``v x .``."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _vector(values: Sequence[float], name: str, size: int) -> np.ndarray:
    """Return ``values`` as a finite float array of length ``size`` or raise ValueError."""
    arr = np.asarray(values, dtype=float)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)):
        raise ValueError(f'{name}: expected {size} finite numbers, got shape {arr.shape}')
    return arr


class FrankaModel:
    """Kinematics of the 7-DoF Panda arm with its hand: TCP pose/Jacobian and collision spheres.

    Not thread-safe: one instance owns one Pinocchio ``Data`` that every call overwrites.
    """

    def __init__(self, urdf: str | Path | None = None,
                 model_yaml: str | Path | None = None) -> None:
        urdf = Path(urdf) if urdf is not None else urdf_path(URDF_FILE)
        if not urdf.is_file():
            raise FileNotFoundError(f'URDF not found: {urdf}')
        self.config = PandaModelConfig.load(model_yaml)

        full = pin.buildModelFromUrdf(str(urdf))
        missing = [n for n in ARM_JOINTS + FINGER_JOINTS if not full.existJointName(n)]
        if missing:
            raise ValueError(f'{urdf}: joints {missing} not found')
        # Lock the fingers (at 0 m: closed) so q is exactly the 7 arm joints.
        locked = [full.getJointId(n) for n in FINGER_JOINTS]
        self.model = pin.buildReducedModel(full, locked, pin.neutral(full))
        self.data = self.model.createData()
        self.joint_names: list[str] = [str(n) for n in self.model.names[1:]]
        if self.joint_names != ARM_JOINTS or self.model.nq != 7 or self.model.nv != 7:
            raise ValueError(f'{urdf}: expected arm joints {ARM_JOINTS}, got {self.joint_names}')
        self.nq: int = self.model.nq

        cfg = self.config
        self.limits = JointLimits(
            lower=np.array(self.model.lowerPositionLimit, dtype=float),
            upper=np.array(self.model.upperPositionLimit, dtype=float),
            velocity=np.array(self.model.velocityLimit, dtype=float),
            effort=np.array(self.model.effortLimit, dtype=float),
            acceleration=cfg.acceleration_limits_radps2.copy(),
            jerk=cfg.jerk_limits_radps3.copy())
        for arr in vars(self.limits).values():
            arr.setflags(write=False)
        if not np.all(self.limits.lower < self.limits.upper):
            raise ValueError(f'{urdf}: joint position limits are empty or missing')
        self.q_home = cfg.q_home_rad.copy()
        self.q_home.setflags(write=False)
        if np.any(self.q_home < self.limits.lower) or np.any(self.q_home > self.limits.upper):
            raise ValueError('q_home_rad lies outside the URDF joint limits')

        self.ee_frame: str = EE_FRAME
        self._ee_id = self._frame_id(EE_FRAME)

        # Spheres: re-express each centre in its parent *joint* frame once, so the hot path
        # only needs the joint placements and the world Jacobian data.J.
        self.sphere_links: list[str] = list(cfg.sphere_links)
        self.sphere_radii: np.ndarray = cfg.sphere_radii_m.copy()
        self.sphere_radii.setflags(write=False)
        joints, local = [], []
        for link, center in zip(self.sphere_links, cfg.sphere_centers_m):
            frame = self.model.frames[self._frame_id(link)]
            joints.append(frame.parentJoint)
            local.append(frame.placement.act(center))
        self._sphere_joint_list = sorted(set(joints))  # joint ids (1..7) carrying spheres
        self._sphere_slot = np.array([self._sphere_joint_list.index(j) for j in joints])
        self._sphere_local = np.array(local)  # (S, 3) in the parent joint frame
        # A sphere moves with joint k only if k supports its parent joint (k <= parent here).
        support = np.zeros((len(joints), self.nq))
        for s, j in enumerate(joints):
            for k in self.model.supports[j][1:]:
                support[s, self.model.joints[k].idx_v] = 1.0
        self._sphere_support = support[:, None, :]  # (S, 1, 7)
        self._placements = np.empty((len(self._sphere_joint_list), 4, 4))
        self._sphere_local_h = np.vstack([self._sphere_local.T, np.ones(len(joints))])  # (4, S)
        self._sphere_index = np.arange(len(joints))
        # w x p = -(p x w) = sum_c p_c (-E_c w) with E_c the cross-product generators, so all
        # sphere Jacobians are one matrix product with the angular Jacobian.
        self._neg_cross_gen = -np.array([_skew(e) for e in np.eye(3)])  # (3, 3, 3)
        self._oMi = self.data.oMi  # a view on data's placement vector, not a copy

    # ---------------------------------------------------------------- public API
    def kinematics(self, q: Sequence[float] | np.ndarray) -> Kinematics:
        """Return TCP pose and Jacobian plus sphere centres and Jacobians at ``q``."""
        q = self._check_q(q)
        model, data = self.model, self.data
        pin.computeJointJacobians(model, data, q)  # also runs forward kinematics
        pin.updateFramePlacement(model, data, self._ee_id)
        ee = data.oMf[self._ee_id]
        ee_jac = pin.getFrameJacobian(model, data, self._ee_id, pin.LOCAL_WORLD_ALIGNED)
        centers, jacs = self._spheres_from_data()
        return Kinematics(ee_pos=ee.translation.copy(), ee_rot=ee.rotation.copy(),
                          ee_jac=np.array(ee_jac), sphere_centers=centers, sphere_jacs=jacs)

    def ee_pose(self, q: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the TCP world position (3,) [m] and rotation (3, 3) at ``q``."""
        return self.frame_pose(q, self.ee_frame)

    def ee_jacobian(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Return the (6, 7) TCP Jacobian [linear; angular] in world axes at the TCP."""
        q = self._check_q(q)
        return np.array(pin.computeFrameJacobian(self.model, self.data, q, self._ee_id,
                                                 pin.LOCAL_WORLD_ALIGNED))

    def frame_pose(self, q: Sequence[float] | np.ndarray,
                   frame: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the world position (3,) [m] and rotation (3, 3) of any model frame at ``q``.

        Finger frames are reported with the fingers closed (the model locks them at 0 m).
        """
        frame_id = self._frame_id(frame)
        q = self._check_q(q)
        pin.forwardKinematics(self.model, self.data, q)
        placement = pin.updateFramePlacement(self.model, self.data, frame_id)
        return placement.translation.copy(), placement.rotation.copy()

    def sphere_centers(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Return the (S, 3) world centres [m] of the collision spheres at ``q``."""
        q = self._check_q(q)
        pin.forwardKinematics(self.model, self.data, q)
        return self._sphere_centers_from_data()

    def sphere_jacobians(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Return the (S, 3, 7) linear Jacobians of the sphere centres at ``q``."""
        q = self._check_q(q)
        pin.computeJointJacobians(self.model, self.data, q)
        return self._spheres_from_data()[1]

    def random_configuration(self, rng: np.random.Generator) -> np.ndarray:
        """Return a configuration drawn uniformly inside the joint position limits."""
        return rng.uniform(self.limits.lower, self.limits.upper)

    @property
    def frame_names(self) -> list[str]:
        """Names of all frames ``frame_pose`` accepts."""
        return [str(f.name) for f in self.model.frames]

    # ---------------------------------------------------------------- internals
    def _check_q(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Return ``q`` as a float array of shape (7,), or raise ValueError."""
        try:
            arr = np.asarray(q, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'q must be {self.nq} numbers: {exc}') from exc
        if arr.shape != (self.nq,):
            raise ValueError(f'q must have shape ({self.nq},), got {arr.shape}')
        if not np.all(np.isfinite(arr)):
            raise ValueError(f'q must be finite, got {arr.tolist()}')
        return arr

    def _frame_id(self, frame: str) -> int:
        """Return the id of a frame by name, or raise ValueError for an unknown name."""
        if not isinstance(frame, str) or not self.model.existFrame(frame):
            raise ValueError(f'unknown frame {frame!r}; known frames: {self.frame_names}')
        return self.model.getFrameId(frame)

    def _sphere_centers_from_data(self) -> np.ndarray:
        """World sphere centres (S, 3) from the joint placements in ``data``."""
        placements = self._placements
        for slot, joint in enumerate(self._sphere_joint_list):
            placements[slot] = self._oMi[joint].homogeneous
        # Map every sphere through every carrying joint (tiny), then keep each sphere's own.
        return (placements[:, :3] @ self._sphere_local_h)[self._sphere_slot, :, self._sphere_index]

    def _spheres_from_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Sphere centres and Jacobians from ``data`` after ``computeJointJacobians``."""
        centers = self._sphere_centers_from_data()
        # data.J is the WORLD Jacobian (spatial velocity at the world origin); the velocity of a
        # point p is v + w x p, restricted to the joints that support the point.
        world_jac = self.data.J
        cross_terms = (self._neg_cross_gen @ world_jac[3:]).reshape(3, -1)  # (3, 3 * 7)
        jacs = (centers @ cross_terms).reshape(-1, 3, self.nq)
        jacs += world_jac[:3]
        jacs *= self._sphere_support
        return centers, jacs
