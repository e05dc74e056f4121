"""Demo recorder: on-disk format, meta.json, seed policy, CLI."""

import json

import numpy as np
import pytest

from genpolicy_ros.sim import record_demos
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.task import EVAL_SEED_START


def test_records_readable_episodes(tmp_path):
    """Check: records readable episodes."""
    cfg = SimConfig.load()
    out = tmp_path / 'demos'
    rc = record_demos.main(['--episodes', '2', '--seed', '0', '--out', str(out),
                            '--workers', '1', '--noise-std', '0.01'])
    assert rc == 0
    files = sorted(out.glob('episode_*.npz'))
    assert [f.name for f in files] == ['episode_00000.npz', 'episode_00001.npz']
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['episodes'] == 2 and meta['noise_std_m'] == 0.01
    assert meta['seeds'] == [0, 1] and meta['failed_seeds'] == []
    assert meta['rates_hz']['decision'] == cfg.decision_hz
    assert meta['camera']['width'] == cfg.camera.width_px
    assert np.array(meta['camera']['k']).shape == (3, 3)
    assert meta['tcp_push_z_m'] == pytest.approx(cfg.task.tcp_push_z_m)
    assert meta['eval_seed_start'] == EVAL_SEED_START
    with np.load(files[0]) as ep:
        assert set(ep.files) == set(record_demos.EPISODE_KEYS)
        n = ep['images'].shape[0]
        assert n > 5
        assert ep['images'].shape == (n, cfg.camera.height_px, cfg.camera.width_px, 3)
        assert ep['images'].dtype == np.uint8
        for key, width in (('ee_pos', 3), ('q', 7), ('action', 2), ('executed', 2),
                           ('cube_pose', 7)):
            assert ep[key].shape == (n, width) and ep[key].dtype == np.float32, key
        assert ep['goal'].shape == (2,) and ep['goal'].dtype == np.float32
        assert bool(ep['success']) and int(ep['seed']) == 0
        # Clean labels: each action is at most one expert step from the observed TCP.
        steps = np.linalg.norm(ep['action'] - ep['ee_pos'][:, :2], axis=1)
        assert np.all(steps <= cfg.expert.max_step_m + 1e-5)
        assert not np.allclose(ep['action'], ep['executed'])
        # The cube ends near the goal.
        assert np.linalg.norm(ep['cube_pose'][-1, :2] - ep['goal']) < 0.06
    # Existing data is protected.
    with pytest.raises(FileExistsError):
        record_demos.record(1, out, workers=1, progress=False)


def test_refuses_evaluation_seeds(tmp_path):
    """Check: refuses evaluation seeds."""
    with pytest.raises(ValueError):
        record_demos.record(1, tmp_path, first_seed=EVAL_SEED_START, workers=1,
                            progress=False)
