"""Configuration of the safety filter, read from ``config/safety.yaml``.

The YAML is the one definition of every default: these dataclasses have no default values. The
layout is the ROS 2 one (``safety_filter_node: {ros__parameters: {...}}``); nested keys are what
ROS flattens to dotted parameter names such as ``table.gain``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from genpolicy_ros.config_io import read_core_parameters

NODE_NAME = 'safety_filter_node'
BACKENDS = ('daqp', 'cvxpy')


def _section(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """Return ``params[name]`` accepting both nested dicts and ROS-flattened dotted keys."""
    if name in params and isinstance(params[name], Mapping):
        return params[name]
    prefix = name + '.'
    flat = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    if not flat:
        raise KeyError(f'missing parameter section {name!r}')
    return flat


def _gain(value: Any, name: str) -> float:
    gain = float(value)
    if not 0.0 < gain <= 1.0:
        raise ValueError(f'{name} must be a discrete-time CBF gain in (0, 1], got {gain}')
    return gain


def _positive(value: Any, name: str) -> float:
    out = float(value)
    if not out > 0.0:
        raise ValueError(f'{name} must be > 0, got {out}')
    return out


def _points(flat: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(list(flat), dtype=float)
    if arr.size % 3:
        raise ValueError(f'{name} must be a flat [x, y, z, ...] list, got {arr.size} numbers')
    return arr.reshape(-1, 3)


@dataclass(frozen=True)
class TrackingConfig:
    """Reference tracker: chunk timeout, pose-error feedback gains and twist clamps."""

    chunk_timeout_s: float
    linear_gain_per_s: float
    angular_gain_per_s: float
    max_linear_speed_mps: float
    max_angular_speed_radps: float
    quaternion_norm_tolerance: float
    max_future_stamp_s: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'TrackingConfig':
        """Build from the ``tracking`` section."""
        return cls(chunk_timeout_s=_positive(params['chunk_timeout_s'], 'chunk_timeout_s'),
                   linear_gain_per_s=float(params['linear_gain_per_s']),
                   angular_gain_per_s=float(params['angular_gain_per_s']),
                   max_linear_speed_mps=_positive(params['max_linear_speed_mps'],
                                                  'max_linear_speed_mps'),
                   max_angular_speed_radps=_positive(params['max_angular_speed_radps'],
                                                     'max_angular_speed_radps'),
                   quaternion_norm_tolerance=_positive(params['quaternion_norm_tolerance'],
                                                       'quaternion_norm_tolerance'),
                   max_future_stamp_s=_positive(params['max_future_stamp_s'],
                                                'max_future_stamp_s'))


@dataclass(frozen=True)
class ObjectiveConfig:
    """Weights of the QP cost (tracking error, damping, null-space posture)."""

    linear_weight: float
    angular_weight: float
    damping_weight: float
    posture_weight: float
    posture_gain_per_s: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'ObjectiveConfig':
        """Build from the ``objective`` section."""
        out = cls(**{k: float(params[k]) for k in (
            'linear_weight', 'angular_weight', 'damping_weight', 'posture_weight',
            'posture_gain_per_s')})
        if out.damping_weight <= 0.0:
            raise ValueError('objective.damping_weight must be > 0 (strictly convex QP)')
        if min(out.linear_weight, out.angular_weight, out.posture_weight) < 0.0:
            raise ValueError('objective weights must be >= 0')
        return out


@dataclass(frozen=True)
class WorkspaceConfig:
    """Soft EE box [m] with its CBF gain."""

    gain: float
    x_min_m: float
    x_max_m: float
    y_min_m: float
    y_max_m: float
    z_min_m: float
    z_max_m: float

    @property
    def lower_m(self) -> Tuple[float, float, float]:
        """Lower corner (x, y, z) [m]."""
        return (self.x_min_m, self.y_min_m, self.z_min_m)

    @property
    def upper_m(self) -> Tuple[float, float, float]:
        """Upper corner (x, y, z) [m]."""
        return (self.x_max_m, self.y_max_m, self.z_max_m)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'WorkspaceConfig':
        """Build from the ``workspace`` section."""
        faces = {f'{a}_{s}_m': float(params[f'{a}_{s}_m']) for a in 'xyz' for s in ('min', 'max')}
        out = cls(gain=_gain(params['gain'], 'workspace.gain'), **faces)
        if any(lo >= hi for lo, hi in zip(out.lower_m, out.upper_m)):
            raise ValueError(f'workspace box is empty: lower {out.lower_m}, upper {out.upper_m}')
        return out


@dataclass(frozen=True)
class TableConfig:
    """Table plane barrier for the TCP and the link spheres."""

    gain: float
    height_m: float
    sphere_margin_m: float
    ee_margin_m: float
    excluded_links: Tuple[str, ...]

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'TableConfig':
        """Build from the ``table`` section."""
        return cls(gain=_gain(params['gain'], 'table.gain'), height_m=float(params['height_m']),
                   sphere_margin_m=float(params['sphere_margin_m']),
                   ee_margin_m=float(params['ee_margin_m']),
                   excluded_links=tuple(str(s) for s in params['excluded_links']))


@dataclass(frozen=True)
class ObstacleConfig:
    """Keep-out spheres and capsules (segment + radius) in the world frame."""

    gain: float
    margin_m: float
    centers_m: np.ndarray          # (K, 3)
    radii_m: np.ndarray            # (K,)
    capsule_starts_m: np.ndarray   # (C, 3)
    capsule_ends_m: np.ndarray     # (C, 3)
    capsule_radii_m: np.ndarray    # (C,)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'ObstacleConfig':
        """Build from the ``obstacles`` section (flat ``[x, y, z, ...]`` lists)."""
        out = cls(gain=_gain(params['gain'], 'obstacles.gain'),
                  margin_m=float(params['margin_m']),
                  centers_m=_points(params['centers_m'], 'obstacles.centers_m'),
                  radii_m=np.asarray(list(params['radii_m']), dtype=float),
                  capsule_starts_m=_points(params['capsule_starts_m'],
                                           'obstacles.capsule_starts_m'),
                  capsule_ends_m=_points(params['capsule_ends_m'], 'obstacles.capsule_ends_m'),
                  capsule_radii_m=np.asarray(list(params['capsule_radii_m']), dtype=float))
        validate_obstacles(out.centers_m, out.radii_m, out.capsule_starts_m, out.capsule_ends_m,
                           out.capsule_radii_m)
        return out


def validate_obstacles(centers: np.ndarray, radii: np.ndarray, starts: np.ndarray,
                       ends: np.ndarray, capsule_radii: np.ndarray) -> None:
    """Raise ``ValueError`` unless the obstacle arrays are finite and consistently shaped."""
    if centers.ndim != 2 or centers.shape[1] != 3 or radii.shape != (centers.shape[0],):
        raise ValueError(f'obstacle centers {centers.shape} and radii {radii.shape} disagree')
    if (starts.ndim != 2 or starts.shape[1] != 3 or ends.shape != starts.shape
            or capsule_radii.shape != (starts.shape[0],)):
        raise ValueError(f'capsule starts {starts.shape}, ends {ends.shape} and radii '
                         f'{capsule_radii.shape} disagree')
    for arr in (centers, radii, starts, ends, capsule_radii):
        if not np.all(np.isfinite(arr)):
            raise ValueError('obstacle parameters must be finite')
    if np.any(radii < 0.0) or np.any(capsule_radii < 0.0):
        raise ValueError('obstacle radii must be >= 0')


@dataclass(frozen=True)
class JointLimitConfig:
    """Joint position limit barrier: stay ``margin_rad[j]`` inside joint j's URDF limits."""

    gain: float
    margin_rad: tuple  # one non-negative margin per joint [rad]

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'JointLimitConfig':
        """Build from the ``joint_limits`` section."""
        margins = tuple(float(m) for m in params['margin_rad'])
        if any(m < 0.0 or not np.isfinite(m) for m in margins):
            raise ValueError(f'joint_limits.margin_rad must be >= 0 per joint, got {margins}')
        return cls(gain=_gain(params['gain'], 'joint_limits.gain'), margin_rad=margins)


