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
import json
import multiprocessing as mp
import os
from pathlib import Path
import time
from typing import List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from genpolicy_ros.sim.config import SimConfig
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
    with np.load(src) as ep:
        data = {k: ep[k] for k in ep.files}
    images = render_states(_WORLD, data['q'], data['cube_pose'], data['goal'])
    if images.shape[0] != data['images'].shape[0]:
        raise RuntimeError(f'{src}: rendered {images.shape[0]} frames, had '
                           f'{data["images"].shape[0]}')
    data['images'] = images
    tmp = dst + '.tmp.npz'
    np.savez_compressed(tmp, **data)
    os.replace(tmp, dst)
    return int(images.shape[0])


def rerender(src: Path, dst: Path, jobs: int = 2) -> dict:
    """Re-render every ``episode_*.npz`` of ``src`` into ``dst``; return the new meta dict.

    Files already present in ``dst`` are kept (an interrupted run resumes); a finished set
    is left as it is.
    """
    files = sorted(src.glob('episode_*.npz'))
    if not files:
        raise FileNotFoundError(f'{src} has no episode_*.npz files')
    dst.mkdir(parents=True, exist_ok=True)
    todo = [(str(f), str(dst / f.name)) for f in files if not (dst / f.name).is_file()]
    if not todo and (dst / 'meta.json').is_file():
        return json.loads((dst / 'meta.json').read_text())  # done before: nothing to add
    t0 = time.monotonic()
    frames = 0
    ctx = mp.get_context('spawn')
    with ctx.Pool(max(1, int(jobs)), initializer=_init_worker) as pool:
        for n in tqdm(pool.imap_unordered(_rerender_file, todo), total=len(todo),
                      desc=f're-rendering {src.name}', unit='ep'):
            frames += n
    world = PandaWorld(SimConfig.load(), gui=False)
    try:
        camera = camera_meta(world)
    finally:
        world.close()
    meta = json.loads((src / 'meta.json').read_text()) if (src / 'meta.json').is_file() else {}
    meta['camera'] = camera
    meta['rerendered_from'] = str(src)
    meta['rerender'] = {'tool': 'genpolicy-rerender-demos', 'episodes': len(files),
                        'frames_this_run': frames, 'time_s': time.monotonic() - t0}
    (dst / 'meta.json').write_text(json.dumps(meta, indent=1, default=str))
    return meta


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
