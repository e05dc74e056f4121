"""Collect expert-labelled episodes through the full lock-step stack (``genpolicy-collect``).

Why: the first demo set was recorded with the sim's IK position controller, but the policy runs
behind the CBF filter's velocity tracking, which lags and shapes the motion differently; and
behaviour cloning alone compounds its own errors into states no demo visited. Both are fixed
by collecting data where the policy will run:

* ``--driver expert``: the scripted expert drives through the safety filter with DART noise on
  the executed target (labels: the clean expert target), i.e. demos under the deployed
  controller;
* ``--driver policy``: a trained checkpoint drives (DAgger, Ross et al. 2011) and the expert
  labels every visited state with what it would do there. Every episode is kept, failures
  included: they hold the recovery labels the policy lacks.

Episodes are written in the demo recorder's format (``genpolicy_ros.sim.record_demos``, plus
``driver`` per episode), so ``genpolicy-train --demos DIR1 DIR2 ...`` reads them beside the
original demos. Seeds must be training seeds (< ``EVAL_SEED_START``). Stopping a run early
(Ctrl-C, SIGTERM) keeps the episodes collected so far and writes their ``meta.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
import shutil
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from genpolicy_ros.policy.chunk_plan import Plan, _Planner
from genpolicy_ros.policy.worker_pool import WorkerPool
from genpolicy_ros.sim.expert import make_expert, PushExpert
from genpolicy_ros.sim.record_demos import prepare_episode_dir
from genpolicy_ros.sim.task import EVAL_SEED_START

DRIVERS = ('expert', 'policy')


class LabellingPlanner(_Planner):
    """Plan with ``driver`` (or the noisy expert) and record the expert's label at each step.

    ``records`` holds, per decision, the observation arrays, the clean expert target and the
    target actually executed.
    """

    def __init__(self, runtime, expert: PushExpert, driver: Optional[_Planner],
                 noise_std_m: float) -> None:
        super().__init__(runtime)
        self.expert = expert
        self.driver = driver
        self.noise_std_m = float(noise_std_m)
        self.n_samples = runtime.n_samples
        self.rng = np.random.default_rng(0)
        self.records: List[Dict[str, np.ndarray]] = []

    def reset(self, seed: Optional[int] = None) -> None:
        """Start an episode; the noise stream depends only on the seed."""
        super().reset(seed)
        self.expert.reset()
        if self.driver is not None:
            self.driver.reset(seed)
        self.rng = np.random.default_rng([0 if seed is None else seed, 2])
        self.records = []

    def plan(self, obs: Dict[str, Any]) -> Plan:
        """Label ``obs`` with the expert, then plan with the driver."""
        label = np.asarray(self.expert.act(obs), dtype=float)
        if self.driver is None:
            executed = label.copy()
            executed[:2] += self.rng.normal(0.0, self.noise_std_m, size=2)
            plan = self._plan(obs, executed[None], None, None, 0.0)
        else:
            plan = self.driver.plan(obs)
            executed = plan.positions[1]
        self.records.append({
            'images': np.asarray(obs['image'], dtype=np.uint8),
            'ee_pos': np.asarray(obs['ee_pos'], dtype=np.float32),
            'q': np.asarray(obs['q'], dtype=np.float32),
            'action': label[:2].astype(np.float32),
            'executed': np.asarray(executed[:2], dtype=np.float32),
            'cube_pose': np.asarray(obs['cube_pose'], dtype=np.float32),
        })
        return plan


class _Collector:
    """One lock-step stack per process, reused across episodes."""

    def __init__(self, driver: str, checkpoint: Optional[str], noise_std_m: float,
                 tmp_dir: str) -> None:
        import torch
        torch.set_num_threads(1)
        from genpolicy_ros.evaluation import LockstepStack
        from genpolicy_ros.policy.config import PolicyRuntimeConfig
        self.stack = LockstepStack('flow' if driver == 'policy' else 'expert', checkpoint,
                                   use_filter=True, monitor='off')
        runtime = PolicyRuntimeConfig.load()
        cfg = self.stack.sim
        expert = make_expert(cfg.expert, cfg.task.tcp_push_z_m)
        self.planner = LabellingPlanner(runtime, expert,
                                        self.stack.planner if driver == 'policy' else None,
                                        noise_std_m)
        self.stack.planner = self.planner
        self.tmp_dir = tmp_dir
        self.driver = driver

    def run(self, seed: int) -> Tuple[int, bool, int, Optional[str], float]:
        stats = self.stack.run_episode(seed)
        recs = self.planner.records
        if not recs:
            return seed, stats.success, 0, None, stats.mean_intervention_mps
        arrays = {key: np.stack([r[key] for r in recs]) for key in recs[0]}
        arrays.update(goal=np.asarray(self.stack.world.goal_xy, dtype=np.float32),
                      success=np.array(stats.success, dtype=bool),
                      seed=np.array(seed, dtype=np.int64), driver=np.array(self.driver))
        path = os.path.join(self.tmp_dir, f'seed_{seed:06d}.npz')
        np.savez_compressed(path, **arrays)
        return seed, stats.success, len(recs), path, stats.mean_intervention_mps


def collect(driver: str, episodes: int, out_dir: Path, first_seed: int,
            checkpoint: Optional[str] = None, noise_std_m: float = 0.01, workers: int = 2,
            overwrite: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Collect ``episodes`` labelled episodes (seeds ``first_seed`` ...) into ``out_dir``.

    With ``driver='expert'`` only successful episodes are kept (like the demo recorder), up to
    ``2 * episodes + 10`` seeds; with ``driver='policy'`` every episode is kept.
    """
    if driver not in DRIVERS:
        raise ValueError(f'driver must be one of {DRIVERS}, got {driver!r}')
    limit = first_seed + (2 * episodes + 10 if driver == 'expert' else episodes)
    if first_seed < 0 or first_seed + episodes > EVAL_SEED_START:
        raise ValueError(f'training seeds must lie in [0, {EVAL_SEED_START}) '
                         f'(held-out evaluation seeds start there)')
    limit = min(limit, EVAL_SEED_START)
    out_dir = Path(out_dir)
    tmp_dir = prepare_episode_dir(out_dir, overwrite)
    kept: List[int] = []
    successes: List[bool] = []
    dropped: List[int] = []
    lengths: List[int] = []
    interventions: List[float] = []
    start = time.time()
    bar = tqdm(total=episodes, desc=f'collect ({driver})', unit='ep', disable=not progress)

    def handle(item) -> bool:
        seed, ok, steps, path, intervention = item
        keep = path is not None and (driver == 'policy' or ok) and len(kept) < episodes
        if keep:
            os.replace(path, out_dir / f'episode_{len(kept):05d}.npz')
            kept.append(seed)
            successes.append(bool(ok))
            lengths.append(steps)
            interventions.append(intervention)
            bar.update(1)
            bar.set_postfix(success=f'{np.mean(successes):.2f}')
        else:
            dropped.append(seed)
            if path is not None:
                os.unlink(path)
        return len(kept) >= episodes

    args = (driver, checkpoint, noise_std_m, str(tmp_dir))
    seeds = range(first_seed, limit)
    try:
        with WorkerPool(_Collector, args, workers) as pool:
            for item in pool.imap(seeds):
                if handle(item):
                    pool.terminate()
                    break
    except KeyboardInterrupt:
        # Stopped early (Ctrl-C or SIGTERM): keep what was collected, with a valid meta.json.
        print(f'\nstopped: keeping {len(kept)} episodes', flush=True)
    finally:
        bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    meta = _meta(driver, checkpoint, noise_std_m, first_seed, kept, successes, dropped,
                 lengths, interventions, workers, time.time() - start)
    with open(out_dir / 'meta.json', 'w', encoding='utf-8') as stream:
        json.dump(meta, stream, indent=2)
    return meta


