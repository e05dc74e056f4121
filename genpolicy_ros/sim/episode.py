"""Lock-step push episodes: decisions at 10 Hz, controller at 100 Hz, physics at 1 kHz.

Agent interface (the scripted expert now, a learned policy later)::

    agent.reset() -> None                 # start of an episode
    agent.act(obs) -> ee_target (3,)      # absolute TCP target [m], world frame

``obs`` is a dict with ``image`` (H, W, 3) uint8 (rendered once per decision step),
``ee_pos`` (3,) measured TCP position [m], ``q`` (7,) [rad], ``dq`` (7,) [rad/s],
``cube_pose`` (7,) ``[x, y, z, qx, qy, qz, qw]``, ``goal`` (2,) [m], ``time_s`` and ``step``.
A chunking policy keeps its own action queue and returns one target per call.
The controller (IK now, the safety filter later) has ``reset(state)`` and
``command(state, ee_target) -> (q_cmd, dq_cmd)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from genpolicy_ros.drivers.backend import ArmState
from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend


class Agent(Protocol):
    """Anything that maps an observation dict to an absolute TCP target."""

    def reset(self) -> None:
        """Start a new episode."""
        ...

    def act(self, obs: Dict[str, Any]) -> np.ndarray:
        """Return the TCP target ``[x, y, z]`` [m]."""
        ...


class Controller(Protocol):
    """TCP target -> joint command (IKController, SafetyFilter adapters)."""

    def reset(self, state: ArmState) -> None:
        """Start tracking from ``state``."""
        ...

    def command(self, state: ArmState, ee_target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``(q_cmd, dq_cmd)``."""
        ...


@dataclasses.dataclass
class StepRecord:
    """What happened at one decision step."""

    obs: Dict[str, Any]
    action: np.ndarray        # the agent's (clean) TCP target (3,)
    executed: np.ndarray      # the target actually sent to the controller (3,)


@dataclasses.dataclass
class EpisodeResult:
    """Outcome of one episode."""

    seed: int
    success: bool
    steps: int
    final_distance_m: float
    records: List[StepRecord]
    goal: np.ndarray


def observe(backend: PyBulletBackend, step: int, render: bool = True) -> Dict[str, Any]:
    """Collect the observation dict from the simulated arm, camera and task objects."""
    world = backend.world
    state = backend.read_state()
    return {
        'image': world.render() if render else None,
        'ee_pos': world.ee_pose()[0],
        'q': state.q,
        'dq': state.dq,
        'cube_pose': world.cube_pose(),
        'goal': world.goal_xy.copy(),
        'time_s': state.stamp,
        'step': step,
    }


def run_episode(backend: PyBulletBackend, agent: Agent, controller: Controller, seed: int,
                noise_std_m: float = 0.0, noise_rng: Optional[np.random.Generator] = None,
                max_steps: Optional[int] = None, render: bool = True,
                on_step: Optional[Callable[[StepRecord], None]] = None) -> EpisodeResult:
    """Reset the world to task ``seed`` and run ``agent`` until success or the time limit.

    Success is checked on each observation before acting, so the last record is the last
    decision taken. With ``noise_std_m > 0`` the executed xy target gets Gaussian noise (DART)
    while the record keeps the agent's clean target.
    """
    world = backend.world
    cfg = world.config
    spec = world.reset(seed)
    backend.reset_watchdog()
    agent.reset()
    controller.reset(backend.read_state())
    control_per_decision = int(round(cfg.control_hz / cfg.decision_hz))
    control_dt = 1.0 / cfg.control_hz
    if max_steps is None:
        max_steps = world.task.max_decision_steps(cfg.decision_hz)
    rng = noise_rng if noise_rng is not None else np.random.default_rng(seed)
    records: List[StepRecord] = []
    success = False
    for step in range(max_steps):
        obs = observe(backend, step, render)
        if world.task.is_success(obs['cube_pose'][:2], spec.goal_xy):
            success = True
            break
        if obs['cube_pose'][2] < 0.0:
            break  # cube fell off the table
        action = np.asarray(agent.act(obs), dtype=float)
        executed = action.copy()
        if noise_std_m > 0.0:
            executed[:2] += rng.normal(0.0, noise_std_m, size=2)
        record = StepRecord(obs, action, executed)
        records.append(record)
        if on_step is not None:
            on_step(record)
        for _ in range(control_per_decision):
            q_cmd, dq_cmd = controller.command(backend.read_state(), executed)
            backend.command(q_cmd, dq_cmd)
            backend.advance(control_dt)
    else:
        cube = world.cube_pose()
        success = world.task.is_success(cube[:2], spec.goal_xy)
    distance = world.task.distance_to_goal(world.cube_pose()[:2], spec.goal_xy)
    return EpisodeResult(int(seed), bool(success), len(records), distance, records,
                         spec.goal_xy.copy())
