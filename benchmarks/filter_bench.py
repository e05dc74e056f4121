#!/usr/bin/env python3
"""Benchmark the CBF-QP safety filter: fast backend vs cvxpy reference, and the full step().

States come from a closed-loop kinematic run (``q += dt * dq``) whose reference pushes into the
table, into a keep-out sphere placed in the task area, into a joint limit and around at 10x the
speed cap, so the QPs have realistic active sets. The timings run as separate passes so that one
solver's cache footprint does not slow another: (1) the closed loop times the full ``step()``
and records every QP it solved; (2) a separate warm-started fast backend solves the recorded
sequence, timed per solve with its Python wrapper; (3) the cvxpy reference solves every
``--ref-every``-th QP and its answers are compared with the fast ones. Prints a table and, as its
last line, ``filter_p99_us=<float> reference_p99_us=<float> ratio=<reference_p99/filter_p99>``.

Usage: python benchmarks/filter_bench.py [--solves 10000] [--ref-every 10] [--seed 0]
"""

import argparse
import dataclasses
import time

import numpy as np

from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.backend_cvxpy import CvxpyBackend
from genpolicy_ros.safety.backend_daqp import DaqpBackend
from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import RobotState, SafetyFilter


def _reference(phase: str, rng, kin, filt) -> np.ndarray:
    if phase == 'table':
        return np.array([0.2, 0.0, -2.5, 0.0, 0.0, 0.0])
    if phase == 'obstacle':
        direction = filt.barriers.obs_start[0] - kin.ee_pos
        return np.concatenate([2.5 * direction / np.linalg.norm(direction), np.zeros(3)])
    if phase == 'joint_limit':
        return kin.ee_jac @ np.array([0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    return rng.normal(0.0, 0.5, 6)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--solves', type=int, default=10000)
    parser.add_argument('--ref-every', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    model = FrankaModel()
    # The budget is what we measure here, not something to enforce.
    config = dataclasses.replace(SafetyConfig.load(), solve_time_budget_s=1.0)
    filt = SafetyFilter(model, config, backend='daqp')
    # A keep-out sphere in the push-task area (plus the YAML's post and capsule).
    obs = config.obstacles
    filt.set_obstacles(np.vstack([[[0.55, 0.15, 0.1]], obs.centers_m]),
                       np.concatenate([[0.06], obs.radii_m]), obs.capsule_starts_m,
                       obs.capsule_ends_m, obs.capsule_radii_m)
    rng = np.random.default_rng(args.seed)
    phases = ['table', 'obstacle', 'random', 'joint_limit']
    q, dq = model.q_home.copy(), np.zeros(model.nq)
    problems, step_t, statuses = [], [], {}
    # Pass 1: the closed loop, timing the full step() and keeping every QP it solved.
    for k in range(args.solves):
        phase = phases[(k // 250) % len(phases)]
        if k % 1000 == 0:   # restart from a fresh state now and then
            q, dq = model.q_home + rng.normal(0.0, 0.2, model.nq), np.zeros(model.nq)
            filt.reset()
        kin = model.kinematics(q)
        ref = _reference(phase, rng, kin, filt)
        start = time.perf_counter()
        result = filt.step(RobotState(q, dq, 0.01 * k), ref)
        step_t.append(time.perf_counter() - start)
        statuses[result.status.name] = statuses.get(result.status.name, 0) + 1
        problems.append(filt.last_problem)
        q, dq = q + config.dt * result.dq_cmd, result.dq_cmd
    # Pass 2: the fast backend on the same sequence (so its warm start sees realistic changes).
    fast, fast_t, fast_x = DaqpBackend(), [], []
    for problem in problems:
        start = time.perf_counter()
        sol = fast.solve(problem)
        fast_t.append(time.perf_counter() - start)
        fast_x.append(sol.x)
    # Pass 3: the reference on every ref_every-th problem, compared with the fast answers.
    reference, ref_t, worst = CvxpyBackend(), [], 0.0
    for k in range(0, len(problems), args.ref_every):
        start = time.perf_counter()
        sol = reference.solve(problems[k])
        ref_t.append(time.perf_counter() - start)
        if sol.x is not None and fast_x[k] is not None:
            worst = max(worst, float(np.max(np.abs(sol.x - fast_x[k]))))
    rows, cols = problems[-1].A.shape

    def row(name, times):
        us = np.asarray(times) * 1e6
        p50, p99 = np.percentile(us, [50, 99])
        return f'{name:<34}{len(us):>8}{p50:>10.1f}{p99:>10.1f}{us.max():>10.1f}', p99

    print(f'QP size: {cols} variables (7 joint velocities + {cols - 7} slacks), {rows} rows '
          f'+ {cols} bounds; statuses {statuses}')
    print(f'max |fast - reference| over compared solves: {worst:.2e}')
    print(f"{'':<34}{'n':>8}{'p50 us':>10}{'p99 us':>10}{'max us':>10}")
    line, fast_p99 = row('fast backend (daqp, warm) solve', fast_t)
    print(line)
    line, ref_p99 = row('reference (cvxpy+Clarabel) solve', ref_t)
    print(line)
    print(row('SafetyFilter.step() (daqp)', step_t)[0])
    print(f'filter_p99_us={fast_p99:.1f} reference_p99_us={ref_p99:.1f} '
          f'ratio={ref_p99 / fast_p99:.1f}')


if __name__ == '__main__':
    main()