def _meta(driver, checkpoint, noise_std_m, first_seed, kept, successes, dropped, lengths,
          interventions, workers, elapsed) -> Dict[str, Any]:
    from genpolicy_ros.sim.config import SimConfig
    from genpolicy_ros.sim.record_demos import EPISODE_KEYS, FORMAT_VERSION
    config = SimConfig.load()
    return {
        'format_version': FORMAT_VERSION,
        'collector': 'genpolicy-collect (lock-step stack, CBF filter in the loop)',
        'driver': driver,
        'checkpoint': checkpoint,
        'expert': dataclasses.asdict(config.expert),
        'episodes': len(kept),
        'keys': dict(EPISODE_KEYS, driver='str () who executed: expert (noisy) or policy'),
        'rates_hz': {'decision': config.decision_hz, 'control': config.control_hz,
                     'physics': config.physics_hz},
        'push_height_m': config.task.push_height_m,
        'tcp_push_z_m': config.task.tcp_push_z_m,
        'noise_std_m': noise_std_m if driver == 'expert' else 0.0,
        'first_seed': first_seed,
        'seeds': kept,
        'episode_success': successes,
        'success_rate': float(np.mean(successes)) if successes else 0.0,
        'dropped_seeds': dropped,
        'steps_total': int(sum(lengths)),
        'mean_intervention_mps': float(np.mean(interventions)) if interventions else 0.0,
        'workers': workers,
        'collection_time_s': elapsed,
    }


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog='genpolicy-collect', description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--driver', choices=DRIVERS, required=True,
                   help='expert: noisy scripted expert drives; policy: CHECKPOINT drives '
                        '(DAgger); the expert labels every step in both cases')
    p.add_argument('--episodes', type=int, required=True)
    p.add_argument('--seed', type=int, required=True, help='first training seed')
    p.add_argument('--out', type=Path, required=True, help='output directory')
    p.add_argument('--checkpoint', default=None,
                   help='policy checkpoint for --driver policy (default: shipped)')
    p.add_argument('--noise-std', type=float, default=0.01,
                   help='DART noise std on the executed xy target for --driver expert [m]')
    p.add_argument('--workers', type=int, default=2, help='parallel processes')
    p.add_argument('--overwrite', action='store_true', help='replace existing episodes')
    args = p.parse_args(argv)

    def _interrupt(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    meta = collect(args.driver, args.episodes, args.out, args.seed, args.checkpoint,
                   args.noise_std, args.workers, args.overwrite)
    print(f"kept {meta['episodes']} episodes ({meta['driver']} driving, success rate "
          f"{meta['success_rate']:.2f}), {meta['steps_total']} steps, "
          f"{meta['collection_time_s']:.0f} s -> {args.out}")
    return 0 if meta['episodes'] == args.episodes else 1


if __name__ == '__main__':
    raise SystemExit(main())
