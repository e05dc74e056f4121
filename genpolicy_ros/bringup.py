"""``genpolicy-sim``: the whole ROS 2 graph, headless, in one process.

Starts the same node classes that ``launch/sim_launch.py`` starts, with parameters from the same
``config/*.yaml``, each node on its own executor thread: sim_node (PyBullet arm, camera) ->
policy_node -> safety_filter_node -> monitor_node -> sim_node. Messages travel over real DDS,
exactly as between processes. It runs push episodes, prints a line per second and a summary,
and records every genpolicy topic to an MCAP file (``--record``).
"""

import argparse
from pathlib import Path
import sys
import threading
import time
from typing import List, Optional

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.recording.config import RecorderConfig
from genpolicy_ros.recording.recorder import McapRecorder


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='genpolicy-sim', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--episodes', type=int, default=2, help='push episodes to run')
    p.add_argument('--episode-time', type=float, default=15.0,
                   help='time limit per episode [s] (wall clock = sim time)')
    p.add_argument('--seed', type=int, default=100000,
                   help='first episode seed (>= 100000: held out from training)')
    p.add_argument('--policy', choices=('flow', 'expert'), default='flow',
                   help='the shipped learned policy, or the scripted expert it imitates')
    p.add_argument('--checkpoint', default='', help='policy checkpoint (default: shipped)')
    p.add_argument('--gui', action='store_true', help='open the PyBullet GUI')
    p.add_argument('--record', default='runs/genpolicy_sim.mcap',
                   help='MCAP file of all genpolicy topics ("" to disable)')
    return p.parse_args(argv)


