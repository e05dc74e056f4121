"""The whole ROS graph under load: camera-to-command latency and the driver's command jitter.

Four node processes (their installed console scripts, shipped YAML) on a private ROS domain:
``sim_node`` with joint states at 1 kHz and the camera at 30 Hz, 640x480 (parameter overrides
for this run only; frames rendered at 128x96 and enlarged, see ``LOADS``), ``policy_node``
with the learned flow policy at 10 Hz, ``safety_filter_node`` and ``monitor_node``. The monitor
is reset once its inputs are live (as an operator would), then the graph runs for
``--duration`` seconds while this process listens:

* loop latency: a chunk carries its camera frame's stamp; the first safe command the filter
  stamped after this process received the chunk used it, and the first arm command stamped
  after that one passed it on. Latency = that arm command's arrival here - the frame's stamp
  (all on the machine's one clock), counted while the monitor passes commands (not in HOLD).
* its first leg: a chunk's arrival here - its frame's stamp (render, transport, the policy's
  wait for the frame and inference); the rest is the filter's and the monitor's steps.
* driver jitter: |interval between arm commands arriving - the monitor's 10 ms period|, as a
  subscriber of the same topic as the driver sees it (its thread SCHED_FIFO where permitted,
  like a driver's loop).

While measuring, an operator thread resets the monitor whenever a watchdog made it hold (a
loaded machine trips them); the number of resets and the time in each mode are printed.

Prints p50/p99/max per quantity, the rates and monitor modes, then as the last line::

    loop_p99_ms=<float> driver_jitter_p99_ms=<float>

Targets: loop p99 <= 50 ms, jitter p99 <= 1 ms. Python nodes on a loaded 2-core machine may miss
them: the numbers are what was measured.
"""

import argparse
import bisect
import os
from pathlib import Path
import sys
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'test' / 'fault_injection'))

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import MultiDOFJointTrajectory  # noqa: E402

from fi_checks import OperatorOnDuty  # noqa: E402
from fi_graph import claim_domain  # noqa: E402
from genpolicy_ros.nodes import conversions as cv  # noqa: E402
from genpolicy_ros.nodes.dds import choose_dds_profile  # noqa: E402
from genpolicy_ros.nodes.process import NodeProcess, ros_param_args  # noqa: E402
from genpolicy_ros.nodes.realtime import realtime_thread  # noqa: E402

LOADS = {
    # The load: joint states at 1 kHz, the camera at 30 Hz and 640x480. The sim renders
    # each frame at 128x96 and enlarges it (camera.render_scale): TinyRenderer takes ~70 ms per
    # 640x480 frame on this machine's cores, so 30 Hz would need two of them for rendering
    # alone and the camera ran at ~5 Hz; a real camera costs the host no rendering. The stack
    # receives what the issue asks for: 640x480 frames at 30 Hz, and the policy input cut from
    # them is the native 96x96 render.
    'issue': {'joint_state_rate_hz': 1000.0, 'camera.width_px': 640, 'camera.height_px': 480,
              'camera.rate_hz': 30.0, 'camera.render_scale': 0.2},
    # The same with every 640x480 frame rendered in full (camera rate bounded by the renderer).
    'issue-full-render': {'joint_state_rate_hz': 1000.0, 'camera.width_px': 640,
                          'camera.height_px': 480, 'camera.rate_hz': 30.0},
    # The shipped configuration (250 Hz joint states, 15 Hz 96x96 camera), for comparison.
    'shipped': {},
}
COMMAND_PERIOD_S = 0.01   # monitor_node control_rate_hz (config/monitor.yaml)
LISTENER_PRIORITY = 10    # SCHED_FIFO of the listening thread, where permitted


class Listener:
    """Record arrival times and stamps of the loop's topics."""

    def __init__(self, context: Context) -> None:
        self.node = rclpy.create_node('loop_bench', context=context)
        self.lock = threading.Lock()
        self.t: Dict[str, List[float]] = {k: [] for k in ('chunk', 'safe', 'arm')}
        self.stamp: Dict[str, List[float]] = {k: [] for k in self.t}
        self.modes: List[tuple] = []
        self.sim_stats: List[tuple] = []   # (time, ticks, frames) from the sim's diagnostics
        n = self.node
        # Joint states and images are not subscribed here (1 kHz and 27 MB/s through Python
        # would load the machine under test): their rates come from the sim's diagnostics.
        n.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 100)
        n.create_subscription(MultiDOFJointTrajectory, '/genpolicy/action_chunk',
                              self._cb('chunk'), 100)
        n.create_subscription(JointState, '/genpolicy/safe_command', self._cb('safe'), 100)
        n.create_subscription(JointState, '/genpolicy/arm_command', self._cb('arm'), 100)
        n.create_subscription(String, '/genpolicy/monitor/mode', self._on_mode, 100)
        self.reset = n.create_client(Trigger, '/monitor_node/reset')

    def _cb(self, key: str):
        def cb(msg) -> None:
            now = time.time()
            with self.lock:
                self.t[key].append(now)
                self.stamp[key].append(cv.stamp_to_s(msg.header.stamp))
        return cb

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name == 'sim_node: driver':
                values = {kv.key: kv.value for kv in st.values}
                with self.lock:
                    self.sim_stats.append((time.time(), int(values['ticks']),
                                           int(values['frames'])))

    def _on_mode(self, msg: String) -> None:
        with self.lock:
            self.modes.append((time.time(), msg.data))

    def mode(self) -> str:
        """Return the newest monitor mode, '' before the first."""
        with self.lock:
            return self.modes[-1][1] if self.modes else ''

    def clear(self) -> None:
        """Forget everything recorded so far (end of the warm-up)."""
        with self.lock:
            for k in self.t:
                self.t[k].clear()
                self.stamp[k].clear()
            self.modes.clear()
            self.sim_stats.clear()


