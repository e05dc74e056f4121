"""Smoke training on a synthetic demo set: the loss falls, checkpoints resume, the result loads."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genpolicy_ros.policy.checkpoint import export_checkpoint
from genpolicy_ros.paths import config_path
from genpolicy_ros.policy.config import PolicyRuntimeConfig, TRAIN_NODE, TRAIN_YAML
from genpolicy_ros.policy.dataset import write_synthetic_demos
from genpolicy_ros.policy.policy import FlowPolicy
from genpolicy_ros.policy.train import lr_factor, main


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """Train 80 steps on synthetic demos; return (demos, run dir)."""
    root = tmp_path_factory.mktemp('train')
    demos = write_synthetic_demos(root / 'demos', n_episodes=8, length=20, seed=0)
    out = root / 'run'
    # The package YAML with a short warm-up and frequent logs, so 80 steps show the trend.
    doc = yaml.safe_load(config_path(TRAIN_YAML).read_text())
    doc[TRAIN_NODE]['ros__parameters']['train'].update(warmup_iters=10, log_every_iters=20)
    cfg_file = root / 'train.yaml'
    cfg_file.write_text(yaml.safe_dump(doc))
    main(['--demos', str(demos), '--out', str(out), '--iters', '80', '--batch-size', '16',
          '--threads', '1', '--seed', '0', '--checkpoint-every', '40', '--no-progress',
          '--config', str(cfg_file)])
    torch.set_num_threads(1)
    return demos, out


def test_loss_falls_and_files_written(run):
    """Check: loss falls and files written."""
    _, out = run
    ckpt = torch.load(out / 'checkpoint.pt', weights_only=False)
    hist = ckpt['history']
    assert ckpt['step'] == 80
    assert hist['train_loss'][-1] < 0.6 * hist['train_loss'][0], hist['train_loss']
    assert len(hist['val_loss']) == 2 and hist['val_loss'][-1] < hist['val_loss'][0]
    errors = hist['val_action_err_m']
    assert len(errors) == 2 and all(0.0 < e < 1.0 for e in errors)  # metres
    assert ckpt['policy_config']['push_height_m'] == 0.02
    assert '--iters 80' in ckpt['command']
    assert (out / 'loss.png').stat().st_size > 1000
    doc = yaml.safe_load((out / 'train_config.yaml').read_text())
    assert doc['step'] == 80 and doc['train']['batch_size'] == 16


def test_resume_continues_from_checkpoint(run, tmp_path):
    """Check: resume continues from checkpoint."""
    demos, out = run
    before = torch.load(out / 'checkpoint.pt', weights_only=False)
    main(['--demos', str(demos), '--out', str(out), '--iters', '90', '--resume',
          '--no-progress'])
    after = torch.load(out / 'checkpoint.pt', weights_only=False)
    assert after['step'] == 90
    assert after['train_config']['batch_size'] == 16  # kept from the checkpoint
    assert 'resumed' in after['command']
    assert after['history']['train_step'][:2] == before['history']['train_step'][:2]
    changed = [not torch.equal(after['model'][k], before['model'][k]) for k in before['model']]
    assert any(changed)


def test_trained_policy_loads_and_acts(run, tmp_path):
    """Check: trained policy loads and acts."""
    demos, out = run
    ship = tmp_path / 'ship.pt'
    export_checkpoint(Path(out) / 'checkpoint.pt', ship)
    rt = PolicyRuntimeConfig.from_dict(dict(PolicyRuntimeConfig.load().to_dict(),
                                            n_samples=3, flow_steps=4))
    policy = FlowPolicy.load(ship, runtime=rt)
    with np.load(demos / 'episode_00000.npz') as ep:
        obs = {'images': ep['images'][:2], 'ee_pos': ep['ee_pos'][1]}
        lo, hi = ep['action'].min(), ep['action'].max()
    chunk = policy.act(obs)
    assert chunk.samples.shape == (3, 16, 3)
    # actions come back in metres, in (a margin around) the range of the demonstrations
    assert lo - 0.2 < chunk.positions[:, :2].min() and chunk.positions[:, :2].max() < hi + 0.2


def test_lr_schedule():
    """Check: lr schedule."""
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_init_from_fine_tunes_on_several_demo_dirs(run, tmp_path):
    """A new run starts from a checkpoint's weights and reads two demo directories."""
    demos, out = run
    extra = write_synthetic_demos(tmp_path / 'round2', n_episodes=4, length=20, seed=7)
    source = torch.load(out / 'checkpoint.pt', weights_only=False)
    ship = tmp_path / 'ship.pt'
    export_checkpoint(Path(out) / 'checkpoint.pt', ship)  # fp16 export works as a source too
    fine = tmp_path / 'fine'
    main(['--demos', str(demos), str(extra), '--out', str(fine), '--iters', '1',
          '--batch-size', '8', '--threads', '1', '--no-progress', '--init-from', str(ship),
          '--learning-rate', '0'])
    ckpt = torch.load(fine / 'checkpoint.pt', weights_only=False)
    assert ckpt['step'] == 1
    assert f"initialised from step {source['step']}" in ckpt['command']
    assert ckpt['normalizer'] == source['normalizer']  # the source's scale is kept
    # lr 0: one step leaves the weights at the exported (fp16) EMA weights
    shipped = torch.load(ship, weights_only=False)['weights']
    for k, v in shipped.items():
        assert torch.equal(ckpt['model'][k], v.float()), k
    doc = yaml.safe_load((fine / 'train_config.yaml').read_text())
    assert doc['demos'] == [str(demos), str(extra)]
    assert doc['train_episodes'] + len(doc['val_episodes']) == 12
    # names carry their directory, so episodes of different rounds stay distinguishable
    assert doc['val_episodes'] and all(n.split('/')[0] in ('demos', 'round2')
                                       for n in doc['val_episodes'])


