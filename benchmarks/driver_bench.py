"""Franka driver's 1 kHz loop against the franka-sim FCI server: lost cycles and jitter.

Starts franka-sim (``--enforce-comm-constraints --enforce-motion-limits``, the project's own
arm) unless ``--no-server`` (one already listens on 127.0.0.1), then runs the Franka backend
with ``config/driver.yaml`` (RealtimeConfig ignore: simulation) for ``--duration`` seconds while
a commander at 100 Hz streams a joint motion, as the safety filter would.

Measured at the driver: *lost cycles*, robot-clock steps of more than 1 ms between two states
the loop read (the FCI extrapolated a command it never got), and the *command period* between
two consecutive ``writeOnce`` calls, whose deviation from 1 ms is the jitter. Also the states
per wall-clock second the server delivered (franka-sim's robot clock runs slower than the wall
clock when the machine is loaded) and the robot's ``control_command_success_rate``.

Usage: ``python benchmarks/driver_bench.py [--duration 60]``. The last line is
``lost_cycles=<int> jitter_p99_ms=<float>``.
"""

import argparse
import time

import numpy as np

from genpolicy_ros.drivers.franka_backend import FrankaBackend
from genpolicy_ros.drivers.franka_config import FrankaConfig
from genpolicy_ros.drivers.franka_control import Status
from genpolicy_ros.drivers.franka_sim_server import FrankaSimServer

NOMINAL_MS = 1.0


def run(duration_s: float, control_mode: str) -> dict:
    """Drive the simulated arm for ``duration_s``; return the loop's statistics."""
    cfg = FrankaConfig.load().replace(robot_ip='127.0.0.1', realtime_config='ignore',
                                      control_mode=control_mode)
    with FrankaBackend(cfg) as backend:
        backend.enable()
        if not backend.wait_for(lambda s: s.status == Status.ACTIVE, 30.0):
            raise RuntimeError(f'driver not active: {backend.status()}')
        start = backend.sample()
        q0 = start.q_c.copy()
        amplitude = np.array([0.2, -0.15, 0.2, 0.2, -0.2, 0.2, 0.3])
        w = 2 * np.pi / 4.0  # one cycle every 4 s, peak 0.24 rad/s
        backend.command_timing(reset=True)
        refused = 0
        t_wall0 = time.monotonic()
        while time.monotonic() - t_wall0 < duration_s:
            # Timed by the robot clock, which franka-sim slows down when the machine is loaded
            # (on hardware it is the wall clock); the position is due one command period later.
            t = backend.sample().robot_time - start.robot_time + 0.01
            try:
                backend.command(q0 + amplitude * (1 - np.cos(w * t)) / 2,
                                amplitude * w * np.sin(w * t) / 2)
            except ValueError:
                refused += 1  # never expected: counted so the table would show it
            time.sleep(0.01)
        wall = time.monotonic() - t_wall0
        end = backend.sample()
        timing = backend.command_timing()
        status = backend.status()
        backend.disable()
    return dict(timing=timing, wall_s=wall,
                states=end.counters['cycles'] - start.counters['cycles'],
                robot_s=end.robot_time - start.robot_time,
                lost=end.counters['lost_cycles'] - start.counters['lost_cycles'],
                reflexes=end.counters['reflexes'] - start.counters['reflexes'],
                success_rate=end.success_rate, status=status, refused=refused)


def main() -> None:
    """Run the benchmark and print the table and the machine-readable last line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=60.0, help='seconds of motion')
    parser.add_argument('--control-mode', default='position', choices=['position', 'velocity'])
    parser.add_argument('--no-server', action='store_true',
                        help='use the franka-sim server already running on 127.0.0.1')
    opts = parser.parse_args()
    server = None if opts.no_server else FrankaSimServer()
    if server is not None:
        server.start()
    try:
        r = run(opts.duration, opts.control_mode)
    finally:
        if server is not None:
            server.stop()
    timing = r['timing']
    print(f'driver loop ({opts.control_mode} mode), {r["wall_s"]:.1f} s wall, '
          f'{r["robot_s"]:.1f} s robot time, {r["states"]} states '
          f'({r["states"] / r["wall_s"]:.0f} per wall-clock second)')
    print(f'{"quantity (10 us bins)":<28}{"p50":>10}{"p99":>10}{"max":>10}')
    for name, around in (('command period [ms]', None), ('jitter |period-1ms| [ms]', NOMINAL_MS)):
        peak = timing.max_ms if around is None else abs(timing.max_ms - NOMINAL_MS)
        print(f'{name:<28}{timing.percentile(50, around):>10.3f}'
              f'{timing.percentile(99, around):>10.3f}{peak:>10.3f}')
    print(f'lost cycles {r["lost"]}, reflexes {r["reflexes"]}, refused commands {r["refused"]}, '
          f'robot success rate '
          f'{r["success_rate"]:.3f}, final status {r["status"].status.name} '
          f'({r["status"].message})')
    print(f'lost_cycles={r["lost"]} jitter_p99_ms={timing.percentile(99, NOMINAL_MS):.3f}')


if __name__ == '__main__':
    main()
