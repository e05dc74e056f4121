"""Policy-gradient pieces for fine-tuning the flow policy through its sampling chain (DPPO).

DPPO (Ren et al. 2024, "Diffusion Policy Policy Optimization") treats the denoising chain of a
diffusion policy as part of the MDP: every denoising step is a Gaussian policy whose log
probability is tractable, and PPO updates the last steps. The flow policy samples with
deterministic Euler steps ``x_{k+1} = x_k + dt v(x_k, t_k | obs)``; here the last
``n_stochastic`` steps become Gaussian::

    x_{k+1} = x_k + dt v(x_k, t_k | obs) + sigma * L eps,   eps ~ N(0, I)

so each has log probability ``log N(x_{k+1}; x_k + dt v, sigma^2 L L^T)`` (in the normalised
action space). ``L`` correlates the noise along the chunk's time axis (exponential kernel,
:func:`noise_cholesky`; the identity for white noise): independent noise on every waypoint
makes the executed targets jitter, and the filter's speed cap would then correct the noise
rather than the policy, while a smooth perturbation of the chunk explores where to push.
The initial noise ``x_0 ~ N(0, I)`` and the deterministic steps do not depend on the
parameters through a likelihood, so PPO's ratio is over the stochastic steps only; as in DPPO
each stochastic step is its own PPO sample carrying the advantage of the environment decision
(one decision = one executed chunk). This module is the math only (sampling chain, log
probabilities, GAE, PPO losses, value network); :mod:`genpolicy_ros.policy.finetune` runs it.
"""

from dataclasses import dataclass
import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from genpolicy_ros.policy.flow import FlowSample, select_sample
from genpolicy_ros.policy.network import FlowPolicyNet

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def stochastic_steps(steps: int, n_stochastic: int) -> range:
    """Return the indices k of the Gaussian Euler steps (the last ``n_stochastic``)."""
    if not 0 <= n_stochastic <= steps:
        raise ValueError(f'need 0 <= n_stochastic <= steps, got {n_stochastic}, {steps}')
    return range(steps - n_stochastic, steps)