def release(listener: Listener, timeout_s: float) -> bool:
    """Reset the monitor until it leaves HOLD; return whether it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if listener.mode() in ('NOMINAL', 'SLOW'):
            return True
        if listener.reset.wait_for_service(timeout_sec=1.0):
            future = listener.reset.call_async(Trigger.Request())
            end = time.monotonic() + 5.0
            while not future.done() and time.monotonic() < end:
                time.sleep(0.05)
        time.sleep(0.5)
    return False


def loop_latencies(rec: Listener, skip_hold: bool = True) -> np.ndarray:
    """Return frame-stamp -> arm-command latencies [s] (see the module docstring).

    ``skip_hold``: leave out commands sent while the monitor held (they use no chunk).
    """
    with rec.lock:
        chunk_t, chunk_s = list(rec.t['chunk']), list(rec.stamp['chunk'])
        safe_s = list(rec.stamp['safe'])
        arm_t, arm_s = list(rec.t['arm']), list(rec.stamp['arm'])
        modes = list(rec.modes)
    safe_s.sort()
    order = np.argsort(arm_s)
    arm_s = [arm_s[i] for i in order]
    arm_t = [arm_t[i] for i in order]
    mode_t = [m[0] for m in modes]
    out = []
    for received, frame_stamp in zip(chunk_t, chunk_s):
        i = bisect.bisect_left(safe_s, received)
        if i == len(safe_s):
            continue
        j = bisect.bisect_left(arm_s, safe_s[i])
        if j == len(arm_s):
            continue
        k = bisect.bisect_right(mode_t, arm_t[j]) - 1
        if skip_hold and k >= 0 and modes[k][1] == 'HOLD':
            continue   # a held arm uses no chunk
        out.append(arm_t[j] - frame_stamp)
    return np.asarray(out)


def cpu_seconds(pid: int) -> float:
    """Return the CPU time [s] a process and its child processes (the sim's renderer) used."""
    tick = os.sysconf('SC_CLK_TCK')
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / tick   # utime + stime
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError, IndexError):
        return float('nan')  # gone (a crashed node is reported by its log)
    return total + sum(cpu_seconds(c) for c in children)


def _stats(name: str, values_ms: np.ndarray) -> str:
    if values_ms.size == 0:
        return f'{name:<32} {"-":>8} {"-":>8} {"-":>8} {0:>7}'
    p50, p99 = np.percentile(values_ms, [50, 99])
    return f'{name:<32} {p50:8.2f} {p99:8.2f} {values_ms.max():8.2f} {values_ms.size:7d}'


