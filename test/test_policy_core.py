"""Unit tests of the flow policy core: config, network, flow sampler, dataset, policy API."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy_ros.policy.checkpoint import atomic_save, export_checkpoint, load_for_inference
from genpolicy_ros.policy.config import PolicyConfig, PolicyRuntimeConfig, TrainConfig
from genpolicy_ros.policy.dataset import (ChunkDataset, load_demos, Normalizer, read_meta,
                                          split_episodes, write_synthetic_demos)
from genpolicy_ros.policy.flow import flow_matching_loss, sample_chunks, select_sample
from genpolicy_ros.policy.network import (count_parameters, FlowPolicyNet, images_to_tensor,
                                          random_shift)
from genpolicy_ros.policy.policy import FlowPolicy, resolve_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def cfg() -> PolicyConfig:
    """Return the model config of the package YAML."""
    return PolicyConfig.load(decision_period_s=0.1, push_height_m=0.02)


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory) -> Path:
    """Write a small synthetic demo set."""
    return write_synthetic_demos(tmp_path_factory.mktemp('demos') / 'd', n_episodes=6,
                                 length=12, seed=3)


def _policy_file(tmp_path: Path, cfg: PolicyConfig, seed: int = 0) -> Path:
    """Write a training-format checkpoint of a random net (shapes are what matter)."""
    torch.manual_seed(seed)
    net = FlowPolicyNet(cfg)
    norm = Normalizer({'action_min': [0.3, -0.2], 'action_max': [0.7, 0.2],
                       'proprio_min': [0.3, -0.2], 'proprio_max': [0.7, 0.2]})
    path = tmp_path / 'checkpoint.pt'
    atomic_save({'model': net.state_dict(), 'ema': net.state_dict(), 'step': 7,
                 'normalizer': norm.state_dict(), 'policy_config': cfg.to_dict(),
                 'command': 'test', 'history': {'val_loss': [0.5]}}, path)
    return path


def _runtime(**kw) -> PolicyRuntimeConfig:
    """Return the package run-time config with some fields replaced."""
    return PolicyRuntimeConfig.from_dict(dict(PolicyRuntimeConfig.load().to_dict(), **kw))


def _obs(rng: np.random.Generator, cfg: PolicyConfig) -> dict:
    """Return a random valid observation."""
    s = cfg.image_size_px
    return {'images': rng.integers(0, 256, (cfg.n_obs_steps, s, s, 3), dtype=np.uint8),
            'ee_pos': np.array([0.5, 0.0, 0.02])}


# ---------------------------------------------------------------- config
def test_yaml_configs_load_and_reject_unknown_keys(cfg):
    """Check: yaml configs load and reject unknown keys."""
    assert cfg.horizon == 16 and cfg.n_action_steps == 8 and cfg.action_dim == 2
    assert cfg.push_height_m == 0.02
    rt = PolicyRuntimeConfig.load()
    assert rt.flow_steps >= 1 and rt.n_samples >= 1 and rt.n_action_steps == cfg.n_action_steps
    tc = TrainConfig.load()
    assert tc.batch_size > 0 and 0 < tc.ema_decay < 1
    with pytest.raises(KeyError):
        PolicyConfig.from_dict(dict(cfg.to_dict(), bogus=1))
    bad = cfg.to_dict()
    del bad['horizon']
    with pytest.raises(KeyError):
        PolicyConfig.from_dict(bad)
    with pytest.raises(ValueError):
        _runtime(smoothing='wobble')


# ---------------------------------------------------------------- network and flow
def test_network_shapes_and_size(cfg):
    """Check: network shapes and size."""
    net = FlowPolicyNet(cfg)
    n = count_parameters(net)
    assert 1_000_000 <= n <= 4_000_000, n
    images = images_to_tensor(torch.zeros((3, cfg.n_obs_steps, 96, 96, 3), dtype=torch.uint8))
    assert images.shape == (3, cfg.n_obs_steps, 3, 96, 96)
    assert float(images.min()) == -1.0
    cond = net.encode(images, torch.zeros(3, cfg.proprio_dim))
    assert cond.shape == (3, cfg.obs_cond_dim)
    v = net(torch.zeros(3, cfg.horizon, cfg.action_dim), torch.rand(3), cond)
    assert v.shape == (3, cfg.horizon, cfg.action_dim)


def test_flow_loss_backpropagates(cfg):
    """Check: flow loss backpropagates."""
    net = FlowPolicyNet(cfg)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, cfg.n_obs_steps, 3, 96, 96) * 2 - 1
    loss = flow_matching_loss(net, torch.rand(4, 16, 2), images, torch.zeros(4, 2), gen)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.obs_encoder.image.conv[0].weight.grad.abs().sum() > 0
    assert net.velocity.final[1].weight.grad.abs().sum() > 0


class _ExactVelocity(torch.nn.Module):
    """The exact rectified-flow velocity towards a single chunk x1: (x1 - x) / (1 - t)."""

    def __init__(self, cfg: PolicyConfig, target: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.target = target

    def forward(self, x, t, cond):
        return (self.target - x) / (1.0 - t)[:, None, None]


@pytest.mark.parametrize('steps', [1, 3, 10])
def test_euler_sampler_reaches_point_mass(cfg, steps):
    """Check: euler sampler reaches point mass."""
    target = torch.linspace(-1, 1, cfg.horizon * cfg.action_dim).reshape(cfg.horizon, -1)
    out = sample_chunks(_ExactVelocity(cfg, target), torch.zeros(1, 4), steps, 5,
                        torch.Generator().manual_seed(1))
    assert out.samples.shape == (5, cfg.horizon, cfg.action_dim)
    assert torch.allclose(out.samples, target.expand(5, -1, -1), atol=1e-5)


def test_sampler_deterministic_and_sample0_independent_of_n(cfg):
    """Check: sampler deterministic and sample0 independent of n."""
    net = FlowPolicyNet(cfg).eval()
    cond = torch.randn(1, cfg.obs_cond_dim)
    a = sample_chunks(net, cond, 2, 4, torch.Generator().manual_seed(5))
    b = sample_chunks(net, cond, 2, 4, torch.Generator().manual_seed(5))
    c = sample_chunks(net, cond, 2, 1, torch.Generator().manual_seed(5))
    d = sample_chunks(net, cond, 2, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a.samples, b.samples)
    assert torch.allclose(a.samples[0], c.samples[0], atol=1e-5)
    assert not torch.allclose(a.samples, d.samples)
    assert a.index == 0 and torch.equal(a.chunk, a.samples[0])


def test_select_sample_medoid():
    """Check: select sample medoid."""
    s = torch.tensor([[[5.0]], [[0.1]], [[-0.2]], [[0.0]]])
    assert select_sample(s, 'first') == 0
    assert select_sample(s, 'medoid') == 1  # mean 1.225: 0.1 is the closest sample
    with pytest.raises(ValueError):
        select_sample(s, 'mean')


# ---------------------------------------------------------------- data
def test_dataset_windows_pad_at_episode_ends(demo_dir):
    """Check: dataset windows pad at episode ends."""
    meta = read_meta(demo_dir)
    assert meta.push_height_m == 0.02 and abs(meta.decision_period_s - 0.1) < 1e-12
    train, val, _, val_names = load_demos(demo_dir, 2, 16, False, 0.34, seed=0)
    assert len(train.episodes) + len(val.episodes) == 6 and len(val_names) == 2
    assert not set(val_names) & {e.name for e in train.episodes}
    ep = train.episodes[0]
    raw = train.get(np.array([0, 11]))  # first and last step of episode 0 (length 12)
    assert np.array_equal(raw['images'][0, 0], raw['images'][0, 1])  # start: frame repeated
    assert np.array_equal(raw['images'][0, 1], ep.images[0])
    assert np.array_equal(raw['images'][1, 0], ep.images[10])
    assert np.allclose(raw['action'][0], ep.action[np.minimum(np.arange(16), 11)])
    assert np.allclose(raw['action'][1], ep.action[11])  # end: last action held
    assert np.allclose(raw['proprio'][1], ep.ee_xy[11])


def test_relative_actions_are_offsets_from_measured_ee(demo_dir):
    """Check: relative_ee chunks are the absolute targets minus the EE xy at the observation."""
    absolute, _, _, _ = load_demos(demo_dir, 2, 16, False, 0.0, seed=0)
    relative, _, _, _ = load_demos(demo_dir, 2, 16, True, 0.0, seed=0)
    rows = np.arange(len(absolute))
    a, r = absolute.get(rows, with_images=False), relative.get(rows, with_images=False)
    assert np.allclose(r['action'], a['action'] - a['proprio'][:, None, :])
    norm = relative.fit_normalizer()
    assert np.all(norm.stats['action_max'] - norm.stats['action_min'] < 0.35)


def test_split_by_episode_reproducible():
    """Check: split by episode reproducible."""
    a = split_episodes(100, 0.05, seed=1)
    assert a == split_episodes(100, 0.05, seed=1)
    assert len(a[1]) == 5 and not set(a[0]) & set(a[1])
    assert len(split_episodes(3, 0.01, 0)[1]) == 1


def test_normalizer_round_trip(demo_dir):
    """Check: normalizer round trip."""
    train, _, _, _ = load_demos(demo_dir, 2, 16, False, 0.0, seed=0)
    norm = train.fit_normalizer()
    b = train.batch(np.arange(len(train)), norm)
    assert b['action'].min() >= -1.0 - 1e-6 and b['action'].max() <= 1.0 + 1e-6
    x = np.array([[0.4, 0.5]], dtype=np.float32)
    assert np.allclose(norm.unnormalize('action', norm.normalize('action', x)), x, atol=1e-6)
    again = Normalizer(norm.state_dict())
    assert np.allclose(again.normalize('proprio', x), norm.normalize('proprio', x))


def test_random_shift_keeps_frames_aligned():
    """Check: random shift keeps frames aligned."""
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 2, 3, 8, 8)
    assert torch.equal(random_shift(x, 0, gen), x)
    y = random_shift(x, 2, gen)
    assert y.shape == x.shape
    # the same shift on both frames: frame 1 - frame 0 is constant as in the input
    diff_in = (x[:, 1] - x[:, 0]).unique()
    assert torch.equal((y[:, 1] - y[:, 0]).unique(), diff_in)


def test_chunk_dataset_rejects_empty():
    """Check: chunk dataset rejects empty."""
    with pytest.raises(ValueError):
        ChunkDataset([], 2, 16, False)


# ---------------------------------------------------------------- policy API
def test_policy_act_contract(tmp_path, cfg):
    """Check: policy act contract."""
    rt = _runtime(n_samples=4, flow_steps=2)
    policy = FlowPolicy.load(_policy_file(tmp_path, cfg), runtime=rt)
    rng = np.random.default_rng(0)
    obs = _obs(rng, cfg)
    chunk = policy.act(obs, stamp=12.5)
    assert chunk.positions.shape == (16, 3) and chunk.samples.shape == (4, 16, 3)
    assert np.allclose(chunk.positions[:, 2], 0.02)
    assert np.allclose(chunk.times_from_start, np.arange(16) * 0.1)
    assert chunk.stamp == 12.5 and np.array_equal(chunk.positions, chunk.samples[0])
    assert np.isfinite(chunk.samples).all()
    # determinism: reset(seed) restarts the stream; seed= is a private stream
    policy.reset(3)
    a1, a2 = policy.act(obs), policy.act(obs)
    policy.reset(3)
    assert np.array_equal(policy.act(obs).samples, a1.samples)
    assert not np.array_equal(a1.samples, a2.samples)
    s1 = policy.act(obs, seed=9, n_samples=16, steps=1)
    assert s1.samples.shape == (16, 16, 3)
    assert np.array_equal(policy.act(obs, seed=9, n_samples=16, steps=1).samples, s1.samples)


@pytest.mark.parametrize('bad', [
    {'images': np.zeros((1, 96, 96, 3), np.uint8), 'ee_pos': np.zeros(3)},
    {'images': np.zeros((2, 96, 96, 3), np.float32), 'ee_pos': np.zeros(3)},
    {'images': np.zeros((2, 96, 96, 3), np.uint8), 'ee_pos': np.array([0.0, np.nan, 0.0])},
    {'images': np.zeros((2, 96, 96, 3), np.uint8), 'ee_pos': np.zeros(2)},
    {'ee_pos': np.zeros(3)},
])
def test_policy_rejects_bad_observations(tmp_path, cfg, bad):
    """Check: policy rejects bad observations."""
    policy = FlowPolicy.load(_policy_file(tmp_path, cfg), runtime=_runtime())
    with pytest.raises(ValueError):
        policy.act(bad)


def test_export_fp16_matches_float32(tmp_path, cfg):
    """Check: export fp16 matches float32."""
    src = _policy_file(tmp_path, cfg)
    info = export_checkpoint(src, tmp_path / 'ship.pt', fp16=True)
    assert info['step'] == 7 and info['bytes'] < 20e6
    net32, _, _ = load_for_inference(src)
    net16, _, meta = load_for_inference(tmp_path / 'ship.pt')
    assert meta['format'] != 'train'
    torch.manual_seed(0)
    images = torch.rand(1, cfg.n_obs_steps, 3, 96, 96) * 2 - 1
    c32, c16 = net32.encode(images, torch.zeros(1, 2)), net16.encode(images, torch.zeros(1, 2))
    x, t = torch.randn(1, 16, 2), torch.tensor([0.3])
    assert torch.allclose(net32(x, t, c32), net16(x, t, c16), atol=2e-2)
    # buffers stay float32-exact (time-embedding frequencies)
    assert torch.equal(net32.velocity.time_embed[0].freqs, net16.velocity.time_embed[0].freqs)


def test_checkpoint_config_wins_over_yaml(tmp_path, cfg):
    """Check: checkpoint config wins over yaml."""
    small = dataclasses.replace(cfg, unet_channels=[32, 64], obs_cond_dim=64)
    net, _, _ = load_for_inference(_policy_file(tmp_path, small))
    assert net.cfg.unet_channels == [32, 64]


def test_shipped_checkpoint_contract():
    """Check: the shipped checkpoint loads, is small and acts within the workspace."""
    rt = PolicyRuntimeConfig.load()
    path = resolve_checkpoint(rt.checkpoint)
    if not path.is_file():
        pytest.skip(f'no shipped checkpoint at {path}')
    assert path.stat().st_size < 20e6
    policy = FlowPolicy.load(runtime=rt)
    cfg = policy.config
    assert policy.info['step'] > 0
    rng = np.random.default_rng(1)
    chunk = policy.act(_obs(rng, cfg))
    assert chunk.samples.shape == (rt.n_samples, cfg.horizon, 3)
    assert np.allclose(chunk.positions[:, 2], cfg.push_height_m)
    assert np.all(np.abs(chunk.positions[:, :2]) < 1.0)  # metres, near the robot
