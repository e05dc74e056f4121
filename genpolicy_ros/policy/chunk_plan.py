"""Turn a policy's decisions into timed EE plans for the safety filter (pure core).

One decision step (``decision_rate_hz``) yields a :class:`Plan`: the EE targets the arm should
pass through from now on, with times relative to the observation stamp. The first waypoint is
the previous target (due at the stamp) and the second the current one (one decision period
later), so the filter's tracker gets a feed-forward velocity between decisions instead of
chasing a step. The flow planner appends its chunk's remaining (blended) targets; a fresh
chunk's N samples ride along for the monitor. The ROS policy node and the lock-step evaluation
both use these classes, so the loop is the same in both.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from genpolicy_ros.policy.chunking import FrameHistory
from genpolicy_ros.policy.config import PolicyRuntimeConfig
from genpolicy_ros.sim.expert import make_expert

# TCP pointing down with the fingers across y: 180 deg about x (quaternion x, y, z, w).
DOWN_QUATERNION = np.array([1.0, 0.0, 0.0, 0.0])


@dataclass
class Plan:
    """Timed EE targets of one decision, plus the sampled chunks when the policy replanned."""

    stamp_s: float                   # observation time the plan was computed from [s]
    times_from_start_s: np.ndarray   # (K,) [s] after stamp_s
    positions: np.ndarray            # (K, 3) TCP targets [m], world frame
    samples: Optional[np.ndarray]    # (N, H, 3) sampled chunks, None if no new chunk
    sample_times_s: Optional[np.ndarray]  # (H,) [s] after stamp_s
    compute_time_s: float            # inference time of this decision [s]


class _Planner:
    """Shared bookkeeping: the previous target and the decision period."""

    image_size_px: Optional[int] = None
    needs_goal: bool = False   # plan() needs obs['goal'] (the task's goal xy [m])

    def __init__(self, runtime: PolicyRuntimeConfig) -> None:
        self.period_s = 1.0 / runtime.decision_rate_hz
        self._prev: Optional[np.ndarray] = None

    def reset(self, seed: Optional[int] = None) -> None:
        """Start an episode (the first plan starts from the measured EE position)."""
        self._prev = None

    def _plan(self, obs: Dict[str, Any], targets: np.ndarray, samples, sample_times,
              compute_time_s: float) -> Plan:
        prev = np.asarray(obs['ee_pos'], dtype=float) if self._prev is None else self._prev
        positions = np.vstack([prev[None], targets])
        self._prev = np.asarray(targets[0], dtype=float).copy()
        times = np.arange(len(positions)) * self.period_s
        return Plan(float(obs['stamp']), times, positions, samples, sample_times,
                    compute_time_s)


class FlowPlanner(_Planner):
    """The learned flow policy behind its chunk scheduler (blending at chunk boundaries)."""

    def __init__(self, policy, runtime: PolicyRuntimeConfig) -> None:
        super().__init__(runtime)
        from genpolicy_ros.policy.policy import make_scheduler  # torch only where needed
        self.policy = policy
        self.scheduler = make_scheduler(policy, runtime)
        self.history = FrameHistory(policy.config.n_obs_steps)
        self.image_size_px = int(policy.config.image_size_px)
        self.needs_goal = bool(policy.config.goal_dim)
        self.seed = runtime.seed

    @classmethod
    def load(cls, runtime: PolicyRuntimeConfig, checkpoint: Optional[str] = None
             ) -> 'FlowPlanner':
        """Load the checkpoint named by ``runtime`` (or ``checkpoint``)."""
        from genpolicy_ros.policy.policy import FlowPolicy
        return cls(FlowPolicy.load(checkpoint or None, runtime=runtime), runtime)

    def reset(self, seed: Optional[int] = None) -> None:
        """Start an episode: empty frame history and chunk queue, noise stream at ``seed``."""
        super().reset(seed)
        self.history.reset()
        self.scheduler.reset(self.seed if seed is None else seed)

    def plan(self, obs: Dict[str, Any]) -> Plan:
        """Plan from ``obs`` (``image`` (S, S, 3) uint8, ``ee_pos`` (3,), ``stamp`` [s])."""
        window = self.history.push(obs['image'])
        target = self.scheduler.step({'images': window, 'ee_pos': obs['ee_pos'],
                                      'goal': obs.get('goal'),
                                      'stamp': float(obs['stamp'])})
        targets = np.vstack([target[None], self.scheduler.preview()])
        chunk = self.scheduler.last_chunk if self.scheduler.replanned else None
        if chunk is None:
            return self._plan(obs, targets, None, None, 0.0)
        return self._plan(obs, targets, chunk.samples, chunk.times_from_start,
                          chunk.compute_time_s)


class ExpertPlanner(_Planner):
    """The scripted push expert (ground-truth cube and goal): one target per decision.

    It is deterministic, so its "samples" are ``n_samples`` copies of its plan: the exact
    distribution of a deterministic policy, which the monitor scores as perfectly consistent.
    """

    def __init__(self, runtime: PolicyRuntimeConfig, expert=None) -> None:
        super().__init__(runtime)
        self.needs_goal = True
        self.expert = expert if expert is not None else make_expert()
        self.n_samples = runtime.n_samples

    def reset(self, seed: Optional[int] = None) -> None:
        """Start an episode."""
        super().reset(seed)
        self.expert.reset()

    def plan(self, obs: Dict[str, Any]) -> Plan:
        """Plan from ``obs`` (``ee_pos``, ``cube_pose``, ``goal``, ``stamp``)."""
        target = np.asarray(self.expert.act(obs), dtype=float)
        plan = self._plan(obs, target[None], None, None, 0.0)
        plan.samples = np.repeat(plan.positions[None], self.n_samples, axis=0)
        plan.sample_times_s = plan.times_from_start_s.copy()
        return plan
