"""Re-rendering a demo set: same camera gives the same frames, another camera other frames."""

import json
import os
from pathlib import Path
import shutil

import numpy as np
import pytest
import yaml

from genpolicy_ros.paths import share_dir
from genpolicy_ros.sim import record_demos, rerender_demos
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld


@pytest.fixture(scope='module')
def recorded(tmp_path_factory) -> Path:
    """One recorded expert episode (the current camera)."""
    out = tmp_path_factory.mktemp('rerender') / 'demos'
    assert record_demos.main(['--episodes', '1', '--seed', '3', '--out', str(out),
                              '--workers', '1']) == 0
    return out


def _episode(path: Path) -> dict:
    with np.load(path) as ep:
        return {k: ep[k] for k in ep.files}


def test_same_camera_reproduces_the_recorded_frames(recorded, tmp_path):
    """Check: the frames come back (to a few edge pixels) and nothing else changes.

    The stored joints are float32 and the fingers are assumed closed, so an edge pixel may
    flip: at most 1 in 10^4 pixels may differ.
    """
    dst = tmp_path / 'same'
    assert rerender_demos.main([str(recorded), str(dst), '--jobs', '1']) is None
    old = _episode(recorded / 'episode_00000.npz')
    new = _episode(dst / 'episode_00000.npz')
    assert set(new) == set(old)
    assert new['images'].shape == old['images'].shape
    differs = (new['images'] != old['images']).any(axis=3)
    assert differs.mean() <= 1e-4
    for key in set(old) - {'images'}:
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    meta = json.loads((dst / 'meta.json').read_text())
    assert meta['rerendered_from'] == str(recorded)
    assert meta['rerender']['episodes'] == 1 and meta['rerender']['frames_this_run'] > 5
    assert meta['seeds'] == [3]
    # A second run finds the set done and leaves it as it is.
    stamp = (dst / 'episode_00000.npz').stat().st_mtime_ns
    assert rerender_demos.rerender(recorded, dst, jobs=1) == meta
    assert (dst / 'episode_00000.npz').stat().st_mtime_ns == stamp
    # An interrupted run (an episode missing) renders only what is missing.
    (dst / 'episode_00000.npz').unlink()
    meta = rerender_demos.rerender(recorded, dst, jobs=1)
    assert meta['rerender']['frames_this_run'] == old['images'].shape[0]


def test_another_camera_changes_only_the_frames(recorded, tmp_path, monkeypatch):
    """Check: with the camera moved in sim.yaml, frames differ and meta names the new pose."""
    share = tmp_path / 'share'
    shutil.copytree(share_dir() / 'config', share / 'config')
    for name in ('urdf', 'checkpoints'):
        os.symlink(share_dir() / name, share / name)
    sim_yaml = share / 'config' / 'sim.yaml'
    doc = yaml.safe_load(sim_yaml.read_text())
    cam = doc['sim_node']['ros__parameters']['camera']
    cam['eye_m'] = [cam['eye_m'][0] + 0.1, cam['eye_m'][1] + 0.1, cam['eye_m'][2] + 0.1]
    sim_yaml.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv('GENPOLICY_SHARE_DIR', str(share))
    share_dir.cache_clear()
    try:
        dst = tmp_path / 'moved'
        rerender_demos.rerender(recorded, dst, jobs=1)
    finally:
        monkeypatch.delenv('GENPOLICY_SHARE_DIR')
        share_dir.cache_clear()
    old = _episode(recorded / 'episode_00000.npz')
    new = _episode(dst / 'episode_00000.npz')
    assert new['images'].shape == old['images'].shape
    changed = np.abs(new['images'].astype(int) - old['images'].astype(int)).max(axis=3) > 0
    assert changed.mean() > 0.1
    for key in set(old) - {'images'}:
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    meta = json.loads((dst / 'meta.json').read_text())
    assert meta['camera']['eye_m'] == pytest.approx(cam['eye_m'])


def test_render_states_rejects_mismatched_arrays():
    """Check: state arrays of the wrong shape are refused with the shapes in the message."""
    world = PandaWorld(SimConfig.load(), gui=False)
    try:
        world.reset(0)
        with pytest.raises(ValueError, match='q'):
            rerender_demos.render_states(world, np.zeros((3, 6)), np.zeros((3, 7)),
                                         np.zeros(2))
        with pytest.raises(ValueError, match='cube_pose'):
            rerender_demos.render_states(world, np.zeros((3, 7)), np.zeros((2, 7)),
                                         np.zeros(2))
    finally:
        world.close()
