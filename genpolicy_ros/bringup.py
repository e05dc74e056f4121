"""``genpolicy-sim``: the whole ROS 2 graph, headless, on PyBullet.

Starts the nodes that ``launch/sim_launch.py`` starts, with parameters from the same
``config/*.yaml``: sim_node (PyBullet arm, camera) -> policy_node -> safety_filter_node ->
monitor_node -> sim_node. By default each node is a process of its own, started from its
console script with ``--ros-args --params-file config/<x>.yaml`` and a few ``-p`` overrides
(:class:`ProcessBringup`), as the launch file would; its output goes to ``--log-dir``. This
process is the operator: it resets episodes (``/sim_node/reset_episode``,
``/policy_node/reset_episode``), releases the monitor's latched start-up HOLD
(``/monitor_node/reset``), watches the graph through ``/diagnostics`` and the task topics, prints
a line per second and a summary, and records every genpolicy topic to an MCAP file
(``--record``). If a node process dies, it says which one, shows the end of its log, stops the
others and exits with status 1; whatever way it ends, it takes its node processes with it.

``--in-process`` runs the same node classes in this one process instead, each on its own
executor thread (:class:`Bringup`): handy for debugging, but the nodes then share one GIL. On
two cores loaded by other jobs the filter's 100 Hz loop then ran at 50-63 Hz and the driver
went without a fresh command for 100 ms 49 times in four episodes (3 times as processes).
``--param NODE:NAME:=VALUE`` overrides a node parameter in either mode.
"""

import argparse
import atexit
from dataclasses import dataclass, field
from pathlib import Path
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseStamped
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger
import yaml

from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes.dds import choose_dds_profile
from genpolicy_ros.nodes.process import NodeProcess, ros_param_args, stop_all
from genpolicy_ros.nodes.runner import SpinThread, stop_spinning_nodes
from genpolicy_ros.paths import config_path
from genpolicy_ros.recording.config import RecorderConfig
from genpolicy_ros.recording.recorder import McapRecorder
from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.task import PushTask

