"""Configuration of the simulated world, push task, expert and IK controller.

Every value comes from ``config/sim.yaml`` (``sim_node: ros__parameters: ...``); the dataclasses
below deliberately have no defaults so the YAML stays the single definition. Nested dataclasses
mirror nested YAML dicts (ROS flattens them to dotted names such as ``camera.width_px``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from genpolicy_ros.config_io import build_config, read_core_parameters

NODE_NAME = 'sim_node'
#: Scripted experts ``expert.kind`` may name (see genpolicy_ros.sim.expert.make_expert).
EXPERT_KINDS = ('modal', 'field')
CONFIG_FILE = 'sim.yaml'


class _FromDict:
    """Mixin giving dataclasses a validating ``from_dict``."""

    @classmethod
    def from_dict(cls, params: Dict[str, Any]):
        """Build the config from a (nested) parameter dict; raises ValueError on bad keys."""
        return build_config(cls, params)


@dataclasses.dataclass(frozen=True)
class CameraConfig(_FromDict):
    """Fixed RGB camera (TinyRenderer) and its lighting."""

    width_px: int
    height_px: int
    fov_deg: float
    near_m: float
    far_m: float
    eye_m: List[float]
    target_m: List[float]
    up: List[float]
    rate_hz: float
    frame_id: str
    light_direction: List[float]
    light_color_rgb: List[float]
    light_ambient: float
    light_diffuse: float
    light_specular: float
    shadows: bool
    render_scale: float


@dataclasses.dataclass(frozen=True)
class ArmConfig(_FromDict):
    """Panda joints, limits and PyBullet motor gains."""

    joint_names: List[str]
    finger_joint_names: List[str]
    tcp_link: str
    home_q_rad: List[float]
    velocity_limits_radps: List[float]
    effort_limits_nm: List[float]
    position_gain: float
    velocity_gain: float
    finger_force_n: float
    finger_max_width_m: float


@dataclasses.dataclass(frozen=True)
class TableConfig(_FromDict):
    """Static table box whose top face is z = 0."""

    size_m: List[float]
    center_xy_m: List[float]
    lateral_friction: float
    rgba: List[float]


@dataclasses.dataclass(frozen=True)
class CubeConfig(_FromDict):
    """The pushed cube."""

    size_m: float
    mass_kg: float
    lateral_friction: float
    spinning_friction: float
    rolling_friction: float
    rgba: List[float]


@dataclasses.dataclass(frozen=True)
class GoalMarkerConfig(_FromDict):
    """Visual-only goal disc."""

    radius_m: float
    rgba: List[float]


@dataclasses.dataclass(frozen=True)
class TaskConfig(_FromDict):
    """Push task sampling ranges, push height and success criterion."""

    push_height_m: float
    tcp_above_fingertips_m: float
    success_tolerance_m: float
    time_limit_s: float
    workspace_x_m: List[float]
    workspace_y_m: List[float]
    min_cube_goal_distance_m: float
    cube_yaw_range_rad: List[float]
    ee_start_xy_m: List[float]
    ee_start_jitter_m: float
    min_start_cube_distance_m: float
    max_sample_attempts: int

    @property
    def tcp_push_z_m(self) -> float:
        """TCP height that puts the fingertips at ``push_height_m``."""
        return self.push_height_m + self.tcp_above_fingertips_m


@dataclasses.dataclass(frozen=True)
class FieldExpertConfig(_FromDict):
    """Geometry of the memoryless push field (``expert.kind: field``)."""

    orbit_radius_m: float
    radial_band_m: float
    push_cone_deg: List[float]
    min_tangential: float


@dataclasses.dataclass(frozen=True)
class ExpertConfig(_FromDict):
    """Scripted push expert: which one, its geometry and hysteresis thresholds."""

    kind: str
    max_step_m: float
    prepush_offset_m: float
    lateral_clearance_m: float
    clearance_radius_m: float
    side_back_offset_m: float
    min_behind_m: float
    push_enter_tolerance_m: float
    push_exit_lateral_m: float
    push_exit_distance_m: float
    line_gain: float
    goal_overshoot_m: float
    field: FieldExpertConfig

    def __post_init__(self) -> None:
        if self.kind not in EXPERT_KINDS:
            raise ValueError(f'expert.kind must be one of {EXPERT_KINDS}, got {self.kind!r}')
        lo, hi = self.field.push_cone_deg
        if not 0.0 <= lo < hi <= 180.0:
            raise ValueError(f'expert.field.push_cone_deg must be [lo, hi] with 0 <= lo < hi '
                             f'<= 180, got {self.field.push_cone_deg}')


@dataclasses.dataclass(frozen=True)
class IKConfig(_FromDict):
    """PyBullet-IK controller settings."""

    max_speed_mps: float
    max_setpoint_lead_m: float
    max_iterations: int
    refine_rounds: int
    residual_threshold_m: float
    orientation_rpy_rad: List[float]


@dataclasses.dataclass(frozen=True)
class RecorderConfig(_FromDict):
    """Demonstration recorder settings."""

    noise_std_m: float


@dataclasses.dataclass(frozen=True)
class SimConfig(_FromDict):
    """Everything under ``sim_node.ros__parameters`` in ``config/sim.yaml``."""

    gui: bool
    physics_hz: float
    control_hz: float
    decision_hz: float
    joint_state_rate_hz: float
    command_timeout_s: float
    gravity_mps2: float
    solver_iterations: int
    camera: CameraConfig
    arm: ArmConfig
    table: TableConfig
    cube: CubeConfig
    goal_marker: GoalMarkerConfig
    task: TaskConfig
    expert: ExpertConfig
    ik: IKConfig
    recorder: RecorderConfig

    @classmethod
    def load(cls, path: Optional[Union[str, Path]] = None) -> 'SimConfig':
        """Read ``config/sim.yaml`` (or ``path``) and build the config."""
        return cls.from_dict(read_core_parameters(CONFIG_FILE, NODE_NAME, path))

    def replace(self, **changes: Any) -> 'SimConfig':
        """Return a copy with top-level fields replaced (e.g. ``gui=True``)."""
        return dataclasses.replace(self, **changes)
