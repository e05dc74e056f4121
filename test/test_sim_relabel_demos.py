"""Relabelling a demo set: the current expert's labels replace ``action``, nothing else changes."""

import json
from pathlib import Path
import shutil

import numpy as np
import pytest

from genpolicy_ros.sim import record_demos, relabel_demos
from genpolicy_ros.sim.expert import ScriptedPushExpert


@pytest.fixture(scope='module')
def recorded(tmp_path_factory) -> Path:
    """One recorded expert episode (DART noise on, as in the shipped demo sets)."""
    out = tmp_path_factory.mktemp('relabel') / 'demos'
    assert record_demos.main(['--episodes', '1', '--seed', '5', '--out', str(out),
                              '--workers', '1']) == 0
    return out


def _episode(path: Path) -> dict:
    with np.load(path) as ep:
        return {k: ep[k] for k in ep.files}


def test_relabelling_restores_the_experts_labels_and_copies_the_rest(recorded, tmp_path):
    """Check: corrupted labels come back as the recorder stored them; other keys are copied.

    The recorder labelled every state with the same (memoryless) expert, so relabelling a set
    whose labels were moved must give the recorded labels back, and count the moved ones.
    """
    src = tmp_path / 'moved'
    shutil.copytree(recorded, src)
    clean = _episode(recorded / 'episode_00000.npz')
    moved = dict(clean)
    moved['action'] = clean['action'].copy()
    moved['action'][::3] += np.float32(0.03)
    np.savez_compressed(src / 'episode_00000.npz', **moved)
    dst = tmp_path / 'relabelled'
    relabel_demos.main([str(src), str(dst), '--jobs', '1'])
    new = _episode(dst / 'episode_00000.npz')
    assert set(new) == set(clean)
    np.testing.assert_allclose(new['action'], clean['action'], atol=1e-6)
    for key in set(clean) - {'action'}:
        np.testing.assert_array_equal(new[key], clean[key], err_msg=key)
    meta = json.loads((dst / 'meta.json').read_text())
    assert meta['relabel']['changed_this_run'] == len(clean['action'][::3])
    assert meta['relabel']['labels_this_run'] == len(clean['action'])
    assert meta['relabelled_from'] == str(src) and meta['seeds'] == [5]
    assert meta['expert']['max_step_m'] > 0
    # Done before: left as it is.
    stamp = (dst / 'episode_00000.npz').stat().st_mtime_ns
    assert relabel_demos.relabel(src, dst, jobs=1) == meta
    assert (dst / 'episode_00000.npz').stat().st_mtime_ns == stamp


def test_labels_do_not_depend_on_history(recorded):
    """Check: a fresh expert, asked in reverse order, gives every recorded label again."""
    ep = _episode(recorded / 'episode_00000.npz')
    expert = ScriptedPushExpert()
    backwards = relabel_demos.expert_labels(expert, ep['ee_pos'][::-1], ep['cube_pose'][::-1],
                                            ep['goal'])[::-1]
    np.testing.assert_allclose(backwards, ep['action'], atol=1e-6)
    with pytest.raises(ValueError, match='ee_pos'):
        relabel_demos.expert_labels(expert, ep['ee_pos'][:, :2], ep['cube_pose'], ep['goal'])
    with pytest.raises(FileNotFoundError):
        relabel_demos.relabel(recorded / 'nothing', recorded / 'out', jobs=1)
