"""Scripted, state-based push expert (the demonstrator for behaviour cloning).

Reads the cube pose, the goal and the measured TCP position every decision step (10 Hz) and
returns an absolute TCP target: xy at most ``max_step_m`` from the measured TCP, z at the push
height. Two modes with hysteresis:

* approach: go to the pre-push point ``prepush_offset_m`` behind the cube on the cube-goal
  line, detouring around the cube through a lateral waypoint when the straight path would hit it;
* push: move along the cube-goal direction, steering back onto the line through the cube
  centre; fall back to approach when the TCP leaves that line, gets ahead of the cube or loses it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from genpolicy_ros.sim.config import ExpertConfig, SimConfig


def _segment_distance(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> float:
    """Return the distance from point ``p`` to segment ``a``-``b`` (2-D)."""
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom < 1e-12 else float(np.clip((p - a) @ ab / denom, 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - p))


class ScriptedPushExpert:
    """Reactive push expert: ``act(obs) -> ee_target (3,)``.

    ``obs`` needs ``ee_pos`` (3,), ``cube_pose`` (7,) and ``goal`` (2,), all world frame [m].
    ``mode`` is ``'approach'`` or ``'push'`` after each call (for logs and tests).
    """

    def __init__(self, config: Optional[ExpertConfig] = None,
                 tcp_push_z: Optional[float] = None) -> None:
        if config is None or tcp_push_z is None:
            sim = SimConfig.load()
            config = config if config is not None else sim.expert
            tcp_push_z = tcp_push_z if tcp_push_z is not None else sim.task.tcp_push_z_m
        self.config = config
        self.tcp_push_z = float(tcp_push_z)
        self.reset()

    def reset(self) -> None:
        """Forget the mode and detour side (call at the start of every episode)."""
        self.mode = 'approach'
        self._side = 0.0

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Return the absolute TCP target ``[x, y, z]`` [m] for this decision step."""
        cfg = self.config
        ee = np.asarray(obs['ee_pos'], dtype=float)[:2]
        cube = np.asarray(obs['cube_pose'], dtype=float)[:2]
        goal = np.asarray(obs['goal'], dtype=float)[:2]
        to_goal = goal - cube
        dist = float(np.linalg.norm(to_goal))
        if dist < 1e-6:
            return self._target(ee, ee)
        u = to_goal / dist
        n = np.array([-u[1], u[0]])
        rel = ee - cube
        along, lateral = float(rel @ u), float(rel @ n)
        if self.mode == 'push':
            if (abs(lateral) > cfg.push_exit_lateral_m or along > -cfg.min_behind_m
                    or np.linalg.norm(rel) > cfg.push_exit_distance_m):
                self.mode = 'approach'
        prepush = cube - u * cfg.prepush_offset_m
        if self.mode == 'approach' and np.linalg.norm(ee - prepush) < cfg.push_enter_tolerance_m:
            self.mode = 'push'
        if self.mode == 'push':
            # Forward along the push line, steering the TCP back onto the line through the cube.
            direction = u * cfg.max_step_m - cfg.line_gain * lateral * n
            direction /= np.linalg.norm(direction)
            step = min(cfg.max_step_m, dist + cfg.goal_overshoot_m)
            return self._target(ee, ee + direction * step)
        return self._target(ee, self._approach_waypoint(ee, cube, u, n, along, lateral))

    def _approach_waypoint(self, ee: np.ndarray, cube: np.ndarray, u: np.ndarray,
                           n: np.ndarray, along: float, lateral: float) -> np.ndarray:
        """Return the next waypoint toward the pre-push point that keeps clear of the cube."""
        cfg = self.config
        # Detour side with hysteresis so the expert does not dither when straight in front.
        if self._side == 0.0 or lateral * self._side < -cfg.lateral_clearance_m / 2.0:
            self._side = 1.0 if lateral >= 0.0 else -1.0
        side = self._side * n * cfg.lateral_clearance_m
        candidates = (
            cube - u * cfg.prepush_offset_m,
            cube + side - u * cfg.side_back_offset_m,
            cube + side + u * max(along, 0.0),
        )
        for waypoint in candidates:
            if _segment_distance(ee, waypoint, cube) >= cfg.clearance_radius_m:
                return waypoint
        # Too close to the cube for any clear path: back away from it first.
        away = ee - cube
        norm = np.linalg.norm(away)
        away = away / norm if norm > 1e-9 else -u
        return ee + away * cfg.max_step_m

    def _target(self, ee: np.ndarray, waypoint: np.ndarray) -> np.ndarray:
        """Clip the xy step to ``max_step_m`` and add the push height."""
        step = waypoint - ee
        norm = float(np.linalg.norm(step))
        if norm > self.config.max_step_m:
            step *= self.config.max_step_m / norm
        xy = ee + step
        return np.array([xy[0], xy[1], self.tcp_push_z])