@dataclass(frozen=True)
class SpeedCapConfig:
    """EE linear speed cap, enforced through an inner polytope of the speed ball."""

    max_speed_mps: float
    margin_mps: float
    facets: int

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'SpeedCapConfig':
        """Build from the ``speed_cap`` section."""
        out = cls(max_speed_mps=_positive(params['max_speed_mps'], 'speed_cap.max_speed_mps'),
                  margin_mps=float(params['margin_mps']), facets=int(params['facets']))
        if out.facets < 8:
            raise ValueError('speed_cap.facets must be >= 8 for a bounded polytope')
        if not 0.0 <= out.margin_mps < out.max_speed_mps:
            raise ValueError('speed_cap.margin_mps must be in [0, max_speed_mps)')
        return out


@dataclass(frozen=True)
class SafetyConfig:
    """Everything the :class:`~genpolicy_ros.safety.filter.SafetyFilter` needs, from YAML."""

    control_rate_hz: float
    backend: str
    solve_time_budget_s: float
    feasibility_tolerance: float
    verify_next_state: bool
    max_margin_iterations: int
    linearization_margin_m: float
    position_anchor_tolerance_rad: float
    slack_linear_weight: float
    slack_quadratic_weight: float
    objective: ObjectiveConfig
    tracking: TrackingConfig
    workspace: WorkspaceConfig
    table: TableConfig
    obstacles: ObstacleConfig
    joint_limits: JointLimitConfig
    joint_velocity_scale: float
    speed_cap: SpeedCapConfig
    acceleration_scale: float

    @property
    def dt(self) -> float:
        """Control period [s]."""
        return 1.0 / self.control_rate_hz

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'SafetyConfig':
        """Build from a ``ros__parameters`` dict (nested or ROS-flattened dotted keys).

        A whole YAML document (``{safety_filter_node: {ros__parameters: ...}}``) is accepted too.
        """
        if NODE_NAME in params:
            params = params[NODE_NAME]['ros__parameters']
        backend = str(params['backend'])
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
        slack = _section(params, 'slack')
        return cls(
            control_rate_hz=_positive(params['control_rate_hz'], 'control_rate_hz'),
            backend=backend,
            solve_time_budget_s=_positive(params['solve_time_budget_s'], 'solve_time_budget_s'),
            feasibility_tolerance=_positive(params['feasibility_tolerance'],
                                            'feasibility_tolerance'),
            verify_next_state=bool(params['verify_next_state']),
            max_margin_iterations=int(params['max_margin_iterations']),
            linearization_margin_m=float(params['linearization_margin_m']),
            position_anchor_tolerance_rad=_positive(params['position_anchor_tolerance_rad'],
                                                    'position_anchor_tolerance_rad'),
            slack_linear_weight=_positive(slack['linear_weight'], 'slack.linear_weight'),
            slack_quadratic_weight=_positive(slack['quadratic_weight'],
                                             'slack.quadratic_weight'),
            objective=ObjectiveConfig.from_dict(_section(params, 'objective')),
            tracking=TrackingConfig.from_dict(_section(params, 'tracking')),
            workspace=WorkspaceConfig.from_dict(_section(params, 'workspace')),
            table=TableConfig.from_dict(_section(params, 'table')),
            obstacles=ObstacleConfig.from_dict(_section(params, 'obstacles')),
            joint_limits=JointLimitConfig.from_dict(_section(params, 'joint_limits')),
            joint_velocity_scale=_positive(_section(params, 'joint_velocity')['scale'],
                                           'joint_velocity.scale'),
            speed_cap=SpeedCapConfig.from_dict(_section(params, 'speed_cap')),
            acceleration_scale=_positive(_section(params, 'acceleration')['scale'],
                                         'acceleration.scale'),
        )

    @classmethod
    def load(cls, path: Optional[Union[str, Path]] = None) -> 'SafetyConfig':
        """Read ``config/safety.yaml`` (or ``path``)."""
        return cls.from_dict(load_parameters(path))


def load_parameters(path: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Return the filter's ``ros__parameters`` of the safety YAML (for overrides in tests)."""
    return read_core_parameters('safety.yaml', NODE_NAME, path)
