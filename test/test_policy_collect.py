"""genpolicy-collect: expert-labelled episodes through the lock-step stack (filter in the loop)."""

import numpy as np
import pytest

from genpolicy_ros.policy.collect import collect
from genpolicy_ros.policy.dataset import load_demos
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.task import EVAL_SEED_START


@pytest.fixture(scope='module')
def expert_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('collect') / 'expert'
    meta = collect('expert', 1, out, first_seed=11, noise_std_m=0.01, workers=1,
                   progress=False)
    return out, meta


def test_expert_driver_writes_noisy_execution_with_clean_labels(expert_dir):
    out, meta = expert_dir
    assert meta['episodes'] == 1 and meta['success_rate'] == 1.0
    assert meta['tcp_push_z_m'] == SimConfig.load().task.tcp_push_z_m
    assert meta['expert']['kind'] == SimConfig.load().expert.kind  # which expert labelled
    with np.load(out / 'episode_00000.npz') as ep:
        action, executed, ee = ep['action'], ep['executed'], ep['ee_pos']
        assert str(ep['driver']) == 'expert' and bool(ep['success'])
        assert ep['images'].shape == (len(action), 96, 96, 3)
    noise = executed - action
    assert 0.004 < noise.std() < 0.02  # DART noise of 1 cm std on the executed target only
    # labels are the expert's: at most one expert step (2 cm) from the measured TCP
    step = np.linalg.norm(action - ee[:, :2], axis=1)
    assert step.max() <= SimConfig.load().expert.max_step_m + 1e-6
    train, _, _, _ = load_demos(out, 2, 16, True, 0.0, seed=0)
    assert len(train) == len(action)


def test_policy_driver_keeps_failures_with_expert_labels(tmp_path):
    out = tmp_path / 'dagger'
    meta = collect('policy', 1, out, first_seed=12, workers=1, progress=False)
    assert meta['episodes'] == 1 and meta['noise_std_m'] == 0.0
    with np.load(out / 'episode_00000.npz') as ep:
        assert str(ep['driver']) == 'policy'
        action, executed, ee = ep['action'], ep['executed'], ep['ee_pos']
    # the policy chose what was executed; the expert's labels differ from it somewhere
    assert np.abs(executed - action).max() > 1e-4
    step = np.linalg.norm(action - ee[:, :2], axis=1)
    assert step.max() <= SimConfig.load().expert.max_step_m + 1e-6


def test_refuses_eval_seeds_and_existing_output(expert_dir, tmp_path):
    with pytest.raises(ValueError, match='training seeds'):
        collect('expert', 2, tmp_path / 'x', first_seed=EVAL_SEED_START - 1, workers=1,
                progress=False)
    with pytest.raises(FileExistsError, match='--overwrite'):
        collect('expert', 1, expert_dir[0], first_seed=11, workers=1, progress=False)
    with pytest.raises(ValueError, match='driver'):
        collect('teleop', 1, tmp_path / 'y', first_seed=0, workers=1, progress=False)
