"""RL fine-tuning (genpolicy-finetune): DPPO math, task variant, and a smoke fine-tune.

The smoke fine-tune runs the real lock-step stack (shipped policy, CBF filter, gating monitor)
on a tiny setting and checks that the PPO update improves its surrogate objective on the
collected batch and that the filter computed every command of every rollout.
"""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genpolicy_ros.policy.config import PolicyConfig
from genpolicy_ros.policy.dppo import (chain_log_probs, gae, gaussian_log_prob, noise_cholesky,
                                       ppo_clip_objective, sample_chain, stochastic_steps)
from genpolicy_ros.policy.finetune import FinetuneConfig, finetune
from genpolicy_ros.policy.finetune_rollout import episode_transitions
from genpolicy_ros.policy.flow import sample_chunks
from genpolicy_ros.policy.network import FlowPolicyNet
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.variants import apply_task_variant, variant_names

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def tiny_net() -> FlowPolicyNet:
    """Return a small random flow network (the math does not care about its size)."""
    cfg = PolicyConfig.load(decision_period_s=0.1, push_height_m=0.02)
    cfg = dataclasses.replace(cfg, encoder_channels=[8], encoder_strides=[4],
                              spatial_keypoints=4, image_feature_dim=8, obs_cond_dim=16,
                              unet_channels=[16, 32], time_embed_dim=16)
    torch.manual_seed(0)
    return FlowPolicyNet(cfg).eval()


# ---------------------------------------------------------------- log probabilities
def test_white_gaussian_log_prob_matches_torch_normal():
    gen = torch.Generator().manual_seed(1)
    x, mean = torch.randn(5, 16, 2, generator=gen), torch.randn(5, 16, 2, generator=gen)
    expected = torch.distributions.Normal(mean, 0.07).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, 0.07), expected)


def test_correlated_gaussian_log_prob_matches_multivariate_normal():
    gen = torch.Generator().manual_seed(2)
    chol = noise_cholesky(16, 3.0)
    assert torch.allclose(chol @ chol.T, torch.exp(-(torch.arange(16.)[:, None]
                                                     - torch.arange(16.)[None]).abs() / 3.0),
                          atol=1e-5)
    x, mean = torch.randn(4, 16, 2, generator=gen), torch.randn(4, 16, 2, generator=gen)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(16),
                                                 scale_tril=0.05 * chol.double().float())
    # One 16-dimensional Gaussian per action dimension (time axis correlated).
    expected = mvn.log_prob((x - mean).transpose(1, 2)).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, 0.05, chol), expected,
                               rtol=1e-4, atol=1e-3)
    assert torch.equal(noise_cholesky(16, 0.0), torch.eye(16))


