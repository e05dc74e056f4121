"""Scripted, state-based push experts (the demonstrators for behaviour cloning).

Both read the cube pose, the goal and the measured TCP position every decision step (10 Hz)
and return an absolute TCP target: xy at most ``max_step_m`` from the measured TCP, z at the
push height. ``expert.kind`` in ``config/sim.yaml`` picks one (:func:`make_expert`).

:class:`ScriptedPushExpert` (``modal``) has two modes with hysteresis:

* approach: go to the pre-push point ``prepush_offset_m`` behind the cube on the cube-goal
  line, detouring around the cube through a lateral waypoint when the straight path would hit it;
* push: move along the cube-goal direction, steering back onto the line through the cube
  centre; fall back to approach when the TCP leaves that line, gets ahead of the cube or loses it.

:class:`FieldPushExpert` (``field``) is one continuous direction field over the TCP's position
relative to the cube and the goal, with no memory: inside a cone behind the cube it pushes
(steering onto the line through the cube centre), outside it orbits the cube toward that cone,
and between the two it blends them. A cloned policy meets the same label in the same state,
and labels change smoothly between neighbouring states: no hysteresis band where a mode switch
gives two opposite labels for one picture (which a regression to their mean turns into a
crawl).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np

from genpolicy_ros.sim.config import ExpertConfig, SimConfig


def _segment_distance(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> float:
    """Return the distance from point ``p`` to segment ``a``-``b`` (2-D)."""
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom < 1e-12 else float(np.clip((p - a) @ ab / denom, 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - p))


def _push_frame(obs: Mapping[str, Any]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Return TCP xy, cube xy, goal xy [m] and the cube-goal distance [m] from ``obs``."""
    ee = np.asarray(obs['ee_pos'], dtype=float)[:2]
    cube = np.asarray(obs['cube_pose'], dtype=float)[:2]
    goal = np.asarray(obs['goal'], dtype=float)[:2]
    return ee, cube, goal, float(np.linalg.norm(goal - cube))


