"""Cost of one monitor decision: chunk checks + consistency score + gate (p50/p99 per decision).

Runs the real ``RuntimeMonitor`` (config/monitor.yaml, Franka limits) on synthetic chunks of
``N`` samples x ``H`` = 16 steps x ``D`` = 3, one decision every 0.8 s of simulated time, with
joint states, camera frames and safe commands fed between decisions (not timed) so the gate
sees live inputs. The threshold comes from a split-conformal calibration on 40 synthetic
nominal episodes (the benchmark's own data; it is not the policy's calibration).

A second table times the per-frame camera-content check (``on_camera`` with a 96x96 frame:
the shipped novelty model's three components - policy-encoder features, hue histogram, arm
position read from the keypoints vs forward kinematics - and the frozen-frame check), which
runs at the camera rate beside the decisions.

Usage: ``python benchmarks/monitor_bench.py [--samples 16 32] [--decisions 1000]``. The last
line is ``monitor_p99_ms=<float>`` for the default N (the first of ``--samples``).
"""

import argparse
import os
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')  # 2 shared cores: never fan out BLAS threads
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import numpy as np  # noqa: E402

from genpolicy_ros.monitor.calibration import calibrate  # noqa: E402
from genpolicy_ros.monitor.consistency import ConsistencyScorer  # noqa: E402
from genpolicy_ros.monitor.monitor import load_novelty_model  # noqa: E402
from genpolicy_ros.monitor.monitor import MonitorConfig, RuntimeMonitor  # noqa: E402
from genpolicy_ros.monitor.novelty import FEATURE_DEFINITION  # noqa: E402
from genpolicy_ros.robot import FrankaModel  # noqa: E402

H, D = 16, 3
TIMES = 0.1 * np.arange(H)
DECISION_S = 0.8


def _chunk(rng: np.random.Generator, stamp: float, n: int) -> np.ndarray:
    t = stamp + TIMES
    mean = np.array([0.5, 0.0, 0.1]) + t[:, None] * np.array([0.05, 0.02, 0.0])
    return mean[None] + rng.uniform(0.002, 0.008) * rng.normal(size=(n, H, D))


def bench(n: int, decisions: int, config: MonitorConfig, limits) -> dict:
    """Return per-decision timings [ms] for ``n`` samples per chunk."""
    rng = np.random.default_rng(n)
    episodes = []
    for _ in range(40):
        scorer = ConsistencyScorer(config.consistency)
        episodes.append([scorer.score(k * DECISION_S, TIMES,
                                      _chunk(rng, k * DECISION_S, n)).score for k in range(8)])
    cal = calibrate(episodes, 0.05, 'synthetic-benchmark', config.consistency.definition(),
                    np.zeros(40), FEATURE_DEFINITION, 'unused')
    monitor = RuntimeMonitor(config, limits.velocity, limits.acceleration, cal)
    q = np.zeros(7)
    total, score_only = [], []
    warmup = 20
    for k in range(decisions + warmup):
        stamp = k * DECISION_S
        now = stamp + 0.05
        monitor.on_joint_state(q, q, now, now)
        monitor.on_camera(now, now)
        monitor.on_safe_command(q, q, now, False, now)
        samples = _chunk(rng, stamp, n)
        t0 = time.perf_counter()
        result = monitor.on_chunk_samples(stamp, TIMES, samples, now)
        t1 = time.perf_counter()
        monitor.update(now)
        t2 = time.perf_counter()
        if result is None:
            raise RuntimeError('the benchmark chunk was rejected: ' + str(monitor.status()))
        if k >= warmup:
            total.append((t2 - t0) * 1e3)
            score_only.append((t1 - t0) * 1e3)
    total_a, score_a = np.array(total), np.array(score_only)
    return {'n': n, 'decisions': decisions, 'p50': np.percentile(total_a, 50),
            'p99': np.percentile(total_a, 99), 'max': total_a.max(),
            'chunk_p99': np.percentile(score_a, 99), 'mode': monitor.mode.name}


def bench_camera(frames: int, config: MonitorConfig, limits) -> dict:
    """Return per-frame timings [ms] of the camera-content check with the shipped model."""
    model = load_novelty_model(config)
    if model is None:
        raise SystemExit(f'no novelty model config/{config.novelty.model_file}: run '
                         f'genpolicy-calibrate first')
    monitor = RuntimeMonitor(config, limits.velocity, limits.acceleration, None, model)
    rng = np.random.default_rng(0)
    size = model.image_size_px
    times = []
    for k in range(frames + 20):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        now = k / 15.0
        monitor.on_joint_state(np.zeros(7), np.zeros(7), now, now)
        t0 = time.perf_counter()
        monitor.on_camera(now, now, image)
        if k >= 20:
            times.append((time.perf_counter() - t0) * 1e3)
    a = np.array(times)
    return {'frames': frames, 'p50': np.percentile(a, 50), 'p99': np.percentile(a, 99),
            'max': a.max()}


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--samples', type=int, nargs='+', default=[16, 32],
                        help='samples per chunk N; the first is the default N')
    parser.add_argument('--decisions', type=int, default=1000)
    parser.add_argument('--frames', type=int, default=500, help='camera frames to time')
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    config = MonitorConfig.load()
    limits = FrankaModel().limits
    rows = [bench(n, args.decisions, config, limits) for n in args.samples]
    print(f'monitor decision cost (on_chunk_samples + update), H={H}, D={D}, '
          f'{args.decisions} decisions each')
    print(f'{"N":>4} {"p50_ms":>8} {"p99_ms":>8} {"max_ms":>8} {"chunk_p99_ms":>13} '
          f'{"final_mode":>10}')
    for r in rows:
        print(f'{r["n"]:>4} {r["p50"]:>8.3f} {r["p99"]:>8.3f} {r["max"]:>8.3f} '
              f'{r["chunk_p99"]:>13.3f} {r["mode"]:>10}')
    cam = bench_camera(args.frames, config, limits)
    print(f'camera-content check per frame ({size_note(config)}), {cam["frames"]} frames: '
          f'p50 {cam["p50"]:.3f} ms, p99 {cam["p99"]:.3f} ms, max {cam["max"]:.3f} ms')
    print(f'monitor_p99_ms={rows[0]["p99"]:.4f}')


def size_note(config: MonitorConfig) -> str:
    """Describe what the camera check runs."""
    return ('policy encoder + Mahalanobis, hue histogram, TCP + cube readings, forward '
            f'kinematics, {config.novelty.model_file}, 1 torch thread')


if __name__ == '__main__':
    main()
