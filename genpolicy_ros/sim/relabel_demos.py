"""Label a recorded demo set again with the current scripted expert (``genpolicy-relabel-demos``).

The expert is memoryless: its target is a function of the measured TCP position, the cube pose
and the goal, all stored with every frame. So a set recorded with another expert version (or
labelled behind a driving policy, DAgger) can be given the current expert's labels without
running the simulator: ``action`` is recomputed, everything else (frames, joints, ``executed``,
the targets that were actually run) is copied unchanged. ``meta.json`` records the expert
settings used and how many labels changed.

Example::

    genpolicy-relabel-demos data/demos/push_v1 data/demos_relabelled/push_v1 --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.demo_rewrite import (load_episode, read_meta, rewrite_set, save_episode,
                                            write_meta)
from genpolicy_ros.sim.expert import ScriptedPushExpert

#: A label that moved by more than this counts as changed in the summary [m].
CHANGED_LABEL_M = 0.005

_EXPERT: Optional[ScriptedPushExpert] = None


def expert_labels(expert: ScriptedPushExpert, ee_pos: np.ndarray, cube_pose: np.ndarray,
                  goal_xy: np.ndarray) -> np.ndarray:
    """Return the expert's xy target for every state: ``ee_pos`` (T, 3), ``cube_pose`` (T, 7).

    Returns (T, 2) float32 [m], absolute world-frame targets like the recorded ``action``.
    """
    ee_pos = np.asarray(ee_pos, dtype=float)
    cube_pose = np.asarray(cube_pose, dtype=float)
    goal_xy = np.asarray(goal_xy, dtype=float)
    if ee_pos.ndim != 2 or ee_pos.shape[1] != 3 or cube_pose.shape != (len(ee_pos), 7) \
            or goal_xy.shape != (2,):
        raise ValueError(f'need ee_pos (T, 3), cube_pose (T, 7) and goal (2,), got '
                         f'{ee_pos.shape}, {cube_pose.shape} and {goal_xy.shape}')
    expert.reset()
    labels = [expert.act({'ee_pos': ee, 'cube_pose': pose, 'goal': goal_xy})[:2]
              for ee, pose in zip(ee_pos, cube_pose)]
    return np.asarray(labels, dtype=np.float32).reshape(len(ee_pos), 2)


def _init_worker() -> None:
    global _EXPERT
    config = SimConfig.load()
    _EXPERT = ScriptedPushExpert(config.expert, config.task.tcp_push_z_m)


def _relabel_file(job: Tuple[str, str]) -> Tuple[int, int]:
    src, dst = job
    assert _EXPERT is not None
    data = load_episode(src)
    labels = expert_labels(_EXPERT, data['ee_pos'], data['cube_pose'], data['goal'])
    changed = np.linalg.norm(labels - data['action'], axis=1) > CHANGED_LABEL_M
    data['action'] = labels
    save_episode(data, dst)
    return int(changed.sum()), int(len(labels))


def relabel(src: Path, dst: Path, jobs: int = 2) -> dict:
    """Relabel every ``episode_*.npz`` of ``src`` into ``dst``; return the new meta dict.

    Files already present in ``dst`` are kept (an interrupted run resumes); a finished set
    is left as it is.
    """
    done = rewrite_set(src, dst, _relabel_file, jobs, _init_worker, f'relabelling {src.name}')
    if done is None:
        return read_meta(dst)  # done before: nothing to add
    episodes, counts, seconds = done
    changed = sum(c for c, _ in counts)
    labels = sum(n for _, n in counts)
    return write_meta(src, dst, {
        'expert': dataclasses.asdict(SimConfig.load().expert), 'relabelled_from': str(src),
        'relabel': {'tool': 'genpolicy-relabel-demos', 'episodes': episodes,
                    'labels_this_run': labels, 'changed_this_run': changed,
                    'changed_threshold_m': CHANGED_LABEL_M, 'time_s': seconds}})


def main(argv: Optional[List[str]] = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog='genpolicy-relabel-demos',
                                description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('src', type=Path, help='demo directory (episode_*.npz + meta.json)')
    p.add_argument('dst', type=Path, help='output directory (resumes if it exists)')
    p.add_argument('--jobs', type=int, default=2, help='worker processes')
    args = p.parse_args(argv)
    meta = relabel(args.src, args.dst, args.jobs)
    info = meta['relabel']
    share = info['changed_this_run'] / max(1, info['labels_this_run'])
    print(f'{info["episodes"]} episodes in {args.dst}: {info["labels_this_run"]} labels '
          f'this run, {100 * share:.1f}% moved by more than {1000 * CHANGED_LABEL_M:.0f} mm '
          f'({info["time_s"]:.0f} s)')


if __name__ == '__main__':
    main()
