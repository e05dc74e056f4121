"""Record scripted-expert push demonstrations (``genpolicy-record-demos``).

DART-style noise: the target EXECUTED by the arm gets Gaussian xy noise (``--noise-std``
metres) while the RECORDED action is the clean expert target for the observed state, so the
data covers the states a slightly wrong policy visits, labelled with how to recover.

On-disk format (``DIR`` = ``--out``):

* ``episode_XXXXX.npz`` (``np.savez_compressed``), ``XXXXX`` = 0, 1, ... in seed order, one
  per successful episode, T = number of decision steps (10 Hz):

  ========== ================ ======= ==================================================
  key        shape            dtype   meaning
  ========== ================ ======= ==================================================
  images     (T, H, W, 3)     uint8   RGB frame observed at each decision step (96x96)
  ee_pos     (T, 3)           float32 measured TCP (panda_grasptarget) position [m]
  q          (T, 7)           float32 measured arm joint positions [rad]
  action     (T, 2)           float32 clean expert TCP xy target [m] (absolute, world)
  executed   (T, 2)           float32 xy target actually executed (action + noise) [m]
  cube_pose  (T, 7)           float32 cube ``[x, y, z, qx, qy, qz, qw]`` (world)
  goal       (2,)             float32 goal disc centre xy [m]
  success    ()               bool    always True in a recorded set
  seed       ()               int64   task seed (``PushTask.sample(seed)``)
  ========== ================ ======= ==================================================

  The TCP target z is constant (``tcp_push_z_m`` in ``meta.json``); world frame: robot base
  at the origin, table top at z = 0.
* ``meta.json``: format version, key table, camera intrinsics and pose, rates, push height,
  task tolerances, noise std, the seeds kept and the seeds that failed, timing.

Training seeds start at ``--seed`` (default 0) and must stay below
:data:`genpolicy_ros.sim.task.EVAL_SEED_START` (held-out evaluation seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
from pathlib import Path
import shutil
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.episode import EpisodeResult, run_episode
from genpolicy_ros.sim.expert import make_expert
from genpolicy_ros.sim.ik_controller import IKController
from genpolicy_ros.sim.task import EVAL_SEED_START
from genpolicy_ros.sim.world import PandaWorld

FORMAT_VERSION = 1
EPISODE_KEYS = {
    'images': 'uint8 (T,H,W,3) RGB frame observed at each decision step',
    'ee_pos': 'float32 (T,3) measured TCP position [m]',
    'q': 'float32 (T,7) measured arm joint positions [rad]',
    'action': 'float32 (T,2) clean expert TCP xy target [m], absolute, world frame',
    'executed': 'float32 (T,2) executed TCP xy target (action + DART noise) [m]',
    'cube_pose': 'float32 (T,7) cube [x,y,z,qx,qy,qz,qw], world frame',
    'goal': 'float32 (2,) goal centre xy [m]',
    'success': 'bool () episode reached the goal',
    'seed': 'int64 () task seed',
}


def episode_arrays(result: EpisodeResult) -> Dict[str, np.ndarray]:
    """Convert an episode's records into the on-disk arrays (see the module docstring)."""
    recs = result.records
    return {
        'images': np.stack([r.obs['image'] for r in recs]).astype(np.uint8),
        'ee_pos': np.stack([r.obs['ee_pos'] for r in recs]).astype(np.float32),
        'q': np.stack([r.obs['q'] for r in recs]).astype(np.float32),
        'action': np.stack([r.action[:2] for r in recs]).astype(np.float32),
        'executed': np.stack([r.executed[:2] for r in recs]).astype(np.float32),
        'cube_pose': np.stack([r.obs['cube_pose'] for r in recs]).astype(np.float32),
        'goal': np.asarray(result.goal, dtype=np.float32),
        'success': np.array(result.success, dtype=bool),
        'seed': np.array(result.seed, dtype=np.int64),
    }