def test_chain_log_prob_is_the_density_of_the_injected_noise(tiny_net):
    cond = torch.randn(1, tiny_net.cfg.obs_cond_dim, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    out = sample_chain(tiny_net, cond, steps=3, n_samples=4, n_stochastic=2, sigma=0.1,
                       generator=gen)
    assert out.chain.shape == (4, 16, 2) and torch.equal(out.chain[-1], out.chunk)
    # Replay the generator: x0 of all samples, then one noise block per stochastic step.
    replay = torch.Generator().manual_seed(4)
    torch.randn((4, 16, 2), generator=replay)
    eps = [torch.randn((16, 2), generator=replay) for _ in range(2)]
    logp = chain_log_probs(tiny_net, cond, out.chain[None], 3, 2, 0.1)
    expected = [torch.distributions.Normal(0.0, 0.1).log_prob(0.1 * e).sum() for e in eps]
    torch.testing.assert_close(logp[0], torch.stack(expected), rtol=1e-4, atol=1e-3)
    assert list(stochastic_steps(3, 2)) == [1, 2]


def test_sigma_zero_chain_is_the_deterministic_sampler(tiny_net):
    cond = torch.randn(1, tiny_net.cfg.obs_cond_dim, generator=torch.Generator().manual_seed(5))
    a = sample_chain(tiny_net, cond, 2, 3, 2, 0.0, torch.Generator().manual_seed(6))
    b = sample_chunks(tiny_net, cond, 2, 3, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a.samples, b.samples)
    with pytest.raises(ValueError):
        sample_chain(tiny_net, cond, 2, 3, 2, 0.1, torch.Generator(), selection='medoid')


# ---------------------------------------------------------------- GAE and PPO
def test_gae_matches_a_hand_computed_case():
    # gamma 0.9, lambda 0.8; episode 1 = steps 0..2 (ends), episode 2 = step 3 (ends).
    adv, ret = gae(rewards=[1.0, 0.0, 2.0, 0.5], values=[0.5, 0.4, 0.3, 0.2],
                   next_values=[0.4, 0.3, 9.9, 9.9], dones=[False, False, True, True],
                   gamma=0.9, lam=0.8)
    a2 = 2.0 - 0.3                                   # terminal: no bootstrap from 9.9
    a1 = (0.0 + 0.9 * 0.3 - 0.4) + 0.72 * a2         # -0.13 + 1.224 = 1.094
    a0 = (1.0 + 0.9 * 0.4 - 0.5) + 0.72 * a1         # 0.86 + 0.78768 = 1.64768
    np.testing.assert_allclose(adv, [a0, a1, a2, 0.5 - 0.2])
    np.testing.assert_allclose(adv, [1.64768, 1.094, 1.7, 0.3])
    np.testing.assert_allclose(ret, adv + np.array([0.5, 0.4, 0.3, 0.2]))


def test_ppo_clip_objective_clips_the_ratio():
    adv = torch.tensor([1.0, -1.0])
    old = torch.zeros(2, 2)
    obj, stats = ppo_clip_objective(old, old, adv, clip=0.2)
    assert float(obj) == pytest.approx(0.0) and stats['clip_fraction'] == 0.0
    # ratio 2 everywhere: positive advantage is capped at 1.2, negative takes the full 2.
    obj, stats = ppo_clip_objective(old + np.log(2.0), old, adv, clip=0.2)
    assert float(obj) == pytest.approx((1.2 - 2.0) / 2)
    assert stats['clip_fraction'] == 1.0


def test_episode_rewards_sum_progress_intervention_hold_and_success():
    reward = SimpleNamespace(progress_per_m=10.0, success_bonus=2.0, intervention_per_mps=5.0,
                             hold_penalty=3.0)
    chunks = [{'distance': 0.20, 'control_index': 0, 'mode_index': 0},
              {'distance': 0.15, 'control_index': 4, 'mode_index': 2}]
    stats = SimpleNamespace(final_distance_m=0.01, intervention_mps=[0.0, 0.02, 0.0, 0.02,
                                                                     0.1, 0.1],
                            modes=['NOMINAL', 'NOMINAL', 'NOMINAL', 'HOLD'], success=True)
    rewards, terms = episode_transitions(chunks, stats, reward)
    np.testing.assert_allclose(rewards, [10 * 0.05 - 5 * 0.01,
                                         10 * 0.14 - 5 * 0.1 - 3.0 + 2.0])
    assert terms['hold'] == -3.0 and terms['success'] == 2.0
    assert sum(terms.values()) == pytest.approx(rewards.sum())


# ---------------------------------------------------------------- task variant
def test_hard_task_variant_only_tightens_the_task():
    base = SimConfig.load()
    hard = apply_task_variant(base, 'hard')
    assert 'default' in variant_names() and 'hard' in variant_names()
    assert hard.task.success_tolerance_m < base.task.success_tolerance_m
    assert apply_task_variant(base, 'default') == base
    assert hard.replace(task=base.task) == base  # nothing but the task changed
    with pytest.raises(ValueError):
        apply_task_variant(base, 'no_such_variant')


# ---------------------------------------------------------------- smoke fine-tune
@pytest.mark.timeout(240)
def test_smoke_finetune_improves_objective_with_filter_in_the_loop(tmp_path, monkeypatch):
    from genpolicy_ros.policy.policy import FlowPolicy
    from genpolicy_ros.safety.filter import SafetyFilter
    calls = {'n': 0}
    original = SafetyFilter.step_tracking

    def counted(self, *args, **kwargs):
        calls['n'] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SafetyFilter, 'step_tracking', counted)
    cfg = FinetuneConfig.load(iterations=2, episodes_per_iteration=2, workers=1,
                              max_decisions=16, first_seed=50000)
    cfg = cfg.replace(ppo=dataclasses.replace(cfg.ppo, critic_warmup_iterations=0, epochs=2))
    history = finetune(cfg, tmp_path, 'smoke test', progress=False, resume=False)
    assert len(history) == 2
    for row in history:
        assert row['surrogate_after'] > row['surrogate_before'] + 1e-4, row
        assert row['actor_steps'] > 0
        # The CBF filter computed every command of every rollout, and corrected some.
        assert row['filter_calls'] == row['control_steps'] > 0
        assert row['mean_intervention_mps'] > 0.0
    assert calls['n'] == sum(row['control_steps'] for row in history)
    for name in ('policy.pt', 'state.pt', 'log.csv', 'log.json', 'progress.png'):
        assert (tmp_path / name).is_file(), name
    tuned = FlowPolicy.load(tmp_path / 'policy.pt')
    base = FlowPolicy.load(cfg.checkpoint)
    assert 'smoke test' in tuned.info['command']
    changed = [not torch.equal(a, b) for a, b in zip(tuned.net.velocity.parameters(),
                                                     base.net.velocity.parameters())]
    same_encoder = all(torch.equal(a, b) for a, b in zip(tuned.net.obs_encoder.parameters(),
                                                         base.net.obs_encoder.parameters()))
    assert any(changed) and same_encoder
    # Re-running resumes after the saved iterations.
    history = finetune(cfg.replace(iterations=3), tmp_path, 'smoke test', progress=False)
    assert [row['iteration'] for row in history] == [1, 2, 3]
