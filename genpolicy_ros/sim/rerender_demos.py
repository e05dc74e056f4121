"""Re-render the camera frames of a recorded demo set (``genpolicy-rerender-demos``).

A demonstration's labels depend on the state only (arm joints, cube pose, goal), never on the
camera, so a set recorded with one camera can be shown to the policy through another: every
frame is rendered again from its stored ``q``, ``cube_pose`` and ``goal`` with the camera of
``config/sim.yaml`` (fingers closed, as while pushing). Everything else in the episode files
is copied unchanged, and ``meta.json`` records the new camera and where the frames came from.

Example::

    genpolicy-rerender-demos data/demos/push_v1 data/demos_cam2/push_v1 --jobs 2
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
from genpolicy_ros.sim.record_demos import camera_meta
from genpolicy_ros.sim.world import PandaWorld

_WORLD: Optional[PandaWorld] = None


def render_states(world: PandaWorld, q: np.ndarray, cube_pose: np.ndarray,
                  goal_xy: np.ndarray) -> np.ndarray:
    """Render one frame per state: ``q`` (T, 7) [rad], ``cube_pose`` (T, 7); (T, H, W, 3) uint8.

    The world is only posed (teleported), never stepped: it must be a render-only world.
    """
    q = np.asarray(q, dtype=float)
    cube_pose = np.asarray(cube_pose, dtype=float)
    if q.ndim != 2 or q.shape[1] != 7 or cube_pose.shape != (len(q), 7):
        raise ValueError(f'need q (T, 7) and cube_pose (T, 7), got {q.shape} and '
                         f'{cube_pose.shape}')
    base = world.render_snapshot()
    frames = []
    for qi, pose in zip(q, cube_pose):
        world.apply_render_snapshot(dataclasses.replace(
            base, arm_q=tuple(float(v) for v in qi), finger_q=(0.0,) * len(base.finger_q),
            cube_pose=tuple(float(v) for v in pose),
            goal_xy=tuple(float(v) for v in np.asarray(goal_xy)[:2])))
        frames.append(world.render())
    return np.stack(frames)


def _init_worker() -> None:
    global _WORLD
    _WORLD = PandaWorld(SimConfig.load(), gui=False)
    _WORLD.reset(0)


def _rerender_file(job: Tuple[str, str]) -> int:
    src, dst = job
    assert _WORLD is not None
    data = load_episode(src)
    images = render_states(_WORLD, data['q'], data['cube_pose'], data['goal'])
    if images.shape[0] != data['images'].shape[0]:
        raise RuntimeError(f'{src}: rendered {images.shape[0]} frames, had '
                           f'{data["images"].shape[0]}')
    data['images'] = images
    save_episode(data, dst)
    return int(images.shape[0])


def rerender(src: Path, dst: Path, jobs: int = 2) -> dict:
    """Re-render every ``episode_*.npz`` of ``src`` into ``dst``; return the new meta dict.

    Files already present in ``dst`` are kept (an interrupted run resumes); a finished set
    is left as it is.
    """
    done = rewrite_set(src, dst, _rerender_file, jobs, _init_worker, f're-rendering {src.name}')
    if done is None:
        return read_meta(dst)  # done before: nothing to add
    episodes, frames, seconds = done
    world = PandaWorld(SimConfig.load(), gui=False)
    try:
        camera = camera_meta(world)
    finally:
        world.close()
    return write_meta(src, dst, {
        'camera': camera, 'rerendered_from': str(src),
        'rerender': {'tool': 'genpolicy-rerender-demos', 'episodes': episodes,
                     'frames_this_run': int(sum(frames)), 'time_s': seconds}})


def main(argv: Optional[List[str]] = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog='genpolicy-rerender-demos',
                                description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('src', type=Path, help='demo directory (episode_*.npz + meta.json)')
    p.add_argument('dst', type=Path, help='output directory (resumes if it exists)')
    p.add_argument('--jobs', type=int, default=2, help='render processes')
    args = p.parse_args(argv)
    meta = rerender(args.src, args.dst, args.jobs)
    print(f'{meta["rerender"]["episodes"]} episodes in {args.dst} '
          f'({meta["rerender"]["frames_this_run"]} frames rendered this run, '
          f'{meta["rerender"]["time_s"]:.0f} s)')


if __name__ == '__main__':
    main()
