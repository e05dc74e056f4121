"""The learned flow-matching policy behind the :class:`ChunkPolicy` interface.

Example::

    policy = FlowPolicy.load()                      # checkpoint and settings from policy.yaml
    policy.reset(seed=0)
    chunk = policy.act({'images': frames, 'ee_pos': ee})   # frames (2, 96, 96, 3) uint8
    chunk.positions    # (16, 3) EE targets [m]; chunk.samples (N, 16, 3) for the monitor
"""

from pathlib import Path
import time
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from genpolicy_ros.paths import checkpoint_path
from genpolicy_ros.policy.checkpoint import load_for_inference
from genpolicy_ros.policy.chunking import (ActionChunk, ChunkingAgent, ChunkScheduler,
                                           Observation)
from genpolicy_ros.policy.config import PolicyConfig, PolicyRuntimeConfig, SELECTION_MODES
from genpolicy_ros.policy.dataset import low_dim_input, Normalizer
from genpolicy_ros.policy.flow import FlowSample, sample_chunks
from genpolicy_ros.policy.network import FlowPolicyNet, images_to_tensor

PathLike = Union[str, Path]


def resolve_checkpoint(name: PathLike) -> Path:
    """Return ``name`` if it is an existing path, else ``checkpoints/<name>``."""
    path = Path(name)
    return path if path.is_absolute() or path.is_file() else checkpoint_path(str(name))