def _push_axes(ee: np.ndarray, cube: np.ndarray, goal: np.ndarray, dist: float
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Return ``u`` (cube to goal), ``n`` (its left), TCP minus cube, and its u and n parts [m].

    ``dist`` > 0 is the cube-goal distance.
    """
    u = (goal - cube) / dist
    n = np.array([-u[1], u[0]])
    rel = ee - cube
    return u, n, rel, float(rel @ u), float(rel @ n)


def _push_direction(cfg: ExpertConfig, u: np.ndarray, n: np.ndarray,
                    lateral: float) -> np.ndarray:
    """Return the unit push direction: forward along ``u``, steering back onto the push line.

    ``line_gain`` of the TCP's ``lateral`` offset from the line through the cube is removed per
    step; both experts push this way.
    """
    direction = u * cfg.max_step_m - cfg.line_gain * lateral * n
    return direction / np.linalg.norm(direction)


def _load_config(config: Optional[ExpertConfig],
                 tcp_push_z: Optional[float]) -> Tuple[ExpertConfig, float]:
    """Fill a missing expert config or push height from ``config/sim.yaml``."""
    if config is None or tcp_push_z is None:
        sim = SimConfig.load()
        config = config if config is not None else sim.expert
        tcp_push_z = tcp_push_z if tcp_push_z is not None else sim.task.tcp_push_z_m
    return config, float(tcp_push_z)


def _clipped_target(ee: np.ndarray, waypoint: np.ndarray, max_step: float,
                    z: float) -> np.ndarray:
    """Clip the xy step from ``ee`` toward ``waypoint`` to ``max_step`` [m]; add height z."""
    step = waypoint - ee
    norm = float(np.linalg.norm(step))
    if norm > max_step:
        step *= max_step / norm
    xy = ee + step
    return np.array([xy[0], xy[1], z])


class ScriptedPushExpert:
    """Reactive push expert: ``act(obs) -> ee_target (3,)``.

    ``obs`` needs ``ee_pos`` (3,), ``cube_pose`` (7,) and ``goal`` (2,), all world frame [m].
    ``mode`` is ``'approach'`` or ``'push'`` after each call (for logs and tests).
    """

    def __init__(self, config: Optional[ExpertConfig] = None,
                 tcp_push_z: Optional[float] = None) -> None:
        self.config, self.tcp_push_z = _load_config(config, tcp_push_z)
        self.reset()

    def reset(self) -> None:
        """Forget the mode and detour side (call at the start of every episode)."""
        self.mode = 'approach'
        self._side = 0.0

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Return the absolute TCP target ``[x, y, z]`` [m] for this decision step."""
        cfg = self.config
        ee, cube, goal, dist = _push_frame(obs)
        if dist < 1e-6:
            return self._target(ee, ee)
        u, n, rel, along, lateral = _push_axes(ee, cube, goal, dist)
        if self.mode == 'push':
            if (abs(lateral) > cfg.push_exit_lateral_m or along > -cfg.min_behind_m
                    or np.linalg.norm(rel) > cfg.push_exit_distance_m):
                self.mode = 'approach'
        prepush = cube - u * cfg.prepush_offset_m
        if self.mode == 'approach' and np.linalg.norm(ee - prepush) < cfg.push_enter_tolerance_m:
            self.mode = 'push'
        if self.mode == 'push':
            direction = _push_direction(cfg, u, n, lateral)
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
        return _clipped_target(ee, waypoint, self.config.max_step_m, self.tcp_push_z)


class FieldPushExpert:
    """Memoryless push expert: one continuous direction field, ``act(obs) -> ee_target (3,)``.

    In the cube's push frame (``u`` from the cube toward the goal, ``n`` to its left) the TCP's
    angle ``phi`` is measured from straight behind the cube. Within ``push_cone_deg[0]`` it
    pushes: forward along ``u``, steering back onto the line through the cube centre with
    ``line_gain``. Beyond ``push_cone_deg[1]`` it orbits: tangentially toward ``phi = 0``
    (the shorter way round) and radially toward ``orbit_radius_m``. Between, a linear blend of
    the two; the tangential share never drops below ``min_tangential``, so the blend never
    cancels to a standstill. Steps are ``max_step_m`` long (shorter only while pushing, within
    ``max_step_m`` of the goal). ``mode`` is ``'push'``, ``'blend'`` or ``'orbit'`` after a call.
    """

    def __init__(self, config: Optional[ExpertConfig] = None,
                 tcp_push_z: Optional[float] = None) -> None:
        self.config, self.tcp_push_z = _load_config(config, tcp_push_z)
        self.mode = 'orbit'

    def reset(self) -> None:
        """Nothing to forget (no memory); kept for the expert interface."""
        self.mode = 'orbit'

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Return the absolute TCP target ``[x, y, z]`` [m] for this decision step."""
        cfg, field = self.config, self.config.field
        ee, cube, goal, dist = _push_frame(obs)
        if dist < 1e-6:
            return _clipped_target(ee, ee, cfg.max_step_m, self.tcp_push_z)
        u, n, rel, along, lateral = _push_axes(ee, cube, goal, dist)
        rho = max(float(np.hypot(along, lateral)), 1e-9)
        phi = float(np.arctan2(lateral, -along))  # 0: straight behind the cube
        cone_lo, cone_hi = np.radians(field.push_cone_deg)
        push = _push_direction(cfg, u, n, lateral)
        # d(phi) > 0 along (lateral * u - along * n) / rho; turn the other way when phi > 0.
        toward_cone = -np.sign(phi or 1.0) * (lateral * u - along * n) / rho
        tangential = float(np.clip(abs(phi) / cone_hi, field.min_tangential, 1.0))
        radial = float(np.clip((field.orbit_radius_m - rho) / field.radial_band_m, -1.0, 1.0))
        orbit = tangential * toward_cone + radial * rel / rho
        orbit /= np.linalg.norm(orbit)
        weight = float(np.clip((cone_hi - abs(phi)) / (cone_hi - cone_lo), 0.0, 1.0))
        direction = weight * push + (1.0 - weight) * orbit
        norm = float(np.linalg.norm(direction))
        direction = direction / norm if norm > 1e-9 else orbit
        step = cfg.max_step_m
        if weight >= 1.0:
            self.mode = 'push'
            step = min(cfg.max_step_m, dist + cfg.goal_overshoot_m)
        else:
            self.mode = 'orbit' if weight <= 0.0 else 'blend'
        return _clipped_target(ee, ee + direction * step, cfg.max_step_m, self.tcp_push_z)


PushExpert = Union[ScriptedPushExpert, FieldPushExpert]


def make_expert(config: Optional[ExpertConfig] = None,
                tcp_push_z: Optional[float] = None) -> PushExpert:
    """Return the expert ``config.kind`` names (``config/sim.yaml`` when not given)."""
    config, tcp_push_z = _load_config(config, tcp_push_z)
    if config.kind == 'field':
        return FieldPushExpert(config, tcp_push_z)
    return ScriptedPushExpert(config, tcp_push_z)
