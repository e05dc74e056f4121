"""Rectified flow (flow matching with straight paths): training loss and Euler sampler.

Convention: ``x0 ~ N(0, I)`` is noise, ``x1`` the (normalised) action chunk, the path is
``x_t = (1 - t) x0 + t x1`` and the network learns its velocity ``x1 - x0`` (Liu et al. 2022,
Lipman et al. 2022). Sampling integrates ``dx/dt = v(x, t | obs)`` from t = 0 to 1 with K
Euler steps.

Note on K = 1: at t = 0 the optimal velocity is ``E[x1 | obs] - x0``, so one Euler step lands
every sample on the conditional mean; the N samples then carry no spread for the monitor.
Use K >= 2 when the samples matter.

Which sample is executed (see :func:`select_sample`): ``first`` (default) executes sample 0.
Its noise is the first block drawn from the generator, so the executed chunk does not depend
on N: changing the monitor's sample count never changes what the robot does. ``medoid``
executes the sample closest to the sample mean (a robust central choice that stays on one
mode, unlike the mean itself).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genpolicy_ros.policy.network import FlowPolicyNet


def flow_matching_loss(net: FlowPolicyNet, actions: torch.Tensor, images: torch.Tensor,
                       proprio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return the rectified-flow loss of a batch.

    ``actions`` (B, H, A) normalised chunk, ``images`` (B, n_obs, 3, H, W) float in [-1, 1],
    ``proprio`` (B, P) normalised. ``generator`` draws noise and times (seeded training).
    """
    b = actions.shape[0]
    noise = torch.randn(actions.shape, generator=generator, dtype=actions.dtype)
    t = torch.rand((b,), generator=generator, dtype=actions.dtype)
    tt = t[:, None, None]
    x_t = (1.0 - tt) * noise + tt * actions
    cond = net.encode(images, proprio)
    return F.mse_loss(net(x_t, t, cond), actions - noise)


@dataclass
class FlowSample:
    """Result of :func:`sample_chunks` (normalised action space)."""

    chunk: torch.Tensor    # (H, A) the chunk to execute
    samples: torch.Tensor  # (N, H, A) every sample, sample 0 first
    index: int             # which sample ``chunk`` is


def select_sample(samples: torch.Tensor, selection: str) -> int:
    """Return the index of the sample to execute (``first`` or ``medoid``)."""
    if selection == 'first' or samples.shape[0] == 1:
        return 0
    if selection == 'medoid':
        dist = (samples - samples.mean(dim=0, keepdim=True)).flatten(1).norm(dim=1)
        return int(torch.argmin(dist))
    raise ValueError(f'unknown selection {selection!r}')


@torch.inference_mode()
def sample_chunks(net: FlowPolicyNet, obs_cond: torch.Tensor, steps: int, n_samples: int,
                  generator: torch.Generator, selection: str = 'first',
                  fast: bool = True) -> FlowSample:
    """Draw ``n_samples`` chunks for one observation with ``steps`` Euler steps.

    ``obs_cond`` is the (1, C) output of ``net.encode`` (computed once, shared by the
    samples, which run as one batch). Deterministic given the generator state.

    ``fast`` (for a :class:`FlowPolicyNet`): compute the FiLM conditioning of all steps once
    and evaluate the velocity with :meth:`VelocityUNet1D.forward_film`; equal to the module
    forward (``fast=False``, the reference) to float rounding.
    """
    if steps < 1 or n_samples < 1:
        raise ValueError('steps and n_samples must be >= 1')
    cfg = net.cfg
    x = torch.randn((n_samples, cfg.horizon, cfg.action_dim), generator=generator,
                    dtype=obs_cond.dtype)
    dt = 1.0 / steps
    if fast and isinstance(net, FlowPolicyNet) and obs_cond.shape[0] == 1:
        # The times are those of the reference loop below (k * dt rounded to x's dtype).
        times = torch.tensor([k * dt for k in range(steps)], dtype=x.dtype)
        for film in net.velocity.film_table(times, obs_cond).unbind(0):
            x = x + dt * net.velocity.forward_film(x, film)
    else:
        cond = obs_cond.expand(n_samples, -1)
        for k in range(steps):
            t = torch.full((n_samples,), k * dt, dtype=x.dtype)
            x = x + dt * net(x, t, cond)
    index = select_sample(x, selection)
    return FlowSample(chunk=x[index].clone(), samples=x, index=index)