class _Recorder:
    """One world + controller + expert per process, reused across episodes."""

    def __init__(self, config: SimConfig, noise_std_m: float, tmp_dir: str) -> None:
        self.config = config
        self.noise_std_m = noise_std_m
        self.tmp_dir = tmp_dir
        self.backend = PyBulletBackend(PandaWorld(config, gui=False))
        self.controller = IKController(config)
        self.expert = make_expert(config.expert, config.task.tcp_push_z_m)

    def run(self, seed: int) -> Tuple[int, bool, int, Optional[str]]:
        # Noise stream separate from the task sampling stream of the same seed.
        rng = np.random.default_rng([seed, 1])
        result = run_episode(self.backend, self.expert, self.controller, seed,
                             noise_std_m=self.noise_std_m, noise_rng=rng)
        if not result.success or result.steps == 0:
            return seed, False, result.steps, None
        path = os.path.join(self.tmp_dir, f'seed_{seed:06d}.npz')
        np.savez_compressed(path, **episode_arrays(result))
        return seed, True, result.steps, path


_WORKER: Optional[_Recorder] = None


def _init_worker(config: SimConfig, noise_std_m: float, tmp_dir: str) -> None:
    global _WORKER
    _WORKER = _Recorder(config, noise_std_m, tmp_dir)


def _run_seed(seed: int) -> Tuple[int, bool, int, Optional[str]]:
    assert _WORKER is not None
    return _WORKER.run(seed)


def _seed_stream(first: int, limit: int) -> Iterator[int]:
    for seed in range(first, limit):
        yield seed


def camera_meta(world: PandaWorld) -> Dict[str, Any]:
    """Return the camera intrinsics and pose as JSON-ready data."""
    info = world.camera_info()
    pos, quat = world.camera_pose()
    cam = world.config.camera
    return {
        'width': info.width, 'height': info.height, 'k': info.k.tolist(), 'd': info.d.tolist(),
        'p': info.p.tolist(), 'distortion_model': info.distortion_model,
        'frame_id': info.frame_id, 'fov_deg': cam.fov_deg, 'eye_m': list(cam.eye_m),
        'target_m': list(cam.target_m), 'up': list(cam.up),
        'optical_frame_position_m': pos.tolist(), 'optical_frame_quaternion_xyzw': quat.tolist(),
    }


def prepare_episode_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir`` for a new episode set and return its empty ``.tmp`` work folder.

    Existing episodes raise ``FileExistsError`` unless ``overwrite``, which deletes them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob('episode_*.npz'))
    if existing and not overwrite:
        raise FileExistsError(f'{out_dir} already holds {len(existing)} episodes '
                              f'(use --overwrite)')
    for path in existing:
        path.unlink()
    tmp_dir = out_dir / '.tmp'
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    return tmp_dir


