"""The sampler's fast inference path computes what the plain module forward computes.

:meth:`VelocityUNet1D.forward_film` (time-major GEMM convolutions, FiLM rows shared by the
batch) must match :meth:`VelocityUNet1D.forward` to float rounding, for random and for the
shipped weights, and must follow weight updates (RL fine-tuning loads new velocity weights).
"""

import dataclasses

import numpy as np
import pytest
import torch

from genpolicy_ros.policy.config import PolicyConfig, PolicyRuntimeConfig
from genpolicy_ros.policy.flow import sample_chunks
from genpolicy_ros.policy.network import FlowPolicyNet
from genpolicy_ros.policy.policy import FlowPolicy, resolve_checkpoint

torch.set_num_threads(1)
TOL = 1e-5


@pytest.fixture(scope='module')
def cfg() -> PolicyConfig:
    """Return the model config of the package YAML."""
    return PolicyConfig.load(decision_period_s=0.1, push_height_m=0.02)


def _net(cfg: PolicyConfig, seed: int) -> FlowPolicyNet:
    torch.manual_seed(seed)
    return FlowPolicyNet(cfg).eval()


def _reference_velocity(net: FlowPolicyNet, x: torch.Tensor, t: float,
                        cond: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return net(x, torch.full((n,), t), cond.expand(n, -1))


@pytest.mark.parametrize('variant', ['yaml', 'three_levels_k3'])
@torch.inference_mode()
def test_forward_film_matches_forward(cfg, variant):
    """Check: forward_film equals forward for several batch sizes, times and UNet shapes."""
    if variant == 'three_levels_k3':
        cfg = dataclasses.replace(cfg, unet_channels=[32, 64, 96], unet_kernel_size=3)
    net = _net(cfg, 0)
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn((1, cfg.obs_cond_dim), generator=gen)
    times = torch.tensor([0.0, 0.25, 0.9])
    films = net.velocity.film_table(times, cond)
    for n in (1, 4, 16):
        x = torch.randn((n, cfg.horizon, cfg.action_dim), generator=gen)
        for film, t in zip(films, times.tolist()):
            fast = net.velocity.forward_film(x, film)
            ref = _reference_velocity(net, x, t, cond)
            assert fast.shape == ref.shape
            assert float((fast - ref).abs().max()) < TOL


@pytest.mark.parametrize('steps,n_samples', [(1, 1), (2, 4), (10, 1), (10, 16)])
def test_sample_chunks_fast_matches_reference(cfg, steps, n_samples):
    """Check: same seed, same chunks (to float rounding) with and without the fast path."""
    net = _net(cfg, 2)
    cond = torch.randn(1, cfg.obs_cond_dim)
    fast = sample_chunks(net, cond, steps, n_samples, torch.Generator().manual_seed(3))
    ref = sample_chunks(net, cond, steps, n_samples, torch.Generator().manual_seed(3),
                        fast=False)
    assert float((fast.samples - ref.samples).abs().max()) < TOL
    again = sample_chunks(net, cond, steps, n_samples, torch.Generator().manual_seed(3))
    assert torch.equal(fast.samples, again.samples)  # deterministic given the seed


@torch.inference_mode()
def test_fast_path_follows_weight_updates(cfg):
    """Check: after load_state_dict (as the RL rollout workers do) no stale weights are used."""
    net, other = _net(cfg, 4), _net(cfg, 5)
    cond = torch.randn(1, cfg.obs_cond_dim)
    x = torch.randn(3, cfg.horizon, cfg.action_dim)
    before = net.velocity.forward_film(x, net.velocity.film_table(torch.tensor([0.5]), cond)[0])
    net.velocity.load_state_dict(other.velocity.state_dict())
    after = net.velocity.forward_film(x, net.velocity.film_table(torch.tensor([0.5]), cond)[0])
    assert not torch.allclose(before, after)
    assert float((after - _reference_velocity(other, x, 0.5, cond)).abs().max()) < TOL


def test_checkpoint_keys_unchanged(cfg):
    """Check: the fast path adds nothing to the state dict (checkpoint format unchanged)."""
    keys = FlowPolicyNet(cfg).state_dict().keys()
    assert not any('film_offset' in k for k in keys)


def test_shipped_policy_fast_matches_reference():
    """Check: the shipped policy's chunks equal the reference path's for the same seed."""
    rt = PolicyRuntimeConfig.load()
    if not resolve_checkpoint(rt.checkpoint).is_file():
        pytest.skip('no shipped checkpoint')
    policy = FlowPolicy.load(runtime=rt)
    cfg = policy.config
    rng = np.random.default_rng(7)
    for steps, n in ((rt.flow_steps, rt.n_samples), (10, 16)):
        obs = {'images': rng.integers(0, 256, (cfg.n_obs_steps, cfg.image_size_px,
                                               cfg.image_size_px, 3), dtype=np.uint8),
               'ee_pos': np.array([0.45, 0.05, cfg.push_height_m])}
        policy.fast = True
        fast = policy.act(obs, steps=steps, n_samples=n, seed=11)
        policy.fast = False
        ref = policy.act(obs, steps=steps, n_samples=n, seed=11)
        assert np.abs(fast.samples - ref.samples).max() < TOL
        assert fast.selected == ref.selected