class FlowPolicy:
    """Rectified-flow policy over EE xy action chunks (z is the demos' push height).

    ``act`` is deterministic given the seed: ``reset(seed)`` restarts the noise stream, and
    ``act(obs, seed=s)`` uses a private stream seeded ``s`` for that call only. ``fast``
    selects the sampler's inference path (see :func:`sample_chunks`); ``False`` runs the
    plain module forward, the reference that tests and benchmarks compare with.
    """

    fast: bool = True

    def __init__(self, net: FlowPolicyNet, normalizer: Normalizer, steps: int, n_samples: int,
                 selection: str, seed: int, info: Optional[Dict[str, Any]] = None) -> None:
        if selection not in SELECTION_MODES:
            raise ValueError(f'selection must be one of {SELECTION_MODES}')
        self.net = net.eval()
        self.normalizer = normalizer
        self.steps = int(steps)
        self.n_samples = int(n_samples)
        self.selection = selection
        self.info = dict(info or {})
        self.generator = torch.Generator()
        self.reset(seed)

    @property
    def config(self) -> PolicyConfig:
        """The model's configuration (from the checkpoint)."""
        return self.net.cfg

    @classmethod
    def load(cls, path: Optional[PathLike] = None,
             runtime: Optional[PolicyRuntimeConfig] = None, **overrides: Any) -> 'FlowPolicy':
        """Load a checkpoint with run-time settings from ``config/policy.yaml``.

        ``path`` defaults to the YAML's ``checkpoint``; ``overrides`` replace run-time fields
        (``flow_steps``, ``n_samples``, ``selection``, ``seed``). ``torch_threads`` > 0 sets
        torch's intra-op thread count for the process.
        """
        rt = runtime if runtime is not None else PolicyRuntimeConfig.load()
        if overrides:
            rt = PolicyRuntimeConfig.from_dict(dict(rt.to_dict(), **overrides))
        if rt.torch_threads > 0:
            torch.set_num_threads(rt.torch_threads)
        net, normalizer, info = load_for_inference(resolve_checkpoint(path or rt.checkpoint))
        expected_period = 1.0 / rt.decision_rate_hz
        if abs(net.cfg.decision_period_s - expected_period) > 1e-6:
            raise ValueError(f'checkpoint was trained at {net.cfg.decision_period_s} s per '
                             f'step, runtime asks {expected_period} s')
        return cls(net, normalizer, rt.flow_steps, rt.n_samples, rt.selection, rt.seed, info)

    def reset(self, seed: Optional[int] = None) -> None:
        """Restart the noise stream (at ``seed``, or at the last seed given)."""
        if seed is not None:
            self.seed = int(seed)
        self.generator.manual_seed(self.seed)

    def _check(self, obs: Observation) -> None:
        cfg = self.config
        images, ee = obs.get('images'), obs.get('ee_pos')
        shape = (cfg.n_obs_steps, cfg.image_size_px, cfg.image_size_px, 3)
        if not isinstance(images, np.ndarray) or images.shape != shape \
                or images.dtype != np.uint8:
            raise ValueError(f'obs["images"] must be uint8 {shape}, got '
                             f'{getattr(images, "dtype", type(images))} '
                             f'{getattr(images, "shape", None)}')
        ee = np.asarray(ee, dtype=float) if ee is not None else None
        if ee is None or ee.shape != (3,) or not np.isfinite(ee).all():
            raise ValueError(f'obs["ee_pos"] must be 3 finite numbers, got {ee}')
        if cfg.goal_dim:
            goal = obs.get('goal')
            goal = np.asarray(goal, dtype=float) if goal is not None else None
            if goal is None or goal.shape != (2,) or not np.isfinite(goal).all():
                raise ValueError(f'this policy takes the goal: obs["goal"] must be 2 finite '
                                 f'numbers (xy [m]), got {goal}')

    @torch.inference_mode()
    def act(self, obs: Observation, steps: Optional[int] = None,
            n_samples: Optional[int] = None, seed: Optional[int] = None,
            stamp: Optional[float] = None) -> ActionChunk:
        """Sample a chunk for ``obs`` (images (n_obs, S, S, 3) uint8 oldest first, ee_pos (3,)).

        A policy with the goal input (``config.goal_dim`` 2) also needs ``goal`` (2,) [m].
        ``steps``/``n_samples`` override the defaults for this call. ``stamp`` (observation
        time [s]) defaults to ``obs.get('stamp', 0.0)``. Raises ``ValueError`` on bad input.
        """
        t0 = time.perf_counter()
        self._check(obs)
        cfg = self.config
        images = images_to_tensor(torch.from_numpy(np.ascontiguousarray(obs['images'])))[None]
        ee_xy = np.asarray(obs['ee_pos'], dtype=np.float32)[None, :cfg.proprio_dim]
        low_dim = low_dim_input(ee_xy, obs['goal'] if cfg.goal_dim else None)
        proprio = torch.from_numpy(self.normalizer.normalize('proprio', low_dim))
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else self.generator
        out = self._sample(self.net.encode(images, proprio), steps or self.steps,
                           n_samples or self.n_samples, gen)
        xy = self.normalizer.unnormalize('action', out.samples.numpy().astype(np.float64))
        if cfg.action_frame == 'relative_ee':
            xy = xy + ee_xy.astype(np.float64)[None]
        samples = np.concatenate([xy, np.full(xy.shape[:2] + (1,), cfg.push_height_m)], axis=2)
        return ActionChunk(
            positions=samples[out.index].copy(),
            times_from_start=np.arange(cfg.horizon) * cfg.decision_period_s,
            samples=samples,
            stamp=float(stamp if stamp is not None else obs.get('stamp', 0.0)),
            selected=out.index,
            compute_time_s=time.perf_counter() - t0)

    def _sample(self, obs_cond: torch.Tensor, steps: int, n_samples: int,
                generator: torch.Generator) -> FlowSample:
        """Draw the chunks of one decision (normalised); subclasses change the sampler."""
        return sample_chunks(self.net, obs_cond, steps, n_samples, generator, self.selection,
                             fast=self.fast)


def make_scheduler(policy: Any, runtime: Optional[PolicyRuntimeConfig] = None) -> ChunkScheduler:
    """Build the :class:`ChunkScheduler` of ``config/policy.yaml`` around any agent."""
    rt = runtime if runtime is not None else PolicyRuntimeConfig.load()
    return ChunkScheduler(policy, rt.n_action_steps, rt.smoothing, rt.blend_steps,
                          rt.ensemble_decay)


def make_agent(policy: FlowPolicy, runtime: Optional[PolicyRuntimeConfig] = None,
               **overrides: Any) -> ChunkingAgent:
    """Wrap ``policy`` for the lock-step runner (``reset()``, ``act(obs) -> target``).

    ``overrides`` replace run-time fields (e.g. ``smoothing='none'``).
    """
    rt = runtime if runtime is not None else PolicyRuntimeConfig.load()
    if overrides:
        rt = PolicyRuntimeConfig.from_dict(dict(rt.to_dict(), **overrides))
    return ChunkingAgent(make_scheduler(policy, rt), policy.config.n_obs_steps, policy.seed)