# Seconds from an episode's start during which a HOLD does not end it (the inputs settle).
HOLD_GRACE_S = 5.0
POLL_S = 0.1               # how often an episode checks for success


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='genpolicy-sim', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Five: two episodes on the first held-out seeds read as a verdict (seed 100000 fails
    # lock-step too); five show the policy's rate, at most 75 s of episodes.
    p.add_argument('--episodes', type=int, default=5, help='push episodes to run')
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
    p.add_argument('--log-dir', default='runs/genpolicy_sim_logs',
                   help='where each node process writes its output (<node>.log)')
    p.add_argument('--in-process', action='store_true',
                   help='run all nodes in this process, one executor thread each')
    p.add_argument('--startup-timeout', type=float, default=120.0,
                   help='seconds for the node processes to come up')
    p.add_argument('--param', action='append', default=[], metavar='NODE:NAME:=VALUE',
                   help='override a ROS parameter of a node, e.g. '
                   'sim_node:camera.rate_hz:=10.0 (repeatable; VALUE in YAML syntax)')
    return p.parse_args(argv)


NODE_NAMES = ('sim_node', 'policy_node', 'safety_filter_node', 'monitor_node')


def parse_overrides(items: List[str]) -> Dict[str, Dict[str, object]]:
    """Turn ``NODE:NAME:=VALUE`` items into ``{node: {name: value}}`` (VALUE parsed as YAML)."""
    out: Dict[str, Dict[str, object]] = {}
    for item in items:
        node, sep, rest = item.partition(':')
        name, sep2, text = rest.partition(':=')
        if not (sep and sep2 and name) or node not in NODE_NAMES:
            raise ValueError(f'--param {item!r}: expected NODE:NAME:=VALUE with NODE one of '
                             f'{", ".join(NODE_NAMES)}')
        out.setdefault(node, {})[name] = yaml.safe_load(text)
    return out


class NodeDied(RuntimeError):
    """A node process of the graph ended while the graph should be running."""

    def __init__(self, proc: NodeProcess, lines: int = 20) -> None:
        self.name = proc.name
        self.returncode = proc.returncode
        self.log_tail = proc.log_tail(lines)
        super().__init__(f'{proc.name} died (exit status {self.returncode}); the end of '
                         f'{proc.log_path}:\n{self.log_tail}')


@dataclass
class GraphStats:
    """Counters of a running graph; rates are differences of two snapshots."""

    wall_s: float = 0.0             # time.monotonic() of the snapshot
    joint_states: int = 0           # /joint_states messages
    filter_steps: int = 0           # /genpolicy/safe_command messages (one per filter step)
    arm_commands: int = 0           # /genpolicy/arm_command messages (gated by the monitor)
    camera_frames: int = 0          # /camera/color/image_raw messages
    chunks: int = 0                 # /genpolicy/action_chunk messages
    filter_counts: Dict[str, int] = field(default_factory=dict)   # filter status -> steps
    active_counts: Dict[str, int] = field(default_factory=dict)   # barrier -> active steps
    driver: Dict[str, int] = field(default_factory=dict)          # sim_node's own counters
    transitions: List[Tuple[str, str, str]] = field(default_factory=list)  # from, to, reason
    times: Dict[str, float] = field(default_factory=dict)   # counter -> when it was counted

    def time_of(self, counter: str) -> float:
        """Return when ``counter`` was counted (monotonic; the snapshot time by default)."""
        return self.times.get(counter, self.wall_s)


# ------------------------------------------------------------------------------- in-process
class Bringup:
    """All four nodes in this process, each on its own executor thread (``--in-process``)."""

    def __init__(self, policy: str = 'flow', checkpoint: str = '', gui: bool = False,
                 seed: int = 100000, record: str = '',
                 params: Optional[Dict[str, Dict[str, object]]] = None) -> None:
        from genpolicy_ros.nodes.monitor_node import MonitorNode
        from genpolicy_ros.nodes.policy_node import PolicyNode
        from genpolicy_ros.nodes.safety_filter_node import SafetyFilterNode
        from genpolicy_ros.nodes.sim_node import SimNode
        choose_dds_profile()
        self.context = Context()
        rclpy.init(context=self.context)
        ctx = dict(context=self.context)
        over = _node_overrides(policy, checkpoint, gui, seed, params)

        def parameters(node: str) -> List[Parameter]:
            return [Parameter(name, value=value) for name, value in over[node].items()]
        self.sim = SimNode(**ctx, parameter_overrides=parameters('sim_node'))
        self.policy = PolicyNode(**ctx, parameter_overrides=parameters('policy_node'))
        self.filter = SafetyFilterNode(**ctx, parameter_overrides=parameters(
            'safety_filter_node'))
        self.monitor = MonitorNode(**ctx, parameter_overrides=parameters('monitor_node'))
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
            self._threads.append(SpinThread(executor, name=node.get_name()))
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        self._client = self.monitor.create_client(Trigger, '/monitor_node/reset')
        self._hold_client = self.monitor.create_client(Trigger, '/monitor_node/hold')
        self._episode_client = self.sim.create_client(Trigger, '/sim_node/reset_episode')

    def call(self, client, timeout_s: float = 5.0) -> Trigger.Response:
        """Call a Trigger service and wait for the reply."""
        return _call(client, timeout_s, lambda: None)

    def next_episode(self, settle_s: float = 0.5, timeout_s: float = 5.0) -> str:
        """Start the next episode: new cube/goal, arm at the start, policy and monitor reset.

        As an operator would: hold the arm first (the scene reset moves it to the start pose
        in one step, which the monitor would otherwise rightly report as a command jump), then
        reset the scene. Rebuilding it pauses the joint states, so the operator-style reset
        is retried until the inputs are live.
        """
        self.call(self._hold_client)
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

    def check(self) -> None:
        """Nothing to check: the nodes live and die with this process."""

    def task_status(self) -> dict:
        """Return the cube's distance to the goal [m] and success (as of the last frame)."""
        return self.sim.task_status()

    def mode(self) -> Mode:
        """Return the monitor's mode."""
        return self.monitor.monitor.mode

    def filter_status(self) -> str:
        """Return the filter's latest status code ('none' before its first step)."""
        res = self.filter.last_result
        return res.status.name if res is not None else 'none'

    def ee_speed(self) -> Optional[float]:
        """Return the latest commanded (filtered) EE speed [m/s], None before the first."""
        res = self.filter.last_result
        return None if res is None else float(np.linalg.norm(res.safe_twist[:3]))

    def stats(self) -> GraphStats:
        """Return the nodes' own counters."""
        sim = dict(self.sim.stats)
        f = self.filter
        return GraphStats(
            wall_s=time.monotonic(), joint_states=sim['ticks'],
            filter_steps=sum(f.counts.values()), arm_commands=self.monitor.commands_sent,
            camera_frames=sim['frames'], chunks=self.policy.stats['chunks'],
            filter_counts=dict(f.counts), active_counts=dict(f.active_counts), driver=sim,
            transitions=[(t.from_mode.name, t.to_mode.name, t.reason)
                         for t in self.monitor.monitor.transitions])

    def shutdown(self) -> None:
        """Stop spinning, then release every node (in that order: no callback outlives it)."""
        for thread in self._threads:
            thread.stop()   # before the recorder drops its subscriptions from this thread
        if self.recorder is not None:
            self.recorder.close()
        stop_spinning_nodes(self.executors, self._threads, self.nodes, self.context)


def _node_overrides(policy: str, checkpoint: str, gui: bool, seed: int,
                    params: Optional[Dict[str, Dict[str, object]]]
                    ) -> Dict[str, Dict[str, object]]:
    """Return the parameter overrides of every node (the YAML holds everything else)."""
    over: Dict[str, Dict[str, object]] = {
        'sim_node': {'gui': gui, 'node.episode_seed': seed},
        'policy_node': dict({'node.policy_type': policy},
                            **({'checkpoint': checkpoint} if checkpoint else {})),
        'safety_filter_node': {}, 'monitor_node': {}}
    for node, values in (params or {}).items():
        over[node].update(values)
    return over


def _call(client, timeout_s: float, check: Callable[[], None]) -> Trigger.Response:
    """Call a Trigger service (its node spun elsewhere); ``check`` runs while waiting."""
    deadline = time.monotonic() + timeout_s
    while not client.wait_for_service(timeout_sec=0.2):
        check()
        if time.monotonic() > deadline:
            raise RuntimeError(f'service {client.srv_name} not available')
    future = client.call_async(Trigger.Request())
    while not future.done() and time.monotonic() < deadline:
        check()
        time.sleep(0.01)
    if not future.done():
        raise RuntimeError(f'service {client.srv_name} did not answer')
    return future.result()


# ------------------------------------------------------------------------------- processes
SIM_DRIVER = 'sim_node: driver'
FILTER_STATUS = 'safety_filter_node: status'
FILTER_BARRIER = 'safety_filter_node: barrier '
POLICY_STATUS = 'policy_node: policy'
MONITOR_GATE = 'monitor_node: gate'


class GraphWatcher(Node):
    """The operator's view of the graph from outside: ``/diagnostics`` and the task topics.

    Every node reports its counters and state on ``/diagnostics`` (1-2 Hz, the monitor also on
    every mode change); that is all this process reads, besides the cube and goal poses
    (15 Hz) for the episode's success. It subscribes none of the 100-250 Hz topics: on two
    loaded cores each of those costs every process that subscribes it CPU time the nodes need.
    """

    def __init__(self, context: Context, task: PushTask) -> None:
        super().__init__('genpolicy_sim', context=context)
        self.task = task
        self._lock = threading.Lock()
        self.diagnostics: Dict[str, Tuple[float, str, Dict[str, str]]] = {}
        self.transitions: List[Tuple[str, str, str]] = []
        self._last_transition_time = ''
        self._cube: Optional[Tuple[float, np.ndarray]] = None   # (stamp, xy)
        self._goal: Optional[Tuple[float, np.ndarray]] = None
        self.episode_stamp = -np.inf       # cube/goal stamped earlier belong to an old episode
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        self.create_subscription(PoseStamped, '/genpolicy/sim/cube_pose', self._on_cube, 10)
        self.create_subscription(PointStamped, '/genpolicy/sim/goal', self._on_goal, 10)
        self.monitor_reset = self.create_client(Trigger, '/monitor_node/reset')
        self.monitor_hold = self.create_client(Trigger, '/monitor_node/hold')
        self.sim_reset = self.create_client(Trigger, '/sim_node/reset_episode')
        self.policy_reset = self.create_client(Trigger, '/policy_node/reset_episode')

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        with self._lock:
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                self.diagnostics[st.name] = (now, st.message, values)
                stamp = values.get('last_transition_time', '')
                if st.name == MONITOR_GATE and stamp and stamp != self._last_transition_time:
                    self._last_transition_time = stamp
                    old, new = values['last_transition'].split('->')
                    self.transitions.append((old, new, values['last_transition_reason']))

    def _on_cube(self, msg: PoseStamped) -> None:
        xy = np.array([msg.pose.position.x, msg.pose.position.y])
        with self._lock:
            self._cube = (cv.stamp_to_s(msg.header.stamp), xy)

    def _on_goal(self, msg: PointStamped) -> None:
        xy = np.array([msg.point.x, msg.point.y])
        with self._lock:
            self._goal = (cv.stamp_to_s(msg.header.stamp), xy)

    # queries -------------------------------------------------------------------------
    def now_s(self) -> float:
        """Return the ROS clock [s] (system time, as the nodes stamp)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def diagnostic(self, name: str, max_age_s: float = np.inf
                   ) -> Optional[Tuple[float, str, Dict[str, str]]]:
        """Return ``(receipt monotonic time, message, values)`` of status ``name``, or None."""
        with self._lock:
            item = self.diagnostics.get(name)
        if item is None or time.monotonic() - item[0] > max_age_s:
            return None
        return item

    def value(self, name: str, key: str, default: str = '') -> str:
        """Return value ``key`` of the newest status ``name`` (``default`` if none)."""
        item = self.diagnostic(name)
        return default if item is None else item[2].get(key, default)

    def task_status(self) -> dict:
        """Return the cube-to-goal distance [m] and success of the current episode."""
        with self._lock:
            cube, goal, since = self._cube, self._goal, self.episode_stamp
        if cube is None or goal is None or min(cube[0], goal[0]) < since:
            return dict(distance_m=float('nan'), success=False)
        return dict(distance_m=self.task.distance_to_goal(cube[1], goal[1]),
                    success=bool(self.task.is_success(cube[1], goal[1])))

    def new_episode(self) -> None:
        """Forget the task state of the previous episode (cube and goal moved)."""
        with self._lock:
            self.episode_stamp = self.now_s()
            self._cube = self._goal = None


def _int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


class ProcessBringup:
    """The four nodes as child processes; this process watches and operates them.

    Start it from the main thread (see :mod:`genpolicy_ros.nodes.process`): SIGTERM and SIGHUP
    are turned into ``KeyboardInterrupt`` there, so a ``finally`` that calls :meth:`shutdown`
    runs; ``atexit`` stops the children as well, and a SIGKILL of this process reaches them
    through ``PR_SET_PDEATHSIG``.
    """

    NODES = (('sim_node', 'sim.yaml'), ('policy_node', 'policy.yaml'),
             ('safety_filter_node', 'safety.yaml'), ('monitor_node', 'monitor.yaml'))

    def __init__(self, policy: str = 'flow', checkpoint: str = '', gui: bool = False,
                 seed: int = 100000, record: str = '', log_dir: str = 'runs/genpolicy_sim_logs',
                 startup_timeout_s: float = 120.0,
                 params: Optional[Dict[str, Dict[str, object]]] = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        overrides = _node_overrides(policy, checkpoint, gui, seed, params)
        self.procs: Dict[str, NodeProcess] = {}
        for name, config_file in self.NODES:
            (self.log_dir / f'{name}.log').unlink(missing_ok=True)
            args = ['--params-file', str(config_path(config_file))]
            self.procs[name] = NodeProcess(name, name, args + ros_param_args(overrides[name]),
                                           self.log_dir)
        self._closed = False
        self._old_handlers: Dict[int, object] = {}
        self.recorder: Optional[McapRecorder] = None
        self.context: Optional[Context] = None
        self._executors: List[SingleThreadedExecutor] = []
        self._threads: List[SpinThread] = []
        self._nodes: List[Node] = []
        atexit.register(self.shutdown)
        self._install_signal_handlers()
        choose_dds_profile()   # before the children start: they inherit it
        try:
            for proc in self.procs.values():
                proc.start()
            self.context = Context()
            rclpy.init(context=self.context)
            self.watcher = GraphWatcher(self.context, PushTask(SimConfig.load().task))
            self._spin(self.watcher)
            if record:
                Path(record).parent.mkdir(parents=True, exist_ok=True)
                rec_node = rclpy.create_node('mcap_recorder', context=self.context)
                self.recorder = McapRecorder.from_config(rec_node, record,
                                                         RecorderConfig.load())
                self._spin(rec_node)
            self.started = time.monotonic()
            self.wait_until_up(startup_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _spin(self, node: Node) -> None:
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(node)
        thread = SpinThread(executor, name=node.get_name())
        self._nodes.append(node)
        self._executors.append(executor)
        self._threads.append(thread)
        thread.start()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum, frame) -> None:
            raise KeyboardInterrupt(f'signal {signal.Signals(signum).name}')
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, interrupt)

    # watching ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`NodeDied` if a node process is no longer running."""
        for proc in self.procs.values():
            if not proc.alive:
                raise NodeDied(proc)

    def wait_until_up(self, timeout_s: float) -> None:
        """Wait until every node reports: the sim ticks and renders, the policy plans, ..."""
        w = self.watcher
        needed = {
            'sim_node (joint states, camera)': lambda: min(
                _int(w.value(SIM_DRIVER, 'ticks')), _int(w.value(SIM_DRIVER, 'frames'))) > 0,
            'policy_node (chunks)': lambda: _int(w.value(POLICY_STATUS, 'chunks')) > 0,
            'safety_filter_node (steps)': lambda: w.diagnostic(FILTER_STATUS) is not None,
            'monitor_node (gate)': lambda: w.diagnostic(MONITOR_GATE) is not None,
        }
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            missing = [name for name, ready in needed.items() if not ready()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f'the graph did not come up in {timeout_s:.0f} s: nothing yet '
                                   f'from {", ".join(missing)} (node logs in {self.log_dir})')
            time.sleep(0.1)

    def call(self, client, timeout_s: float = 10.0) -> Trigger.Response:
        """Call a Trigger service and wait for the reply (while checking the processes)."""
        return _call(client, timeout_s, self.check)

    def next_episode(self, settle_s: float = 0.5, timeout_s: float = 10.0) -> str:
        """Start the next episode: new cube/goal, arm at the start, policy and monitor reset.

        The monitor is put on HOLD first, as in :meth:`Bringup.next_episode`.
        """
        self.call(self.watcher.monitor_hold)
        reply = self.call(self.watcher.sim_reset)
        self.watcher.new_episode()
        self.call(self.watcher.policy_reset)
        time.sleep(settle_s)
        return f'{reply.message}; monitor: {self.release_hold(timeout_s)}'

    def release_hold(self, timeout_s: float = 30.0) -> str:
        """Reset the monitor (``~/reset``) as an operator would, until it leaves HOLD.

        The monitor refuses while an input is not live yet (it says which): retried.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.call(self.watcher.monitor_reset)
            if reply.success or time.monotonic() > deadline:
                return reply.message
            time.sleep(0.2)

    def task_status(self) -> dict:
        """Return the cube's distance to the goal [m] and success (from the sim's topics)."""
        return self.watcher.task_status()

    def mode(self) -> Mode:
        """Return the monitor's current mode; HOLD if it has not reported for 3 s."""
        item = self.watcher.diagnostic(MONITOR_GATE, max_age_s=3.0)
        return Mode.HOLD if item is None else Mode[item[2].get('mode', 'HOLD')]

    def filter_status(self) -> str:
        """Return the filter's latest reported status code ('none' if none recent)."""
        item = self.watcher.diagnostic(FILTER_STATUS, max_age_s=3.0)
        return 'none' if item is None else item[2].get('code', 'none')

    def ee_speed(self) -> Optional[float]:
        """Return the latest reported commanded (filtered) EE speed [m/s], or None."""
        text = self.watcher.value(FILTER_STATUS, 'ee_speed_mps')
        return float(text) if text else None

    def stats(self) -> GraphStats:
        """Return the nodes' own counters, as they last reported them on ``/diagnostics``."""
        w = self.watcher
        with w._lock:
            transitions = list(w.transitions)
            diagnostics = dict(w.diagnostics)
        empty = (time.monotonic(), '', {})
        sim_t, _, sim = diagnostics.get(SIM_DRIVER, empty)
        filter_t, _, filt = diagnostics.get(FILTER_STATUS, empty)
        policy_t, _, policy = diagnostics.get(POLICY_STATUS, empty)
        filter_counts = {k[len('count_'):]: _int(v) for k, v in filt.items()
                         if k.startswith('count_')}
        active = {name[len(FILTER_BARRIER):]: _int(values['active_steps'])
                  for name, (_, _, values) in diagnostics.items()
                  if name.startswith(FILTER_BARRIER) and 'active_steps' in values}
        driver = {k: _int(sim.get(k, '0'))
                  for k in ('commands', 'rejected', 'stale_holds', 'ticks', 'frames')}
        return GraphStats(
            wall_s=time.monotonic(), joint_states=driver['ticks'],
            filter_steps=sum(filter_counts.values()), arm_commands=driver['commands'],
            camera_frames=driver['frames'], chunks=_int(policy.get('chunks', '0')),
            filter_counts=filter_counts, active_counts=active, driver=driver,
            transitions=transitions,
            times=dict(joint_states=sim_t, arm_commands=sim_t, camera_frames=sim_t,
                       filter_steps=filter_t, chunks=policy_t))

    def settle_diagnostics(self, timeout_s: float = 2.0) -> None:
        """Wait for a round of ``/diagnostics`` newer than now (the final counters)."""
        t0 = time.monotonic()
        names = (SIM_DRIVER, FILTER_STATUS, POLICY_STATUS)
        while time.monotonic() - t0 < timeout_s:
            items = [self.watcher.diagnostic(n) for n in names]
            if all(item is not None and item[0] > t0 for item in items):
                return
            time.sleep(0.05)

    # stopping ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the node processes (Ctrl-C, then SIGKILL), the recorder and the watcher."""
        if self._closed:
            return
        self._closed = True
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._old_handlers.items():   # a second SIGTERM: no clean-up
                signal.signal(sig, handler)
        stop_all(list(self.procs.values()), timeout_s=10.0)
        for thread in self._threads:
            thread.stop()   # before the recorder drops its subscriptions from this thread
        if self.recorder is not None:
            self.recorder.close()
        stop_spinning_nodes(self._executors, self._threads, self._nodes, self.context)
        atexit.unregister(self.shutdown)


