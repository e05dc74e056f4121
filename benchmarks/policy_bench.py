"""Per-chunk inference time of the flow policy on CPU (p50 / p99 of ``FlowPolicy.act``).

Covers flow steps K in {1, 2, 10} x samples N in {1, 16}, a few more N for choosing the
default, and the default of ``config/policy.yaml``. One call = encode the observation once +
K Euler steps on a batch of N chunks + unnormalise. The shipped checkpoint is used when it
exists; otherwise a randomly initialised network of the same shape (the time does not depend
on the weights). The LAST line is machine-readable::

    policy_p99_ms=<p99 at the default> steps=<K> samples=<N>

Each row also times the reference path (``FlowPolicy.fast = False``: the plain module forward
at every Euler step) in the same run, alternating call by call with the fast path so that load
from other processes hits both alike; ``speed-up`` is reference p50 / fast p50. Calls cycle
through different random observations (nothing is cached between calls).

Usage: ``python benchmarks/policy_bench.py [--threads T] [--reps R] [--no-reference]``.
"""

import argparse
import os
import tempfile
from pathlib import Path
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

from genpolicy_ros.policy.checkpoint import atomic_save
from genpolicy_ros.policy.config import PolicyConfig, PolicyRuntimeConfig
from genpolicy_ros.policy.dataset import Normalizer
from genpolicy_ros.policy.network import FlowPolicyNet
from genpolicy_ros.policy.policy import FlowPolicy, resolve_checkpoint


def _random_checkpoint(directory: Path) -> Path:
    cfg = PolicyConfig.load(decision_period_s=0.1, push_height_m=0.1)
    norm = Normalizer({'action_min': [0.3, -0.3], 'action_max': [0.7, 0.3],
                       'proprio_min': [0.3, -0.3], 'proprio_max': [0.7, 0.3]})
    path = directory / 'random.pt'
    atomic_save({'model': FlowPolicyNet(cfg).state_dict(), 'ema': None, 'step': 0,
                 'normalizer': norm.state_dict(), 'policy_config': cfg.to_dict()}, path)
    return path


def _percentiles(times: List[float]) -> Tuple[float, float]:
    return 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 99))


def _time(policy: FlowPolicy, observations: List[dict], steps: int, samples: int, reps: int,
          reference: bool) -> Dict[bool, Tuple[float, float]]:
    """Return {fast: (p50, p99) ms}; with ``reference`` the two paths alternate per call."""
    modes = [True, False] if reference else [True]
    times: Dict[bool, List[float]] = {m: [] for m in modes}
    for i in range(5 + reps):  # 5 warm-up calls (allocator, first-call overheads)
        obs = observations[i % len(observations)]
        for fast in (modes if i % 2 else modes[::-1]):  # neither path always runs first
            policy.fast = fast
            t0 = time.perf_counter()
            policy.act(obs, steps=steps, n_samples=samples)
            if i >= 5:
                times[fast].append(time.perf_counter() - t0)
    policy.fast = True
    return {m: _percentiles(t) for m, t in times.items()}


def main() -> None:
    """Print the timing table; the last line is the default setting's p99."""
    rt = PolicyRuntimeConfig.load()
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', type=int, default=rt.torch_threads,
                   help='torch threads (default: torch_threads of policy.yaml)')
    p.add_argument('--reps', type=int, default=200, help='timed calls per setting')
    p.add_argument('--no-reference', action='store_true',
                   help='skip the reference path (plain module forward) column')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = resolve_checkpoint(rt.checkpoint)
        source = str(ckpt) if ckpt.is_file() else 'random weights (no checkpoint yet)'
        if not ckpt.is_file():
            ckpt = _random_checkpoint(Path(tmp))
        policy = FlowPolicy.load(ckpt, runtime=PolicyRuntimeConfig.from_dict(
            dict(rt.to_dict(), torch_threads=args.threads)))
    cfg = policy.config
    rng = np.random.default_rng(0)
    shape = (cfg.n_obs_steps, cfg.image_size_px, cfg.image_size_px, 3)
    observations = [{'images': rng.integers(0, 256, shape, dtype=np.uint8),
                     'ee_pos': np.array([rng.uniform(0.4, 0.6), rng.uniform(-0.1, 0.1),
                                         cfg.push_height_m])} for _ in range(8)]
    reference = not args.no_reference
    settings: List[Tuple[int, int]] = [(k, n) for k in (1, 2, 10) for n in (1, 16)]
    settings += [(2, 4), (2, 8), (4, 8), (rt.flow_steps, rt.n_samples)]
    settings = sorted(set(settings))
    load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
    print(f'policy inference per chunk: {source}; torch threads {args.threads}; '
          f'{args.reps} calls per row; horizon {cfg.horizon}; '
          f'load average {load} on {os.cpu_count()} CPUs')
    header = f'{"steps K":>8} {"samples N":>10} {"p50 ms":>8} {"p99 ms":>8}'
    if reference:
        header += f' {"ref p50":>8} {"ref p99":>8} {"speed-up":>8}'
    print(header)
    result = {}
    for k, n in settings:
        timing = _time(policy, observations, k, n, args.reps, reference)
        result[(k, n)] = timing[True]
        row = f'{k:8d} {n:10d} {timing[True][0]:8.2f} {timing[True][1]:8.2f}'
        if reference:
            ref = timing[False]
            row += f' {ref[0]:8.2f} {ref[1]:8.2f} {ref[0] / timing[True][0]:7.2f}x'
        mark = '  <- default (policy.yaml)' if (k, n) == (rt.flow_steps, rt.n_samples) else ''
        print(row + mark, flush=True)
    p99 = result[(rt.flow_steps, rt.n_samples)][1]
    print(f'policy_p99_ms={p99:.3f} steps={rt.flow_steps} samples={rt.n_samples}')


if __name__ == '__main__':
    main()