def test_add_goal_input_starts_from_the_source_behaviour(run, tmp_path):
    """--add-goal-input widens the encoder with zero weights: same chunks, whatever the goal."""
    demos, out = run
    source = tmp_path / 'source.pt'
    export_checkpoint(Path(out) / 'checkpoint.pt', source)
    goal_run = tmp_path / 'goal'
    main(['--demos', str(demos), '--out', str(goal_run), '--iters', '1', '--batch-size', '8',
          '--threads', '1', '--no-progress', '--init-from', str(source), '--add-goal-input',
          '--learning-rate', '0'])
    ckpt = torch.load(goal_run / 'checkpoint.pt', weights_only=False)
    assert ckpt['policy_config']['goal_dim'] == 2
    src = torch.load(out / 'checkpoint.pt', weights_only=False)
    norm = ckpt['normalizer']
    assert norm['proprio_min'][:2] == pytest.approx(src['normalizer']['proprio_min'])
    assert len(norm['proprio_min']) == len(norm['proprio_max']) == 4
    widened = tmp_path / 'widened.pt'
    export_checkpoint(goal_run / 'checkpoint.pt', widened)
    rt = PolicyRuntimeConfig.from_dict(dict(PolicyRuntimeConfig.load().to_dict(), n_samples=2))
    before, after = FlowPolicy.load(source, runtime=rt), FlowPolicy.load(widened, runtime=rt)
    assert after.config.goal_dim == 2 and before.config.goal_dim == 0
    with np.load(demos / 'episode_00003.npz') as ep:
        obs = {'images': ep['images'][:2], 'ee_pos': ep['ee_pos'][1]}
    a = before.act(obs, seed=5).samples
    for goal in ([0.3, 0.3], [0.7, 0.1]):
        b = after.act(dict(obs, goal=np.array(goal)), seed=5).samples
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match='goal'):
        after.act(obs)                                   # no goal: refused, not guessed
    with pytest.raises(ValueError, match='goal'):
        after.act(dict(obs, goal=np.array([np.nan, 0.2])))
    with pytest.raises(ValueError, match='without goal input'):
        main(['--demos', str(demos), '--out', str(tmp_path / 'again'), '--iters', '1',
              '--no-progress', '--init-from', str(widened), '--add-goal-input'])