def main(argv=None) -> int:
    """Run the graph under load and print the table and the last line."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--duration', type=float, default=60.0, help='measured seconds')
    p.add_argument('--warmup', type=float, default=5.0, help='seconds after the reset')
    p.add_argument('--domain', type=int, default=None,
                   help='ROS_DOMAIN_ID of the run (default: a free one of 230-232)')
    p.add_argument('--load', choices=sorted(LOADS), default='issue',
                   help='sim rates and camera size (parameter overrides for this run only)')
    args = p.parse_args(argv)
    sim_load = LOADS[args.load]
    lock = None
    if args.domain is None:
        args.domain, lock = claim_domain(range(230, 233))
    log_dir = Path(tempfile.mkdtemp(prefix='loop_bench_'))
    procs = [NodeProcess('sim_node', 'sim_node', ros_param_args(sim_load), log_dir),
             NodeProcess('policy_node', 'policy_node', [], log_dir),
             NodeProcess('safety_filter_node', 'safety_filter_node', [], log_dir),
             NodeProcess('monitor_node', 'monitor_node', [], log_dir)]
    choose_dds_profile()   # before the node processes start: they inherit it
    context = Context()
    rclpy.init(context=context, domain_id=args.domain)
    listener = Listener(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener.node)
    listener_rt = []

    def spin() -> None:
        # Receipt times stand for the driver's: a driver loop runs real-time (as the monitor
        # does), so the thread that takes the messages does too where permitted; printed
        # below. (The whole process real-time measured worse: jitter p99 19 ms, not 5.)
        listener_rt.append(realtime_thread(LISTENER_PRIORITY) is None)
        executor.spin()

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        for proc in procs:
            proc.env = {'ROS_DOMAIN_ID': str(args.domain)}
            proc.start()
        print(f'loop_bench: {len(procs)} node processes on domain {args.domain}, sim '
              f'overrides {sim_load or "none"}, logs in {log_dir}', flush=True)
        if not release(listener, 120.0):
            print('the monitor never left HOLD; logs:', log_dir, flush=True)
        time.sleep(args.warmup)
        listener.clear()
        started = time.time()
        cpu_start = {p.name: cpu_seconds(p.pid) for p in procs}
        cpu_start['loop_bench'] = time.process_time()
        # A watchdog tripped by a scheduling gap would otherwise hold the arm for the rest of
        # the run and no chunk would reach it; how often that happens is reported.
        with OperatorOnDuty(lambda: listener.mode() == 'HOLD',
                            lambda: release(listener, 2.0), 0.25) as operator:
            time.sleep(args.duration)
        elapsed = time.time() - started
        cpu = {p.name: cpu_seconds(p.pid) - cpu_start[p.name] for p in procs}
        cpu['loop_bench'] = time.process_time() - cpu_start['loop_bench']
        latency_ms = loop_latencies(listener) * 1e3
        any_mode_ms = loop_latencies(listener, skip_hold=False) * 1e3
        with listener.lock:
            # The first leg alone: render, transport, the policy's wait and inference.
            chunk_ms = (np.asarray(listener.t['chunk'])
                        - np.asarray(listener.stamp['chunk'])) * 1e3
            arm_t = np.asarray(listener.t['arm'])
            arm_stamp = np.asarray(listener.stamp['arm'])
            counts = {k: len(v) for k, v in listener.t.items()}
            modes = [m for _, m in listener.modes]
            sim = list(listener.sim_stats)
        jitter_ms = np.abs(np.diff(arm_t) - COMMAND_PERIOD_S) * 1e3 if arm_t.size > 1 \
            else np.zeros(0)
        # Where it comes from: the monitor's own timing (its stamps, taken as it publishes)
        # and the way to the subscriber (receipt - stamp).
        sent_ms = np.abs(np.diff(arm_stamp) - COMMAND_PERIOD_S) * 1e3 if arm_stamp.size > 1 \
            else np.zeros(0)
        transit_ms = (arm_t - arm_stamp) * 1e3
    finally:
        for proc in procs:
            proc.stop()
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        listener.node.destroy_node()
        rclpy.try_shutdown(context=context)
        if lock is not None:
            lock.close()
    print(f'{"quantity [ms]":<32} {"p50":>8} {"p99":>8} {"max":>8} {"n":>7}')
    print(_stats('camera stamp -> arm command', latency_ms))
    print(_stats('  (also while holding)', any_mode_ms))
    print(_stats('camera stamp -> chunk received', chunk_ms))
    print(_stats('driver command period jitter', jitter_ms)
          + ('' if listener_rt and listener_rt[0] else '  (listener not real-time)'))
    print(_stats('  monitor stamp period jitter', sent_ms))
    print(_stats('  arm command stamp -> received', transit_ms))
    rates = ', '.join(f'{k} {v / elapsed:.1f} Hz' for k, v in counts.items())
    if len(sim) > 1:
        span = sim[-1][0] - sim[0][0]
        rates = (f'joint states {(sim[-1][1] - sim[0][1]) / span:.0f} Hz, camera '
                 f'{(sim[-1][2] - sim[0][2]) / span:.1f} Hz, ' + rates)
    print(f'rates over {elapsed:.0f} s: {rates}')
    # The machine's budget is os.cpu_count() cores: where it went (the sim includes its render
    # process, which a real camera does not need).
    print(f'CPU over {elapsed:.0f} s of {os.cpu_count()} cores: ' + ', '.join(
        f'{name} {used / elapsed:.0%}' for name, used in cpu.items())
        + f'; total {sum(cpu.values()) / elapsed:.0%}')
    share = {m: modes.count(m) / max(len(modes), 1) for m in sorted(set(modes))}
    print('monitor modes: ' + ', '.join(f'{m} {v:.0%}' for m, v in share.items())
          + f'; operator resets after a HOLD: {operator.resets}')
    loop_p99 = float(np.percentile(latency_ms, 99)) if latency_ms.size else float('nan')
    jitter_p99 = float(np.percentile(jitter_ms, 99)) if jitter_ms.size else float('nan')
    print(f'loop_p99_ms={loop_p99:.3f} driver_jitter_p99_ms={jitter_p99:.3f}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
