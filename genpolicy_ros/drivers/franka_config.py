"""Settings of the Franka backend, read from ``config/driver.yaml`` (``franka:`` block).

The dataclasses have no defaults: the YAML is the one definition of every value. Everything here
is plain data (picklable), so the same object configures the 1 kHz control process.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from genpolicy_ros.config_io import build_config, read_ros_parameters

CONFIG_FILE = 'driver.yaml'
NODE_NAME = 'driver_node'
N_JOINTS = 7


class _FromDict:
    @classmethod
    def from_dict(cls, params: Dict[str, Any]):
        """Build from a nested parameter dict; unknown or missing keys raise ValueError."""
        return build_config(cls, params)


@dataclasses.dataclass(frozen=True)
class ConnectionConfig(_FromDict):
    """Connection handling of the control process."""

    reconnect_period_s: float
    request_timeout_s: float
    state_timeout_s: float
    startup_timeout_s: float


@dataclasses.dataclass(frozen=True)
class CollisionConfig(_FromDict):
    """``Robot.set_collision_behavior`` thresholds (torques [Nm], forces [N, Nm])."""

    lower_torque_thresholds_nm: List[float]
    upper_torque_thresholds_nm: List[float]
    lower_force_thresholds: List[float]
    upper_force_thresholds: List[float]


@dataclasses.dataclass(frozen=True)
class ImpedanceConfig(_FromDict):
    """Stiffness of the robot's internal joint / Cartesian impedance controller."""

    joint_nm_per_rad: List[float]
    cartesian: List[float]


@dataclasses.dataclass(frozen=True)
class FciLimits(_FromDict):
    """Joint motion-generator limits enforced before a command reaches libfranka."""

    position_lower_rad: List[float]
    position_upper_rad: List[float]
    velocity_radps: List[float]
    acceleration_radps2: List[float]
    jerk_radps3: List[float]
    velocity_offset_radps: List[float]
    deceleration_radps2: List[float]

    def array(self, name: str) -> np.ndarray:
        """Return field ``name`` as a float array of shape (7,)."""
        return np.asarray(getattr(self, name), dtype=float)


@dataclasses.dataclass(frozen=True)
class MotionConfig(_FromDict):
    """How commands at ROS rate become a 1 kHz set-point (see ``drivers/motion.py``)."""

    command_period_s: float
    command_timeout_s: float
    max_extrapolation_s: float
    position_gain_per_s: float
    max_correction_radps: float
    velocity_gain_per_s: float
    limit_scale: float
    position_margin_rad: float
    max_target_distance_rad: float
    limit_rate: bool
    lowpass_cutoff_hz: float
    interpolate: bool


@dataclasses.dataclass(frozen=True)
class GripperConfig(_FromDict):
    """Franka Hand settings (``pylibfranka.Gripper``)."""

    enabled: bool
    speed_mps: float
    force_n: float
    epsilon_inner_m: float
    epsilon_outer_m: float
    state_rate_hz: float


@dataclasses.dataclass(frozen=True)
class FrankaConfig(_FromDict):
    """Everything the Franka backend needs; ``FrankaConfig.load()`` reads the YAML."""

    robot_ip: str
    realtime_config: str
    control_mode: str
    controller_mode: str
    joint_names: List[str]
    finger_joint_names: List[str]
    base_frame: str
    control_process_rt_priority: int
    control_process_nice: int
    connection: ConnectionConfig
    collision: CollisionConfig
    impedance: ImpedanceConfig
    limits: FciLimits
    motion: MotionConfig
    gripper: GripperConfig

    def __post_init__(self) -> None:
        checks = [
            (self.realtime_config in ('enforce', 'ignore'),
             f'realtime_config must be enforce or ignore, got {self.realtime_config!r}'),
            (self.control_mode in ('position', 'velocity'),
             f'control_mode must be position or velocity, got {self.control_mode!r}'),
            (self.controller_mode in ('joint_impedance', 'cartesian_impedance'),
             f'controller_mode must be joint_impedance or cartesian_impedance, '
             f'got {self.controller_mode!r}'),
            (len(self.joint_names) == N_JOINTS, f'joint_names must name {N_JOINTS} joints'),
            (len(self.finger_joint_names) == 2, 'finger_joint_names must name 2 joints'),
            (0.0 < self.motion.limit_scale <= 1.0, 'motion.limit_scale must be in (0, 1]'),
            (self.motion.command_period_s > 0.0 and self.motion.command_timeout_s > 0.0,
             'motion.command_period_s and command_timeout_s must be > 0'),
            (self.motion.lowpass_cutoff_hz > 0.0, 'motion.lowpass_cutoff_hz must be > 0'),
        ]
        for name in ('position_lower_rad', 'position_upper_rad', 'velocity_radps',
                     'acceleration_radps2', 'jerk_radps3', 'velocity_offset_radps',
                     'deceleration_radps2'):
            checks.append((len(getattr(self.limits, name)) == N_JOINTS,
                           f'limits.{name} must have {N_JOINTS} values'))
        for name in ('velocity_radps', 'acceleration_radps2', 'jerk_radps3',
                     'deceleration_radps2'):
            checks.append((bool(np.all(self.limits.array(name) > 0.0)),
                           f'limits.{name} must be > 0'))
        checks.append((bool(np.all(self.limits.array('position_lower_rad')
                                   < self.limits.array('position_upper_rad'))),
                       'limits.position_lower_rad must be below position_upper_rad'))
        for ok, message in checks:
            if not ok:
                raise ValueError(f'franka config: {message}')

    @classmethod
    def load(cls, path: Optional[Union[str, Path]] = None) -> 'FrankaConfig':
        """Read the ``franka:`` block of ``config/driver.yaml`` (or ``path``)."""
        return cls.from_dict(read_ros_parameters(CONFIG_FILE, NODE_NAME, path)['franka'])

    def replace(self, **changes: Any) -> 'FrankaConfig':
        """Return a copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)

    def with_motion(self, **changes: Any) -> 'FrankaConfig':
        """Return a copy with ``motion`` fields replaced."""
        return dataclasses.replace(self, motion=dataclasses.replace(self.motion, **changes))