# ------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> int:
    """Run the episodes and print the summary; return the process exit code."""
    mode = 'in-process' if args.in_process else f'node processes, logs in {args.log_dir}'
    print(f'genpolicy-sim: policy={args.policy} episodes={args.episodes} seed={args.seed} '
          f'record={args.record or "off"} ({mode})', flush=True)
    try:
        params = parse_overrides(args.param)
    except ValueError as exc:
        print(f'genpolicy-sim: {exc}', file=sys.stderr, flush=True)
        return 2
    try:
        if args.in_process:
            graph = Bringup(args.policy, args.checkpoint, args.gui, args.seed, args.record,
                            params)
        else:
            graph = ProcessBringup(args.policy, args.checkpoint, args.gui, args.seed,
                                   args.record, args.log_dir, args.startup_timeout, params)
    except NodeDied as exc:
        print(f'genpolicy-sim: node {exc}', file=sys.stderr, flush=True)
        return 1
    except RuntimeError as exc:   # the graph did not come up
        print(f'genpolicy-sim: {exc}', file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print('interrupted', flush=True)
        return 130
    results = []
    code = 0
    first = None
    try:
        print(f'start: monitor: {graph.release_hold()}', flush=True)
        first = graph.stats()
        for ep in range(args.episodes):
            if ep > 0:
                print(f'next episode: {graph.next_episode()}', flush=True)
            results.append(_episode(graph, ep, args.episode_time))
    except KeyboardInterrupt:
        print('interrupted', flush=True)
        code = 130
    except NodeDied as exc:
        print(f'genpolicy-sim: node {exc}', file=sys.stderr, flush=True)
        code = 1
    except RuntimeError as exc:   # a service that did not answer
        print(f'genpolicy-sim: {exc}', file=sys.stderr, flush=True)
        code = 1
    finally:
        if isinstance(graph, ProcessBringup) and code == 0:
            graph.settle_diagnostics()
        last = graph.stats()
        graph.shutdown()
    print(_summary(graph, results, first or last, last), flush=True)
    return code


def _episode(graph, index: int, time_limit_s: float) -> dict:
    start = time.monotonic()
    next_line = start + 1.0
    modes = set()
    while True:
        graph.check()
        time.sleep(POLL_S)
        now = time.monotonic()
        elapsed = now - start
        task = graph.task_status()
        mode = graph.mode()
        modes.add(mode.name)
        over = (task['success'] or elapsed >= time_limit_s
                or mode == Mode.HOLD and elapsed > HOLD_GRACE_S)
        if now >= next_line or over:
            next_line += 1.0
            speed = graph.ee_speed()
            print(f'  ep {index} t={elapsed:5.1f}s cube->goal {task["distance_m"] * 100:5.1f} cm '
                  f'filter {graph.filter_status():<22} monitor {mode.name:<7} '
                  f'EE speed {speed or 0.0:.3f} m/s', flush=True)
        if over:
            break
    result = dict(index=index, success=bool(task['success']), time_s=elapsed,
                  distance_m=task['distance_m'], modes=sorted(modes))
    print(f'episode {index}: {"SUCCESS" if result["success"] else "failure"} after '
          f'{elapsed:.1f} s (cube {task["distance_m"] * 100:.1f} cm from goal)', flush=True)
    return result


def _summary(graph, results: list, first: GraphStats, last: GraphStats) -> str:
    counts = {k: v for k, v in last.filter_counts.items() if v}
    steps = max(sum(last.filter_counts.values()), 1)
    intervened = sum(v for k, v in last.filter_counts.items() if k != 'OK')
    top = sorted(last.active_counts.items(), key=lambda kv: -kv[1])[:5]
    sim = last.driver
    holds = sum(1 for t in last.transitions if t[1] == 'HOLD')
    span = max(last.wall_s - first.wall_s, 1e-9)

    def rate(name: str) -> float:
        dt = last.time_of(name) - first.time_of(name)
        return (getattr(last, name) - getattr(first, name)) / dt if dt > 0 else float('nan')

    lines = ['', '=== genpolicy-sim summary ===',
             f'episodes: {len(results)}, successes: {sum(r["success"] for r in results)}',
             f'filter steps: {sum(last.filter_counts.values())}, status counts: {counts}',
             f'filter modified {100.0 * intervened / steps:.1f}% of commands; most active '
             f'barriers: {", ".join(f"{k} ({v})" for k, v in top) or "none"}',
             f'monitor: {len(last.transitions)} transitions, {holds} into HOLD; last: '
             + '; '.join(f'{a}->{b} ({reason})' for a, b, reason in last.transitions[-6:]),
             f'driver: {sim.get("commands", 0)} arm commands, {sim.get("rejected", 0)} refused, '
             f'{sim.get("stale_holds", 0)} stale holds, {sim.get("frames", 0)} camera frames',
             f'rates over {span:.0f} s of episodes: joint states {rate("joint_states"):.0f} Hz, '
             f'filter {rate("filter_steps"):.0f} Hz, arm commands {rate("arm_commands"):.0f} Hz, '
             f'camera {rate("camera_frames"):.1f} Hz, policy chunks {rate("chunks"):.1f} Hz']
    if graph.recorder is not None:
        lines.append(f'recording: {graph.recorder.path}')
    if isinstance(graph, ProcessBringup):
        lines.append(f'node logs: {graph.log_dir}')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``genpolicy-sim``."""
    sys.exit(run(_parse(argv)))