def test_dataset_goal_input_is_the_goal_relative_to_the_ee(run):
    """With the goal input the proprio row is EE xy, then goal xy minus EE xy."""
    from genpolicy_ros.policy.dataset import load_demos
    demos, _ = run
    train, _, _, _ = load_demos(demos, 2, 16, True, 0.0, 0, goal=True)
    raw = train.get(np.arange(len(train)), with_images=False)
    plain, _, _, _ = load_demos(demos, 2, 16, True, 0.0, 0)
    base = plain.get(np.arange(len(plain)), with_images=False)
    ep = train.episodes[0]
    t = len(ep.action) - 1
    np.testing.assert_allclose(raw['proprio'][t], np.r_[ep.ee_xy[t], ep.goal - ep.ee_xy[t]])
    np.testing.assert_allclose(raw['proprio'][:, :2], base['proprio'])
    np.testing.assert_allclose(raw['action'], base['action'])  # still relative to the EE only


def test_expert_pace_labels_replace_only_policy_driven_chunks(run):
    """Chunks of policy-driven (DAgger) episodes advance at the expert's pace; others stay."""
    from genpolicy_ros.policy.dataset import ChunkDataset, expert_pace_chunk, load_demos
    demos, _ = run
    train, _, _, _ = load_demos(demos, 2, 16, True, 0.0, 0)
    recorded = train.get(np.arange(len(train)), with_images=False)['action']
    # The synthetic expert tracks exactly (ee[t+1] == action[t]): at pace 1 the virtual TCP
    # follows the recorded path, so the labels are the recorded ones, the held end included.
    for ep in train.episodes:
        ep.driver = 'policy'
    same = ChunkDataset(train.episodes, 2, 16, True, policy_labels='expert_pace',
                        expert_pace=1.0)
    np.testing.assert_allclose(same.get(np.arange(len(same)), with_images=False)['action'],
                               recorded, atol=1e-6)
    # At half pace the path covered by step k is half of it; step 0 is the recorded label.
    ep = train.episodes[0]
    half = expert_pace_chunk(ep.ee_xy, ep.action, 16, 0.5)
    steps = ep.action - ep.ee_xy
    np.testing.assert_allclose(half[:, 0], ep.action, atol=1e-6)
    np.testing.assert_allclose(half[0, 3], ep.ee_xy[0] + 0.5 * steps[:3].sum(0) + steps[3],
                               atol=1e-6)
    np.testing.assert_allclose(half[-1], np.repeat(ep.action[-1:], 16, axis=0), atol=1e-6)
    # Only episodes a policy drove are relabelled.
    ep.driver = 'expert'
    mixed = ChunkDataset(train.episodes, 2, 16, True, policy_labels='expert_pace',
                         expert_pace=0.5)
    assert mixed.chunks[0] is None and mixed.chunks[1] is not None
    with pytest.raises(ValueError, match='policy_labels'):
        ChunkDataset(train.episodes, 2, 16, True, policy_labels='fast')
    with pytest.raises(ValueError, match='expert_pace'):
        ChunkDataset(train.episodes, 2, 16, True, policy_labels='expert_pace', expert_pace=0)


def test_train_config_from_a_run_saved_before_the_label_choice():
    """Resuming an older run: its saved train config has no label keys; it used recorded."""
    from genpolicy_ros.policy.config import TrainConfig
    old = {k: v for k, v in TrainConfig.load().to_dict().items()
           if k not in ('policy_labels', 'expert_pace')}
    tc = TrainConfig.from_dict(old)
    assert (tc.policy_labels, tc.expert_pace) == ('recorded', 1.0)
    assert TrainConfig.from_dict(dict(old, policy_labels='expert_pace')).expert_pace == 1.0
