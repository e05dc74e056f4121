"""Rollouts for RL fine-tuning: the lock-step stack of ``genpolicy-eval`` with an exploring policy.

:class:`ExploringFlowPolicy` is the shipped :class:`FlowPolicy` whose executed chunk takes
Gaussian last Euler steps (:func:`~genpolicy_ros.policy.dppo.sample_chain`) and which reports
every chunk's observation embedding and denoising chain to an observer. :class:`RolloutWorker`
puts it into a :class:`~genpolicy_ros.evaluation.LockstepStack` (CBF filter on, monitor as
configured, episodes end at a monitor HOLD) and turns one episode into RL transitions, one per
executed chunk, with :func:`episode_transitions`: the reward of a chunk is the cube's progress
toward the goal while the chunk ran, minus the filter's mean correction over the chunk's
control steps, minus a penalty when the monitor latched HOLD, plus a bonus on success.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from genpolicy_ros.policy.dppo import ChainSample, noise_cholesky, sample_chain
from genpolicy_ros.policy.flow import FlowSample
from genpolicy_ros.policy.policy import FlowPolicy

ChunkObserver = Callable[[np.ndarray, np.ndarray], None]


class ExploringFlowPolicy(FlowPolicy):
    """A :class:`FlowPolicy` (sharing ``base``'s network) that explores in its last Euler steps.

    ``observer(obs_cond (C,), chain (K + 1, H, A))`` is called for every chunk sampled.
    """

    def __init__(self, base: FlowPolicy, n_stochastic: int, sigma: float,
                 correlation_steps: float = 0.0,
                 observer: Optional[ChunkObserver] = None) -> None:
        super().__init__(base.net, base.normalizer, base.steps, base.n_samples, base.selection,
                         base.seed, base.info)
        if not 0 < n_stochastic <= self.steps:
            raise ValueError(f'stochastic_steps must be in [1, flow_steps={self.steps}], '
                             f'got {n_stochastic}')
        self.n_stochastic = int(n_stochastic)
        self.sigma = float(sigma)
        self.chol = (noise_cholesky(self.config.horizon, correlation_steps)
                     if correlation_steps > 0.0 else None)
        self.observer = observer

    def _sample(self, obs_cond: torch.Tensor, steps: int, n_samples: int,
                generator: torch.Generator) -> FlowSample:
        out: ChainSample = sample_chain(self.net, obs_cond, steps, n_samples, self.n_stochastic,
                                        self.sigma, generator, self.selection, self.chol)
        if self.observer is not None:
            self.observer(obs_cond[0].numpy().copy(), out.chain.numpy().copy())
        return out


@dataclass
class EpisodeRollout:
    """One episode as RL data: per-decision arrays plus what the filter and monitor did."""

    seed: int
    success: bool
    hold: bool
    final_distance_m: float
    intervention_mps: List[float]   # per control step (the filter's correction)
    filter_calls: int               # control steps the CBF filter computed the command
    obs_cond: np.ndarray            # (n, C) observation embedding of each decision
    chains: np.ndarray              # (n, K + 1, H, A) denoising chain of the executed chunk
    time_fraction: np.ndarray       # (n,) decision step / episode length limit
    rewards: np.ndarray             # (n,)
    reward_terms: Dict[str, float]  # episode sums of progress, intervention, hold, success

    @property
    def control_steps(self) -> int:
        """Control steps of the episode."""
        return len(self.intervention_mps)

    @property
    def decisions(self) -> int:
        """Return how many chunks the episode executed (its RL decisions)."""
        return len(self.rewards)


def episode_transitions(chunks: List[Dict[str, Any]], stats: Any,
                        reward: Any) -> Tuple[np.ndarray, Dict[str, float]]:
    """Return the per-chunk rewards of an episode and the episode sums of their terms.

    ``chunks[j]`` holds ``distance`` (cube-goal [m] when chunk j was sampled),
    ``control_index`` and ``mode_index`` (lengths of ``stats.intervention_mps`` and
    ``stats.modes`` at that moment); ``stats`` is the episode's
    :class:`~genpolicy_ros.evaluation.EpisodeStats`; ``reward`` a ``RewardConfig``.
    """
    n = len(chunks)
    dist = [c['distance'] for c in chunks] + [stats.final_distance_m]
    ctrl = [c['control_index'] for c in chunks] + [len(stats.intervention_mps)]
    modes = [c['mode_index'] for c in chunks] + [len(stats.modes)]
    rewards = np.zeros(n)
    terms = {'progress': 0.0, 'intervention': 0.0, 'hold': 0.0, 'success': 0.0}
    held = False
    for j in range(n):
        progress = reward.progress_per_m * (dist[j] - dist[j + 1])
        window = stats.intervention_mps[ctrl[j]:ctrl[j + 1]]
        intervention = reward.intervention_per_mps * (float(np.mean(window)) if window else 0.0)
        hold = 0.0
        if not held and 'HOLD' in stats.modes[modes[j]:modes[j + 1]]:
            held, hold = True, reward.hold_penalty
        success = reward.success_bonus if (stats.success and j == n - 1) else 0.0
        rewards[j] = progress - intervention - hold + success
        for key, value in (('progress', progress), ('intervention', -intervention),
                           ('hold', -hold), ('success', success)):
            terms[key] += value
    return rewards, terms


def _stack(arrays: List[np.ndarray]) -> np.ndarray:
    return np.stack(arrays).astype(np.float32) if arrays else np.zeros((0,), np.float32)


class RolloutWorker:
    """A lock-step stack (filter on) driven by :class:`ExploringFlowPolicy`; one per process.

    ``run((version, velocity_weights, seed))`` loads the velocity-network weights when the
    version changed and returns the episode as an :class:`EpisodeRollout`.
    """

    def __init__(self, cfg: Any) -> None:
        torch.set_num_threads(1)
        from genpolicy_ros.evaluation import LockstepStack
        from genpolicy_ros.policy.chunk_plan import FlowPlanner
        from genpolicy_ros.policy.config import PolicyRuntimeConfig
        self.cfg = cfg
        self.stack = LockstepStack('flow', cfg.checkpoint, use_filter=True, monitor=cfg.monitor,
                                   task_variant=cfg.task_variant,
                                   max_decisions=cfg.max_decisions or None, stop_on_hold=True)
        base = self.stack.planner.policy
        self.policy = ExploringFlowPolicy(base, cfg.exploration.stochastic_steps,
                                          cfg.exploration.sigma,
                                          cfg.exploration.correlation_steps, self._on_chunk)
        self.stack.planner = FlowPlanner(self.policy, PolicyRuntimeConfig.load())
        limit = self.stack.world.task.max_decision_steps(self.stack.sim.decision_hz)
        self.max_decisions = min(limit, cfg.max_decisions) if cfg.max_decisions else limit
        self.version: Optional[int] = None
        self.chunks: List[Dict[str, Any]] = []

    def _on_chunk(self, obs_cond: np.ndarray, chain: np.ndarray) -> None:
        episode, world = self.stack.episode, self.stack.world
        self.chunks.append({
            'obs_cond': obs_cond, 'chain': chain, 'decision': episode.decisions,
            'control_index': len(episode.intervention_mps), 'mode_index': len(episode.modes),
            'distance': world.task.distance_to_goal(world.cube_pose()[:2], world.goal_xy)})

    def run(self, task: Tuple[int, Optional[Dict[str, torch.Tensor]], int]) -> EpisodeRollout:
        """Run one episode on ``seed`` with the given velocity-network weights."""
        version, weights, seed = task
        if weights is not None and version != self.version:
            self.policy.net.velocity.load_state_dict(weights)
            self.version = version
        self.chunks = []
        stats = self.stack.run_episode(seed)
        rewards, terms = episode_transitions(self.chunks, stats, self.cfg.reward)
        chunks = self.chunks
        return EpisodeRollout(
            seed=seed, success=bool(stats.success), hold='HOLD' in stats.modes,
            final_distance_m=float(stats.final_distance_m),
            intervention_mps=list(stats.intervention_mps),
            filter_calls=int(sum(stats.filter_status.values())),
            obs_cond=_stack([c['obs_cond'] for c in chunks]),
            chains=_stack([c['chain'] for c in chunks]),
            time_fraction=np.array([c['decision'] / self.max_decisions for c in chunks],
                                   dtype=np.float32),
            rewards=rewards, reward_terms=terms)

    def close(self) -> None:
        """Release the simulator."""
        self.stack.close()