class Bringup:
    """Build and spin the graph; used by ``main`` and by the tests."""

    def __init__(self, policy: str = 'flow', checkpoint: str = '', gui: bool = False,
                 seed: int = 100000, record: str = '') -> None:
        from genpolicy_ros.nodes.monitor_node import MonitorNode
        from genpolicy_ros.nodes.policy_node import PolicyNode
        from genpolicy_ros.nodes.safety_filter_node import SafetyFilterNode
        from genpolicy_ros.nodes.sim_node import SimNode
        self.context = Context()
        rclpy.init(context=self.context)
        ctx = dict(context=self.context)
        self.sim = SimNode(**ctx, parameter_overrides=[
            Parameter('gui', value=gui), Parameter('node.episode_seed', value=seed)])
        self.policy = PolicyNode(**ctx, parameter_overrides=[
            Parameter('node.policy_type', value=policy)] + (
            [Parameter('checkpoint', value=checkpoint)] if checkpoint else []))
        self.filter = SafetyFilterNode(**ctx)
        self.monitor = MonitorNode(**ctx)
        self.nodes = [self.sim, self.policy, self.filter, self.monitor]
        self.recorder = None
        if record:
            Path(record).parent.mkdir(parents=True, exist_ok=True)
            rec_node = rclpy.create_node('mcap_recorder', context=self.context)
            self.recorder = McapRecorder.from_config(rec_node, record, RecorderConfig.load())
            self.nodes.append(rec_node)
        # One executor and thread per node: each waits only on its own node's entities, so a
        # slow callback (the sim's 20 ms render) delays no other node's timers.
        # (rclpy's experimental EventsExecutor deadlocked in publish here: not used.)
        self.executors = [SingleThreadedExecutor(context=self.context) for _ in self.nodes]
        self._threads = []
        for node, executor in zip(self.nodes, self.executors):
            executor.add_node(node)
            thread = threading.Thread(target=executor.spin, name=node.get_name(), daemon=True)
            self._threads.append(thread)
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        self._client = self.monitor.create_client(Trigger, '/monitor_node/reset')
        self._episode_client = self.sim.create_client(Trigger, '/sim_node/reset_episode')

    def call(self, client, timeout_s: float = 5.0) -> Trigger.Response:
        """Call a Trigger service and wait for the reply."""
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError(f'service {client.srv_name} not available')
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            raise RuntimeError(f'service {client.srv_name} did not answer')
        return future.result()

    def next_episode(self, settle_s: float = 0.5, timeout_s: float = 5.0) -> str:
        """Start the next episode: new cube/goal, arm at the start, policy and monitor reset.

        Rebuilding the PyBullet scene pauses the joint states, which the monitor rightly
        treats as a fault; the operator-style reset is retried until the inputs are live.
        """
        reply = self.call(self._episode_client)
        self.policy.reset_episode()
        time.sleep(settle_s)
        return f'{reply.message}; monitor: {self.release_hold(timeout_s)}'

    def release_hold(self, timeout_s: float = 30.0) -> str:
        """Reset the monitor as an operator would, retried until its inputs are live.

        monitor_node starts in HOLD and leaves it only on an explicit reset: this demo is its
        operator. Returns the monitor's last answer.
        """
        deadline = time.monotonic() + timeout_s
        message = self.monitor.reset_episode()
        while self.monitor.monitor.mode == Mode.HOLD and time.monotonic() < deadline:
            time.sleep(0.1)
            message = self.monitor.reset_episode()
        return message

    def shutdown(self) -> None:
        """Stop spinning, then release every node (in that order: no callback outlives it)."""
        if self.recorder is not None:
            self.recorder.close()
        for executor in self.executors:
            executor.shutdown(timeout_sec=2.0)
        for thread in self._threads:
            thread.join(timeout=2.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def run(args: argparse.Namespace) -> int:
    """Run the episodes and print the summary; return the process exit code."""
    print(f'genpolicy-sim: policy={args.policy} episodes={args.episodes} seed={args.seed} '
          f'record={args.record or "off"}', flush=True)
    graph = Bringup(args.policy, args.checkpoint, args.gui, args.seed, args.record)
    results = []
    try:
        print(f'start: monitor: {graph.release_hold()}', flush=True)
        for ep in range(args.episodes):
            if ep > 0:
                print(f'next episode: {graph.next_episode()}', flush=True)
            results.append(_episode(graph, ep, args.episode_time))
    except KeyboardInterrupt:
        print('interrupted', flush=True)
    finally:
        summary = _summary(graph, results)
        graph.shutdown()
    print(summary, flush=True)
    return 0


def _episode(graph: Bringup, index: int, time_limit_s: float) -> dict:
    start = time.monotonic()
    speeds = []
    modes = set()
    while True:
        time.sleep(1.0)
        elapsed = time.monotonic() - start
        task = graph.sim.task_status()
        res = graph.filter.last_result
        mode = graph.monitor.monitor.mode
        modes.add(mode.name)
        if res is not None:
            speeds.append(float(np.linalg.norm(res.safe_twist[:3])))
        status = res.status.name if res is not None else 'none'
        print(f'  ep {index} t={elapsed:5.1f}s cube->goal {task["distance_m"] * 100:5.1f} cm '
              f'filter {status:<22} monitor {mode.name:<7} '
              f'EE speed {speeds[-1] if speeds else 0.0:.3f} m/s', flush=True)
        if task['success'] or elapsed >= time_limit_s or mode == Mode.HOLD and elapsed > 5.0:
            break
    result = dict(index=index, success=bool(task['success']), time_s=elapsed,
                  distance_m=task['distance_m'], modes=sorted(modes))
    print(f'episode {index}: {"SUCCESS" if result["success"] else "failure"} after '
          f'{elapsed:.1f} s (cube {task["distance_m"] * 100:.1f} cm from goal)', flush=True)
    return result


def _summary(graph: Bringup, results: list) -> str:
    f = graph.filter
    counts = {k: v for k, v in f.counts.items() if v}
    steps = max(sum(f.counts.values()), 1)
    intervened = sum(v for k, v in f.counts.items() if k != 'OK')
    top = sorted(f.active_counts.items(), key=lambda kv: -kv[1])[:5]
    sim = graph.sim.stats
    wall = max(time.monotonic() - graph.started, 1e-9)
    lines = ['', '=== genpolicy-sim summary ===',
             f'episodes: {len(results)}, successes: {sum(r["success"] for r in results)}',
             f'filter steps: {steps}, status counts: {counts}',
             f'filter modified {100.0 * intervened / steps:.1f}% of commands; most active '
             f'barriers: {", ".join(f"{k} ({v})" for k, v in top) or "none"}',
             'monitor transitions: ' + '; '.join(
                 f'{t.from_mode.name}->{t.to_mode.name} ({t.reason})'
                 for t in graph.monitor.monitor.transitions[-6:]),
             f'driver: {sim["commands"]} arm commands, {sim["rejected"]} refused, '
             f'{sim["stale_holds"]} stale holds, {sim["frames"]} camera frames',
             f'rates over {wall:.0f} s: joint states {sim["ticks"] / wall:.0f} Hz, filter '
             f'{steps / wall:.0f} Hz, arm commands {sim["commands"] / wall:.0f} Hz, camera '
             f'{sim["frames"] / wall:.1f} Hz']
    if graph.recorder is not None:
        lines.append(f'recording: {graph.recorder.path}')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``genpolicy-sim``."""
    sys.exit(run(_parse(argv)))