def noise_cholesky(horizon: int, correlation_steps: float) -> torch.Tensor:
    """Cholesky factor (H, H) of the noise correlation along a chunk's time axis.

    ``exp(-|i - j| / correlation_steps)`` (an AR(1) process, well conditioned); the identity
    for ``correlation_steps <= 0`` (white noise).
    """
    if correlation_steps <= 0.0:
        return torch.eye(horizon)
    i = torch.arange(horizon, dtype=torch.float64)
    cov = torch.exp(-(i[:, None] - i[None, :]).abs() / float(correlation_steps))
    return torch.linalg.cholesky(cov).to(torch.float32)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float,
                      chol: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Log density of chunks ``x`` (B, H, A) under ``N(mean, std^2 L L^T)`` per action dim.

    ``chol`` is ``L`` (H, H), correlating the H waypoints of each action dimension (None: the
    identity). Returns (B,): the sum over waypoints and action dimensions.
    """
    diff = (x - mean) / std
    log_det = 0.0
    if chol is not None:
        diff = torch.linalg.solve_triangular(chol, diff, upper=False)
        log_det = float(torch.log(torch.diagonal(chol)).sum()) * x.shape[-1]
    per_dim = -0.5 * diff * diff - math.log(std) - LOG_SQRT_2PI
    return per_dim.flatten(1).sum(dim=1) - log_det


@dataclass
class ChainSample(FlowSample):
    """A :class:`FlowSample` plus the denoising chain of the executed sample.

    ``chain`` is (steps + 1, H, A): ``x_0`` (noise) to ``x_steps`` (= ``chunk``).
    """

    chain: torch.Tensor = None  # type: ignore[assignment]


@torch.no_grad()
def sample_chain(net: FlowPolicyNet, obs_cond: torch.Tensor, steps: int, n_samples: int,
                 n_stochastic: int, sigma: float, generator: torch.Generator,
                 selection: str = 'first', chol: Optional[torch.Tensor] = None
                 ) -> ChainSample:
    """Sample ``n_samples`` chunks; the executed one (sample 0) takes Gaussian last steps.

    The initial noise is drawn exactly as :func:`~genpolicy_ros.policy.flow.sample_chunks`
    draws it, so with ``sigma = 0`` the chunks are the deterministic sampler's. The other
    samples (for the monitor) stay deterministic; ``chol`` correlates the noise (see
    :func:`noise_cholesky`). Only ``selection='first'`` is supported:
    the executed chunk must be the one whose chain is recorded.
    """
    if selection != 'first':
        raise ValueError("exploration needs selection 'first' (sample 0 is executed)")
    if steps < 1 or n_samples < 1:
        raise ValueError('steps and n_samples must be >= 1')
    cfg = net.cfg
    x = torch.randn((n_samples, cfg.horizon, cfg.action_dim), generator=generator,
                    dtype=obs_cond.dtype)
    cond = obs_cond.expand(n_samples, -1)
    dt = 1.0 / steps
    noisy = set(stochastic_steps(steps, n_stochastic))
    chain = [x[0].clone()]
    for k in range(steps):
        t = torch.full((n_samples,), k * dt, dtype=x.dtype)
        x = x + dt * net(x, t, cond)
        if k in noisy and sigma > 0.0:
            eps = torch.randn((cfg.horizon, cfg.action_dim), generator=generator,
                              dtype=x.dtype)
            if chol is not None:
                eps = chol @ eps
            x[0] = x[0] + sigma * eps
        chain.append(x[0].clone())
    index = select_sample(x, selection)
    return ChainSample(chunk=x[index].clone(), samples=x, index=index,
                       chain=torch.stack(chain))


def chain_log_probs(net: FlowPolicyNet, obs_cond: torch.Tensor, chains: torch.Tensor,
                    steps: int, n_stochastic: int, sigma: float,
                    chol: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Log probability of each stochastic step of recorded chains, differentiable.

    ``obs_cond`` (B, C), ``chains`` (B, steps + 1, H, A). Returns (B, n_stochastic). All the
    stochastic steps go through the network as one batch.
    """
    ks = list(stochastic_steps(steps, n_stochastic))
    b = chains.shape[0]
    dt = 1.0 / steps
    x_k = torch.cat([chains[:, k] for k in ks])
    x_next = torch.cat([chains[:, k + 1] for k in ks])
    t = torch.cat([torch.full((b,), k * dt, dtype=chains.dtype) for k in ks])
    cond = obs_cond.repeat(len(ks), 1)
    mean = x_k + dt * net(x_k, t, cond)
    return gaussian_log_prob(x_next, mean, sigma, chol).reshape(len(ks), b).T


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, dones: np.ndarray,
        gamma: float, lam: float) -> Tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016) over concatenated episodes.

    ``rewards``, ``values`` (V(s_t)), ``next_values`` (V(s_{t+1}), used unless ``dones[t]``)
    and ``dones`` (the episode ends after step t) are (T,). Returns (advantages, returns),
    returns = advantages + values (the value targets).
    """
    rewards, values = np.asarray(rewards, float), np.asarray(values, float)
    next_values, dones = np.asarray(next_values, float), np.asarray(dones, bool)
    adv = np.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        live = 0.0 if dones[t] else 1.0
        delta = rewards[t] + gamma * next_values[t] * live - values[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
    return adv, adv + values


def ppo_clip_objective(logp_new: torch.Tensor, logp_old: torch.Tensor,
                       advantages: torch.Tensor, clip: float) -> Tuple[torch.Tensor, Dict]:
    """Return PPO's clipped surrogate (to maximise), averaged over samples and steps.

    ``logp_*`` (B, S) per stochastic step, ``advantages`` (B,) shared by a decision's steps.
    Returns (objective, stats) with the approximate KL and the clipped fraction.
    """
    log_ratio = logp_new - logp_old
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None].expand_as(ratio)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    with torch.no_grad():
        stats = {'approx_kl': float(((ratio - 1.0) - log_ratio).mean()),
                 'clip_fraction': float(((ratio - 1.0).abs() > clip).float().mean())}
    return surrogate.mean(), stats


class ValueMLP(nn.Module):
    """State value of a decision from the (frozen) observation embedding and elapsed time.

    Input: the policy's observation conditioning (``obs_cond_dim``, detached: the encoder is
    not fine-tuned) and the fraction of the episode's time limit already used.
    """

    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + 1, hidden), nn.Mish(),
                                 nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, 1))

    def forward(self, obs_cond: torch.Tensor, time_fraction: torch.Tensor) -> torch.Tensor:
        """Return (B,) values."""
        return self.net(torch.cat([obs_cond, time_fraction[:, None]], dim=1)).squeeze(1)
