"""Closed-loop check of a policy checkpoint in the PyBullet push task (held-out seeds).

Runs the lock-step episode runner (:func:`genpolicy_ros.sim.episode.run_episode`, IK
controller, no safety filter) with the policy behind :class:`ChunkingAgent`, once per chunk
smoothing mode, and prints success rate, chunk compute time and the jerk of the commanded
targets and of the measured EE at chunk boundaries vs elsewhere. Example::

    python -m genpolicy_ros.policy.evaluate --checkpoint checkpoints/push_flow_v1.pt
        --seeds 20 --smoothing none,blend
"""

import argparse
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from genpolicy_ros.policy.chunking import boundary_jerk, JerkStats
from genpolicy_ros.policy.config import PolicyRuntimeConfig
from genpolicy_ros.policy.policy import FlowPolicy, make_agent


def _pooled(stats: List[JerkStats]) -> Dict[str, float]:
    """Pool per-episode jerk stats (max of maxima, RMS of RMS values)."""
    if not stats:
        return {'b_max': float('nan'), 'b_rms': float('nan'), 'i_rms': float('nan')}
    return {'b_max': max(s.boundary_max for s in stats),
            'b_rms': float(np.sqrt(np.mean([s.boundary_rms ** 2 for s in stats]))),
            'i_rms': float(np.sqrt(np.mean([s.interior_rms ** 2 for s in stats])))}


def evaluate(policy: FlowPolicy, seeds: List[int], smoothing: str,
             runtime: PolicyRuntimeConfig) -> Dict[str, float]:
    """Run one episode per seed; return success rate, timing and jerk figures."""
    from genpolicy_ros.drivers.pybullet_backend import PyBulletBackend
    from genpolicy_ros.sim.config import SimConfig
    from genpolicy_ros.sim.episode import run_episode
    from genpolicy_ros.sim.ik_controller import IKController
    from genpolicy_ros.sim.world import PandaWorld

    sim = SimConfig.load()
    world = PandaWorld(sim, gui=False)
    backend = PyBulletBackend(world)
    controller = IKController(sim)
    agent = make_agent(policy, runtime, smoothing=smoothing)
    period = policy.config.decision_period_s
    successes, steps, times = 0, [], []
    cmd_jerk: List[JerkStats] = []
    ee_jerk: List[JerkStats] = []
    t0 = time.monotonic()
    try:
        for seed in seeds:
            result = run_episode(backend, agent, controller, seed)
            successes += int(result.success)
            steps.append(result.steps)
            times += agent.compute_times_s
            if len(agent.targets) >= 4:
                cmd_jerk.append(boundary_jerk(np.array(agent.targets), period, agent.boundaries))
                ee = np.array([r.obs['ee_pos'] for r in result.records])
                ee_jerk.append(boundary_jerk(ee, period, agent.boundaries))
    finally:
        backend.close()
        world.close()
        controller.close()
    cmd, ee = _pooled(cmd_jerk), _pooled(ee_jerk)
    return {'success': successes / max(len(seeds), 1), 'episodes': len(seeds),
            'mean_steps': float(np.mean(steps)) if steps else 0.0,
            'chunk_p50_ms': 1e3 * float(np.percentile(times, 50)) if times else float('nan'),
            'chunk_p99_ms': 1e3 * float(np.percentile(times, 99)) if times else float('nan'),
            'cmd_jerk_boundary_rms': cmd['b_rms'], 'cmd_jerk_interior_rms': cmd['i_rms'],
            'cmd_jerk_boundary_max': cmd['b_max'],
            'ee_jerk_boundary_rms': ee['b_rms'], 'ee_jerk_interior_rms': ee['i_rms'],
            'wall_s': time.monotonic() - t0}


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry: evaluate a checkpoint on held-out seeds."""
    from genpolicy_ros.sim.task import EVAL_SEED_START
    p = argparse.ArgumentParser(description='Closed-loop success and boundary jerk check.')
    p.add_argument('--checkpoint', help='checkpoint file (default: config/policy.yaml)')
    p.add_argument('--seeds', type=int, default=20, help='number of held-out seeds')
    p.add_argument('--first-seed', type=int, default=EVAL_SEED_START)
    p.add_argument('--steps', type=int, help='flow steps K (default: policy.yaml)')
    p.add_argument('--samples', type=int, help='samples N (default: policy.yaml)')
    p.add_argument('--smoothing', default='none,blend',
                   help='comma-separated smoothing modes to compare')
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (('flow_steps', args.steps), ('n_samples', args.samples))
                 if v is not None}
    rt = PolicyRuntimeConfig.from_dict(dict(PolicyRuntimeConfig.load().to_dict(),
                                            torch_threads=args.threads, **overrides))
    policy = FlowPolicy.load(args.checkpoint, runtime=rt)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f'checkpoint step {policy.info["step"]}, K={rt.flow_steps}, N={rt.n_samples}, '
          f'seeds {seeds[0]}..{seeds[-1]}')
    print(f'{"smoothing":>9} {"success":>8} {"steps":>6} {"p50 ms":>7} {"p99 ms":>7} '
          f'{"cmd jerk bnd/int rms [m/s^3]":>29} {"ee jerk bnd/int rms":>20} {"wall s":>7}')
    for mode in args.smoothing.split(','):
        r = evaluate(policy, seeds, mode.strip(), rt)
        print(f'{mode:>9} {r["success"]:8.2f} {r["mean_steps"]:6.1f} {r["chunk_p50_ms"]:7.1f} '
              f'{r["chunk_p99_ms"]:7.1f} {r["cmd_jerk_boundary_rms"]:14.2f}/'
              f'{r["cmd_jerk_interior_rms"]:<14.2f} {r["ee_jerk_boundary_rms"]:9.2f}/'
              f'{r["ee_jerk_interior_rms"]:<10.2f} {r["wall_s"]:7.1f}', flush=True)


if __name__ == '__main__':
    main()
