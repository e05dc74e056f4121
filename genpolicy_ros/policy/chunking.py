"""Action chunks and their execution: the agent interface, the chunk scheduler, boundary jerk.

Any agent (the learned :class:`~genpolicy_ros.policy.policy.FlowPolicy` or a scripted
expert) implements :class:`ChunkPolicy`: ``act(obs) -> ActionChunk`` and ``reset(seed)``.
:class:`ChunkScheduler` turns chunks into one EE target per decision step: it executes
``n_action_steps`` of each chunk, then asks for a new one, joining consecutive chunks
smoothly (``blend`` or ``ensemble``) or not at all (``none``).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from genpolicy_ros.policy.config import SMOOTHING_MODES

Observation = Dict[str, Any]  # images (n_obs, H, W, 3) uint8 oldest first, ee_pos (3,) [m]


@dataclass
class ActionChunk:
    """A chunk of EE position targets computed from one observation.

    ``positions[h]`` is the target for ``stamp + times_from_start[h]``; ``samples`` holds all
    N sampled chunks (``positions`` is ``samples[selected]``), for the consistency monitor.
    """

    positions: np.ndarray         # (H, 3) EE targets [m], world frame
    times_from_start: np.ndarray  # (H,) [s]
    samples: np.ndarray           # (N, H, 3) [m]
    stamp: float                  # observation time [s]
    selected: int = 0             # index of ``positions`` in ``samples``
    compute_time_s: float = 0.0   # wall time spent producing the chunk [s]

    def __post_init__(self) -> None:
        h = self.positions.shape[0]
        if self.positions.shape != (h, 3) or self.times_from_start.shape != (h,) \
                or self.samples.ndim != 3 or self.samples.shape[1:] != (h, 3):
            raise ValueError('ActionChunk shapes: positions (H,3), times (H,), samples (N,H,3)')


class ChunkPolicy(Protocol):
    """What the scheduler (and the demo) needs from an agent."""

    def act(self, obs: Observation) -> ActionChunk:
        """Return a chunk for the observation."""

    def reset(self, seed: Optional[int] = None) -> None:
        """Start a new episode (restart the random stream at ``seed``)."""


class FrameHistory:
    """Keeps the last ``n_obs`` frames; before ``n_obs`` frames exist the first one is repeated.

    This is the padding the dataset uses at episode starts, so the policy sees the same
    windows at run time as in training.
    """

    def __init__(self, n_obs: int) -> None:
        self.n_obs = n_obs
        self.frames: List[np.ndarray] = []

    def reset(self) -> None:
        """Forget all frames."""
        self.frames = []

    def push(self, image: np.ndarray) -> np.ndarray:
        """Add the newest frame; return the window (n_obs, H, W, 3), oldest first."""
        self.frames = (self.frames + [np.asarray(image)])[-self.n_obs:]
        pad = [self.frames[0]] * (self.n_obs - len(self.frames))
        return np.stack(pad + self.frames)


class ChunkScheduler:
    """Execute chunks step by step, replanning every ``n_action_steps`` decision steps.

    Smoothing at chunk boundaries (lock-step use: the new chunk starts at the current step):

    - ``none``: switch to the new chunk at once.
    - ``blend``: for the first ``blend_steps`` steps of a new chunk, cross-fade linearly from the
      old chunk's prediction for that step (while it has one) to the new chunk's.
    - ``ensemble``: ACT-style temporal ensembling: average every live chunk's prediction for the
      step, chunk i (0 = oldest) weighted ``exp(-ensemble_decay * i)``.
    """

    def __init__(self, policy: ChunkPolicy, n_action_steps: int, smoothing: str,
                 blend_steps: int, ensemble_decay: float) -> None:
        if smoothing not in SMOOTHING_MODES:
            raise ValueError(f'smoothing must be one of {SMOOTHING_MODES}')
        if n_action_steps < 1:
            raise ValueError('n_action_steps must be >= 1')
        self.policy = policy
        self.n_action_steps = n_action_steps
        self.smoothing = smoothing
        self.blend_steps = blend_steps
        self.ensemble_decay = ensemble_decay
        self.reset_queue()

    def reset_queue(self) -> None:
        """Drop all chunks (the next step replans)."""
        self.step_index = 0
        self.chunks: List[Tuple[int, ActionChunk]] = []  # (start step, chunk), oldest first
        self.last_chunk: Optional[ActionChunk] = None
        self.replanned = False
        self.boundaries: List[int] = []

    def reset(self, seed: Optional[int] = None) -> None:
        """Start a new episode: drop the queue and reset the policy's random stream."""
        self.reset_queue()
        self.policy.reset(seed)

    def needs_chunk(self) -> bool:
        """Whether the next :meth:`step` will call the policy."""
        if not self.chunks:
            return True
        start, _ = self.chunks[-1]
        return self.step_index - start >= self.n_action_steps

    def step(self, obs: Observation) -> np.ndarray:
        """Return the EE target (3,) [m] for the current decision step; replan if due."""
        self.replanned = self.needs_chunk()
        if self.replanned:
            chunk = self.policy.act(obs)
            self.chunks.append((self.step_index, chunk))
            self.last_chunk = chunk
            if len(self.chunks) > 1:
                self.boundaries.append(self.step_index)
        target = self._target(self.step_index)
        self.step_index += 1
        # Keep only chunks that still predict the coming steps.
        self.chunks = [(s, c) for s, c in self.chunks
                       if self.step_index - s < len(c.positions)] or self.chunks[-1:]
        return target

    def preview(self) -> np.ndarray:
        """Return the targets (M, 3) of the coming steps if no new chunk arrived.

        Call after :meth:`step`: row 0 is the next step's target, up to the end of the newest
        chunk, smoothed exactly as :meth:`step` would smooth them (a feed-forward plan for
        the tracker between decisions). Empty before the first chunk.
        """
        if not self.chunks:
            return np.zeros((0, 3))
        start, newest = self.chunks[-1]
        end = start + len(newest.positions)
        rows = [self._target(t) for t in range(self.step_index, end)]
        return np.array(rows).reshape(-1, 3)

    def _target(self, t: int) -> np.ndarray:
        start, new = self.chunks[-1]
        k = t - start
        newest = new.positions[min(k, len(new.positions) - 1)]
        if self.smoothing == 'none' or len(self.chunks) == 1:
            return newest.copy()
        if self.smoothing == 'blend':
            old_start, old = self.chunks[-2]
            j = t - old_start
            if k >= self.blend_steps or j >= len(old.positions):
                return newest.copy()
            w_old = 1.0 - (k + 1) / (self.blend_steps + 1)
            return w_old * old.positions[j] + (1.0 - w_old) * newest
        preds = [c.positions[t - s] for s, c in self.chunks if 0 <= t - s < len(c.positions)]
        w = np.exp(-self.ensemble_decay * np.arange(len(preds)))
        return (w[:, None] * np.stack(preds)).sum(0) / w.sum()


