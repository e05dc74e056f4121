"""Push task: seeded sampling of cube, goal and start poses, success criterion, time limit.

Seeds below :data:`EVAL_SEED_START` are for training data; held-out evaluation uses seeds from
:data:`EVAL_SEED_START` upwards, so no evaluation episode ever appears in a training set.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from genpolicy_ros.sim.config import SimConfig, TaskConfig

#: First held-out evaluation seed; training seeds start at 0 and stay below this.
EVAL_SEED_START = 100000


@dataclasses.dataclass(frozen=True)
class PushEpisodeSpec:
    """One sampled task instance (all in the world frame, metres / radians)."""

    seed: int
    cube_xy: np.ndarray
    cube_yaw: float
    goal_xy: np.ndarray
    ee_start_xy: np.ndarray


class PushTask:
    """Push a cube to a goal disc on the table; fingertips at a fixed height while pushing."""

    def __init__(self, config: Optional[TaskConfig] = None) -> None:
        self.config = config if config is not None else SimConfig.load().task

    @property
    def tcp_push_z(self) -> float:
        """TCP height [m] while pushing (fingertips at ``push_height_m``)."""
        return self.config.tcp_push_z_m

    def sample(self, seed: int) -> PushEpisodeSpec:
        """Sample a reachable task instance; the same seed always gives the same instance.

        Rejection sampling keeps the cube-goal distance and the start-cube clearance; the
        cube and the goal both lie inside the push workspace.
        """
        cfg = self.config
        rng = np.random.default_rng(int(seed))
        lo = np.array([cfg.workspace_x_m[0], cfg.workspace_y_m[0]])
        hi = np.array([cfg.workspace_x_m[1], cfg.workspace_y_m[1]])
        for _ in range(cfg.max_sample_attempts):
            start = np.asarray(cfg.ee_start_xy_m) + rng.uniform(
                -cfg.ee_start_jitter_m, cfg.ee_start_jitter_m, size=2)
            cube = rng.uniform(lo, hi)
            goal = rng.uniform(lo, hi)
            yaw = float(rng.uniform(*cfg.cube_yaw_range_rad))
            if (np.linalg.norm(goal - cube) >= cfg.min_cube_goal_distance_m
                    and np.linalg.norm(cube - start) >= cfg.min_start_cube_distance_m):
                return PushEpisodeSpec(int(seed), cube, yaw, goal, start)
        raise RuntimeError(f'no valid push task found for seed {seed} in '
                           f'{cfg.max_sample_attempts} attempts: check the task ranges')

    def distance_to_goal(self, cube_xy: np.ndarray, goal_xy: np.ndarray) -> float:
        """Return the planar cube-centre to goal-centre distance [m]."""
        return float(np.linalg.norm(np.asarray(cube_xy)[:2] - np.asarray(goal_xy)[:2]))

    def is_success(self, cube_xy: np.ndarray, goal_xy: np.ndarray) -> bool:
        """Return True when the cube centre is within the success tolerance of the goal."""
        return self.distance_to_goal(cube_xy, goal_xy) <= self.config.success_tolerance_m

    def max_decision_steps(self, decision_hz: float) -> int:
        """Return the episode length limit in decision steps."""
        return int(round(self.config.time_limit_s * decision_hz))