def record(episodes: int, out_dir: Path, first_seed: int = 0, workers: int = 2,
           noise_std_m: Optional[float] = None, config: Optional[SimConfig] = None,
           max_attempts: Optional[int] = None, overwrite: bool = False,
           progress: bool = True) -> Dict[str, Any]:
    """Record ``episodes`` successful demonstrations into ``out_dir``; return the meta dict.

    Seeds are tried in increasing order from ``first_seed``; the kept set does not depend on
    the worker count. Failed episodes are dropped and listed in ``meta.json``.
    """
    config = config if config is not None else SimConfig.load()
    noise = config.recorder.noise_std_m if noise_std_m is None else float(noise_std_m)
    max_attempts = max_attempts if max_attempts is not None else 2 * episodes + 10
    limit = first_seed + max_attempts
    if first_seed < 0 or min(limit, first_seed + episodes) > EVAL_SEED_START:
        raise ValueError(f'training seeds must lie in [0, {EVAL_SEED_START}) '
                         f'(held-out evaluation seeds start there)')
    limit = min(limit, EVAL_SEED_START)
    out_dir = Path(out_dir)
    tmp_dir = prepare_episode_dir(out_dir, overwrite)
    start = time.time()
    kept: List[int] = []
    failed: List[int] = []
    lengths: List[int] = []
    bar = tqdm(total=episodes, desc='demos', unit='ep', disable=not progress)

    def handle(item: Tuple[int, bool, int, Optional[str]]) -> bool:
        seed, ok, steps, path = item
        if ok and len(kept) < episodes:
            os.replace(path, out_dir / f'episode_{len(kept):05d}.npz')
            kept.append(seed)
            lengths.append(steps)
            bar.update(1)
        elif not ok:
            failed.append(seed)
            bar.set_postfix(failed=len(failed))
        elif path is not None:
            os.unlink(path)
        return len(kept) >= episodes

    try:
        if workers <= 1:
            _init_worker(config, noise, str(tmp_dir))
            for seed in _seed_stream(first_seed, limit):
                if handle(_run_seed(seed)):
                    break
        else:
            ctx = mp.get_context('spawn')
            with ctx.Pool(workers, initializer=_init_worker,
                          initargs=(config, noise, str(tmp_dir))) as pool:
                for item in pool.imap(_run_seed, _seed_stream(first_seed, limit)):
                    if handle(item):
                        pool.terminate()
                        break
    finally:
        bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    elapsed = time.time() - start
    world = PandaWorld(config, gui=False)
    try:
        camera = camera_meta(world)
    finally:
        world.close()
    task = config.task
    meta = {
        'format_version': FORMAT_VERSION,
        'episodes': len(kept),
        'episode_files': 'episode_XXXXX.npz, XXXXX = 0..episodes-1 in seed order',
        'keys': EPISODE_KEYS,
        'camera': camera,
        'rates_hz': {'decision': config.decision_hz, 'control': config.control_hz,
                     'physics': config.physics_hz},
        'push_height_m': task.push_height_m,
        'tcp_push_z_m': task.tcp_push_z_m,
        'task': dataclasses.asdict(task),
        'expert': dataclasses.asdict(config.expert),
        'max_step_m': config.expert.max_step_m,
        'noise_std_m': noise,
        'first_seed': first_seed,
        'eval_seed_start': EVAL_SEED_START,
        'seeds': kept,
        'failed_seeds': failed,
        'attempted': len(kept) + len(failed),
        'steps_total': int(sum(lengths)),
        'steps_mean': float(np.mean(lengths)) if lengths else 0.0,
        'workers': workers,
        'recording_time_s': elapsed,
    }
    with open(out_dir / 'meta.json', 'w', encoding='utf-8') as stream:
        json.dump(meta, stream, indent=2)
    return meta


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--episodes', type=int, required=True,
                        help='number of successful episodes to keep')
    parser.add_argument('--seed', type=int, default=0, help='first task seed')
    parser.add_argument('--out', type=Path, required=True, help='output directory')
    parser.add_argument('--workers', type=int, default=2, help='parallel processes')
    parser.add_argument('--noise-std', type=float, default=None,
                        help='DART noise std on the executed xy target [m] '
                             '(default: recorder.noise_std_m in config/sim.yaml)')
    parser.add_argument('--max-attempts', type=int, default=None,
                        help='stop after this many seeds (default 2 * episodes + 10)')
    parser.add_argument('--config', type=Path, default=None, help='sim YAML (default sim.yaml)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing episodes')
    args = parser.parse_args(argv)
    config = SimConfig.load(args.config)
    meta = record(args.episodes, args.out, args.seed, args.workers, args.noise_std, config,
                  args.max_attempts, args.overwrite)
    print(f"kept {meta['episodes']} episodes, {len(meta['failed_seeds'])} failed "
          f"(of {meta['attempted']} attempted), {meta['steps_total']} steps, "
          f"{meta['recording_time_s']:.1f} s -> {args.out}")
    return 0 if meta['episodes'] == args.episodes else 1


if __name__ == '__main__':
    raise SystemExit(main())