@dataclass
class JerkStats:
    """Jerk [m/s^3] of a target sequence, at chunk boundaries and elsewhere."""

    boundary_max: float
    boundary_rms: float
    interior_max: float
    interior_rms: float


def boundary_jerk(targets: np.ndarray, period_s: float, boundaries: Sequence[int]) -> JerkStats:
    """Measure the jerk of EE targets (T, 3) sampled every ``period_s``.

    Jerk is the third finite difference over ``period_s**3``; a difference whose four samples
    straddle a boundary (the first step of a new chunk) counts as a boundary value.
    """
    x = np.asarray(targets, dtype=float)
    if len(x) < 4:
        raise ValueError('need at least 4 targets')
    jerk = np.linalg.norm(np.diff(x, n=3, axis=0), axis=1) / period_s ** 3
    at_boundary = np.zeros(len(jerk), dtype=bool)
    for b in boundaries:
        at_boundary[max(b - 3, 0):max(min(b, len(jerk)), 0)] = True

    def _stats(v: np.ndarray) -> Tuple[float, float]:
        return (float(v.max()), float(np.sqrt((v ** 2).mean()))) if len(v) else (0.0, 0.0)

    bmax, brms = _stats(jerk[at_boundary])
    imax, irms = _stats(jerk[~at_boundary])
    return JerkStats(bmax, brms, imax, irms)


class ChunkingAgent:
    """Adapter to the lock-step runner's agent interface (:mod:`genpolicy_ros.sim.episode`).

    ``reset()`` then ``act(obs) -> ee_target (3,)`` once per decision step, where ``obs`` has
    one ``image`` (H, W, 3) uint8 and ``ee_pos`` (3,): the adapter keeps the frame history and
    the chunk queue, so a chunking policy runs wherever the scripted expert runs. It also keeps
    the episode's targets, chunk boundaries and per-chunk compute times for analysis.
    """

    def __init__(self, scheduler: ChunkScheduler, n_obs: int, seed: Optional[int] = None) -> None:
        self.scheduler = scheduler
        self.history = FrameHistory(n_obs)
        self.seed = seed
        self.reset()

    def reset(self, seed: Optional[int] = None) -> None:
        """Start an episode; the policy's noise stream restarts at ``seed`` (or the default)."""
        if seed is not None:
            self.seed = seed
        self.history.reset()
        self.scheduler.reset(self.seed)
        self.targets: List[np.ndarray] = []
        self.compute_times_s: List[float] = []

    def act(self, obs: Observation) -> np.ndarray:
        """Return the TCP target (3,) [m] for this decision step."""
        window = self.history.push(obs['image'])
        target = self.scheduler.step({'images': window, 'ee_pos': obs['ee_pos'],
                                      'goal': obs.get('goal'),
                                      'stamp': float(obs.get('time_s', 0.0))})
        if self.scheduler.replanned and self.scheduler.last_chunk is not None:
            self.compute_times_s.append(self.scheduler.last_chunk.compute_time_s)
        self.targets.append(target)
        return target

    @property
    def boundaries(self) -> List[int]:
        """Decision steps of this episode at which a new chunk took over."""
        return list(self.scheduler.boundaries)
