"""Fault-injection harness: the real node processes, a man-in-the-middle transport, observers.

The stack under attack is the shipped one: ``sim_node`` (PyBullet arm driver), ``policy_node``
(scripted expert), ``safety_filter_node`` and ``monitor_node`` run as separate processes from
their console scripts, so one can be killed with SIGKILL, stalled with SIGSTOP or starved of CPU
while the others keep running. The test process sits between them where a fault is injected:

* ``/joint_states``, the camera image and ``/genpolicy/arm_command`` travel through
  :class:`Relay` nodes (the sim publishes and subscribes under ``/fi/raw/...``), which drop,
  delay, duplicate, reorder, silence, re-stamp or corrupt messages, or switch QoS;
* the policy's chunks reach the filter and monitor either from the real ``policy_node``
  (through a relay) or from :class:`ScriptedPolicy`, a test-side policy whose references and
  messages a test controls (step references at 10x the speed cap, targets inside the table, ...);
* :class:`Observer` records what the arm really did: the sim's own joint states before the
  relay, the commands the driver received, the monitor's mode and the filter's status.

Everything is measured on the arm's behaviour (joint velocities and positions, barrier values
recomputed from them with the filter's own barrier code, EE speed from the robot model), never
on log text. Times are the ROS clock (system time, the same for every process on the machine).
"""

from dataclasses import dataclass, field
import fcntl
import heapq
import itertools
from pathlib import Path
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, IO, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (QoSProfile, qos_profile_sensor_data, QoSReliabilityPolicy)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import MultiDOFJointTrajectory

from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes.dds import choose_dds_profile
# The node processes and their parameters: shared with genpolicy-sim (re-exported here).
from genpolicy_ros.nodes.process import (NodeProcess, node_parameters, ros_param_args,
                                         stop_all)
from genpolicy_ros.nodes.runner import SpinThread, stop_spinning_nodes
from genpolicy_ros.policy.chunk_plan import DOWN_QUATERNION
from genpolicy_ros.robot import FrankaModel
from genpolicy_ros.safety.barriers import BarrierSet
from genpolicy_ros.safety.config import SafetyConfig

ARM = [f'panda_joint{i}' for i in range(1, 8)]
RAW = '/fi/raw'                       # where the sim publishes / subscribes behind the relays
POLICY_RAW = '/fi/policy'             # where policy_node publishes behind its relay
JOINT_STATES = '/joint_states'
IMAGE = '/camera/color/image_raw'
ARM_COMMAND = '/genpolicy/arm_command'
CHUNK = '/genpolicy/action_chunk'
SAMPLES = '/genpolicy/chunk_samples'
SAFE_COMMAND = '/genpolicy/safe_command'
HARD_KINDS = ('table', 'obstacle', 'joint_limit')
DISTANCE_KINDS = ('table', 'obstacle')   # barriers in metres (penetration is measured on them)
REST_RADPS = 0.01                     # every joint slower than this: the arm is at rest
# A test obstacle inside the safety workspace but outside the push task's area, so references
# can be aimed into it (the shipped obstacles sit behind the robot, out of the EE's reach).
TEST_OBSTACLE = dict(center_m=(0.55, -0.32, 0.08), radius_m=0.06)
# The *commanded* EE speed must respect the cap (COMMAND_SPEED_TOLERANCE_MPS: float slack); the
# simulated arm's *measured* speed exceeds the commanded one by PyBullet's servo tracking
# (measured: +15 to +20 mm/s at 0.24 m/s) plus the driver's position correction (at most
# servo_max_correction_radps per joint, config/sim.yaml). The filter's speed_cap.margin_mps
# (1 mm/s) does not cover that; see the fault report.
SPEED_TOLERANCE_MPS = 0.02
COMMAND_SPEED_TOLERANCE_MPS = 1e-3


def claim_domain(domains: Sequence[int]) -> Tuple[int, IO]:
    """Return a free ROS domain id of ``domains`` and the open lock file holding it.

    Runs of the suite or the loop benchmark on one machine must not hear each other (the
    graphs share node names and topics); the lock lasts while the file stays open.
    """
    for domain in domains:
        lock = open(Path(tempfile.gettempdir()) / f'genpolicy_fault_domain_{domain}.lock', 'w')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return domain, lock
        except OSError:
            lock.close()
    raise RuntimeError(f'every ROS domain in {list(domains)} is taken by another run')


def ros_now(node: Node) -> float:
    """Return the node's ROS clock [s] (system time: the clock every process stamps with)."""
    return node.get_clock().now().nanoseconds * 1e-9


# ------------------------------------------------------------------------------- parameters
def filter_overrides() -> Dict[str, Any]:
    """Return the filter parameters of the attacked graph: shipped ones + a test obstacle.

    Everything else is the shipped configuration: the suite attacks what users run.
    """
    shipped = node_parameters('safety.yaml', 'safety_filter_node')['obstacles']
    return {
        'obstacles.centers_m': [float(x) for x in shipped['centers_m']]
        + [float(x) for x in TEST_OBSTACLE['center_m']],
        'obstacles.radii_m': [float(x) for x in shipped['radii_m']]
        + [float(TEST_OBSTACLE['radius_m'])],
    }


def safety_config(overrides: Dict[str, Any]) -> SafetyConfig:
    """Return the :class:`SafetyConfig` the filter node runs with under ``overrides``."""
    params = node_parameters('safety.yaml', 'safety_filter_node', overrides)
    params.pop('node')
    return SafetyConfig.from_dict(params)


# ------------------------------------------------------------------------------- processes
class CpuThrottle:
    """Starve a process of CPU like a cgroup ``cpu.max`` quota: SIGSTOP/SIGCONT duty cycle.

    The process runs ``run_s`` out of every ``period_s``; whatever it times across a stop (the
    filter's QP solve time) includes the stopped time, as it would on an overloaded core.
    """

    def __init__(self, proc: NodeProcess, run_s: float, period_s: float) -> None:
        self.proc = proc
        self.run_s = run_s
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name='cpu_throttle', daemon=True)

    def __enter__(self) -> 'CpuThrottle':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.proc.signal(signal.SIGCONT)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.proc.signal(signal.SIGCONT)
            time.sleep(self.run_s)
            self.proc.signal(signal.SIGSTOP)
            time.sleep(self.period_s - self.run_s)
        self.proc.signal(signal.SIGCONT)


# ------------------------------------------------------------------------------- transport
@dataclass
class LinkFault:
    """What a :class:`Relay` does to the messages it carries (default: nothing)."""

    silent: bool = False                   # forward nothing
    drop: float = 0.0                      # probability of dropping each message
    delay_s: Tuple[float, float] = (0.0, 0.0)  # uniform extra latency range
    duplicate: bool = False                # deliver every message twice
    reorder: bool = False                  # swap every pair of consecutive messages
    stamp_offset_s: float = 0.0            # added to header.stamp (a clock jump at the source)
    mutate: Optional[Callable[[Any], Any]] = None  # returns the message to send (or None: drop)
    best_effort: bool = False              # republish best effort (a QoS change at the source)

    @property
    def passthrough(self) -> bool:
        """Return True if the relay forwards messages untouched."""
        return self == LinkFault()


class Relay(Node):
    """Forward ``src`` to ``dst`` (same type), applying a :class:`LinkFault`."""

    def __init__(self, context: Context, name: str, msg_type, src: str, dst: str,
                 qos: QoSProfile, seed: int = 0) -> None:
        super().__init__(name, context=context)
        self.msg_type = msg_type
        self.dst = dst
        self.qos = qos
        self.fault = LinkFault()
        self.forwarded = 0
        self.received = 0
        self.last_forwarded_stamp: Optional[float] = None  # header stamp of the newest sent
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._held = None                       # reorder: the message waiting for its successor
        self._queue: List[tuple] = []           # delay: (due, seq, msg)
        self._seq = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self.pub = self.create_publisher(msg_type, dst, qos)
        self._pub_best_effort = None
        # The best-effort publisher is created and destroyed on the relay's executor thread:
        # destroying an entity of a spinning node from another thread races the executor
        # building its wait set from it (rclpy InvalidHandle kills the executor thread).
        self._qos_changed = self.create_guard_condition(self._apply_qos)
        self.create_subscription(msg_type, src, self._on_msg, qos)
        self._worker = threading.Thread(target=self._deliver_delayed, daemon=True,
                                        name=f'{name}_delay')
        self._worker.start()

    def set_fault(self, fault: Optional[LinkFault] = None) -> None:
        """Apply ``fault`` from now on (None: pass messages through untouched)."""
        fault = fault or LinkFault()
        with self._lock:
            self.fault = fault
            held, self._held = self._held, None
        self._qos_changed.trigger()
        if held is not None and not fault.silent:
            self._send(held, fault)

    def _apply_qos(self) -> None:
        """On the executor thread: have a best-effort publisher exactly while the fault asks."""
        old = None
        with self._lock:
            if self.fault.best_effort and self._pub_best_effort is None:
                # Created only now: its incompatibility with reliable subscribers is the fault.
                be = QoSProfile(depth=self.qos.depth,
                                reliability=QoSReliabilityPolicy.BEST_EFFORT)
                self._pub_best_effort = self.create_publisher(self.msg_type, self.dst, be)
            elif not self.fault.best_effort:
                old, self._pub_best_effort = self._pub_best_effort, None
        if old is not None:
            self.destroy_publisher(old)

    def _send(self, msg, fault: LinkFault) -> None:
        pub = self._pub_best_effort if fault.best_effort and self._pub_best_effort else self.pub
        pub.publish(msg)
        self.forwarded += 1
        self.last_forwarded_stamp = cv.stamp_to_s(msg.header.stamp)

    def _on_msg(self, msg) -> None:
        with self._lock:
            self.received += 1
            fault = self.fault
        if fault.passthrough:
            self._send(msg, fault)
            return
        if fault.silent or (fault.drop and self._rng.random() < fault.drop):
            return
        if fault.stamp_offset_s:
            msg.header.stamp = cv.s_to_stamp(cv.stamp_to_s(msg.header.stamp)
                                             + fault.stamp_offset_s)
        if fault.mutate is not None:
            msg = fault.mutate(msg)
            if msg is None:
                return
        batch = [msg]
        if fault.reorder:
            with self._lock:
                if self._held is None:
                    self._held = msg
                    return
                batch, self._held = [msg, self._held], None
        if fault.duplicate:
            batch = [m for m in batch for _ in (0, 1)]
        lo, hi = fault.delay_s
        if hi > 0.0:
            with self._lock:
                for m in batch:
                    due = time.monotonic() + self._rng.uniform(lo, hi)
                    heapq.heappush(self._queue, (due, next(self._seq), m))
                self._wake.notify()
            return
        for m in batch:
            self._send(m, fault)

    def _deliver_delayed(self) -> None:
        with self._lock:
            while not self._closing:
                if not self._queue:
                    self._wake.wait(0.1)
                    continue
                due = self._queue[0][0]
                wait = due - time.monotonic()
                if wait > 0.0:
                    self._wake.wait(min(wait, 0.1))
                    continue
                _, _, msg = heapq.heappop(self._queue)
                fault = self.fault
                self._lock.release()
                try:
                    self._send(msg, fault)
                finally:
                    self._lock.acquire()

    def destroy_node(self) -> None:
        """Stop the delay worker, then the node."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._worker.join(timeout=2.0)
        super().destroy_node()


# ------------------------------------------------------------------------------- policy
def chunk_msg(stamp_s: float, positions: np.ndarray, period_s: float = 0.1,
              frame: str = 'world') -> MultiDOFJointTrajectory:
    """Return an action chunk: EE ``positions`` (K, 3) due every ``period_s`` from the stamp."""
    times = np.arange(len(positions)) * period_s
    return cv.chunk_to_msg(cv.ChunkArrays(stamp_s, frame, times, np.asarray(positions, float),
                                          np.tile(DOWN_QUATERNION, (len(positions), 1))))


def samples_msg(stamp_s: float, positions: np.ndarray, rng: np.random.Generator,
                n_samples: int = 4, noise_m: float = 0.0005,
                period_s: float = 0.1) -> MultiDOFJointTrajectory:
    """Return ``n_samples`` consistent sampled chunks around ``positions`` (K, 3)."""
    positions = np.asarray(positions, float)
    samples = positions[None] + noise_m * rng.standard_normal((n_samples,) + positions.shape)
    return cv.samples_to_msg(stamp_s, 'world', np.arange(len(positions)) * period_s, samples,
                             DOWN_QUATERNION)


class ScriptedPolicy(Node):
    """A test-side policy: at 10 Hz an action chunk and consistent samples from ``reference``.

    ``reference(t)`` maps absolute time [s] to an EE target [m]; ``None`` plans "stay where the
    EE is" (from the observer's newest joint state). ``make_messages`` replaces the whole
    message pair for message-level attacks; ``burst`` publishes that many chunks per period.
    """

    HORIZON = 16
    PERIOD_S = 0.1

    def __init__(self, context: Context, observer: 'Observer',
                 name: str = 'fi_scripted_policy') -> None:
        super().__init__(name, context=context)
        self.observer = observer
        self.model = FrankaModel()
        self.pub_chunk = self.create_publisher(MultiDOFJointTrajectory, CHUNK, 10)
        self.pub_samples = self.create_publisher(MultiDOFJointTrajectory, SAMPLES, 10)
        self.enabled = False
        self.reference: Optional[Callable[[float], np.ndarray]] = None
        self.make_messages: Optional[Callable[[float, np.ndarray], Tuple[Any, Any]]] = None
        self.burst = 1
        self.published = 0
        self.last_stamp: Optional[float] = None   # stamp of the newest chunk published
        self.last_publish_monotonic = time.monotonic()  # when a message pair last went out
        self.error: Optional[str] = None          # the newest exception of a publish
        self._rng = np.random.default_rng(0)
        self._hold_target: Optional[np.ndarray] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name='scripted_policy')
        self._thread.start()

    def hold_here(self) -> None:
        """Plan to stay at the EE's current position."""
        self.reference = None
        self._hold_target = None

    def plan(self, stamp: float) -> Optional[np.ndarray]:
        """Return the (HORIZON, 3) targets due from ``stamp`` on, or None without a state."""
        if self.reference is None:
            if self._hold_target is None:
                q = self.observer.last_q()
                if q is None:
                    return None
                self._hold_target = self.model.ee_pose(q)[0]
            return np.tile(self._hold_target, (self.HORIZON, 1))
        ts = stamp + np.arange(self.HORIZON) * self.PERIOD_S
        return np.array([self.reference(t) for t in ts], dtype=float)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            next_tick += self.PERIOD_S
            if self.enabled:
                for _ in range(max(1, int(self.burst))):
                    try:
                        self._publish_once()
                    except Exception as exc:  # noqa: BLE001 - one bad period must not end it
                        self.error = f'{type(exc).__name__}: {exc}'
                        self.get_logger().error(f'scripted policy: {self.error}')
            else:
                self.last_publish_monotonic = time.monotonic()
            delay = next_tick - time.monotonic()
            if delay < 0.0:
                next_tick = time.monotonic()
            self._stop.wait(max(delay, 0.0))

    def _publish_once(self) -> None:
        stamp = ros_now(self)
        positions = self.plan(stamp)
        if positions is None:
            self.last_publish_monotonic = time.monotonic()   # nothing to plan from: not stuck
            return
        if self.make_messages is not None:
            chunk, samples = self.make_messages(stamp, positions)
        else:
            chunk = chunk_msg(stamp, positions)
            samples = samples_msg(stamp, positions, self._rng)
        if chunk is not None:
            self.pub_chunk.publish(chunk)
            self.last_stamp = cv.stamp_to_s(chunk.header.stamp)
        if samples is not None:
            self.pub_samples.publish(samples)
        self.published += 1
        self.last_publish_monotonic = time.monotonic()

    def stuck(self, window_s: float = 2.0) -> bool:
        """Return True if publishing is on but nothing went out for ``window_s``."""
        return self.enabled and time.monotonic() - self.last_publish_monotonic > window_s

    def status(self) -> str:
        """Return a one-line account of the publishing thread (for failure messages)."""
        age = time.monotonic() - self.last_publish_monotonic
        where = ''
        frame = sys._current_frames().get(self._thread.ident)
        if frame is not None and self.stuck():
            where = ' at ' + ' <- '.join(
                f'{f.name}:{f.lineno}' for f in reversed(traceback.extract_stack(frame)[-4:]))
        return (f'{self.get_name()}: enabled={self.enabled} published={self.published} '
                f'last {age:.1f} s ago, thread alive={self._thread.is_alive()}, '
                f'error={self.error}{where}')

    def destroy_node(self) -> None:
        """Stop publishing, then the node."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        super().destroy_node()


# ------------------------------------------------------------------------------- observation
@dataclass
class Series:
    """Time series of one topic: receipt time, header stamp and per-message arrays."""

    recv: List[float] = field(default_factory=list)
    stamp: List[float] = field(default_factory=list)
    q: List[np.ndarray] = field(default_factory=list)
    dq: List[np.ndarray] = field(default_factory=list)


class Observer(Node):
    """Record the arm's real state (the sim's joint states before any relay) and the graph."""

    def __init__(self, context: Context) -> None:
        super().__init__('fi_observer', context=context)
        self._limits = FrankaModel().limits
        self._lock = threading.Lock()
        self.arm = Series()            # the sim's joint states, as published
        self.driver_cmd = Series()     # arm commands the driver received (after the relay)
        self.modes: List[Tuple[float, str]] = []
        self.filter_status: List[Tuple[float, str]] = []
        self.diagnostics: Dict[str, Any] = {}
        self.diagnostic_history: List[Tuple[float, str, Any]] = []
        self.create_subscription(JointState, f'{RAW}{JOINT_STATES}', self._on_arm, 100)
        self.create_subscription(JointState, f'{RAW}{ARM_COMMAND}', self._on_cmd, 100)
        self.last_safe_command: Optional[JointState] = None
        self.create_subscription(JointState, SAFE_COMMAND, self._on_safe, 100)
        self.create_subscription(String, '/genpolicy/monitor/mode', self._on_mode, 100)
        self.create_subscription(String, '/genpolicy/filter/status', self._on_status, 100)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 100)

    def _record(self, series: Series, msg: JointState) -> None:
        try:
            q, dq = cv.joint_arrays(msg, ARM, need_velocity=True)
        except cv.InputError:
            return  # an attacker's message on the driver topic: not a command the arm ran
        now = ros_now(self)
        with self._lock:
            series.recv.append(now)
            series.stamp.append(cv.stamp_to_s(msg.header.stamp))
            series.q.append(q)
            series.dq.append(dq)

    def _on_arm(self, msg: JointState) -> None:
        self._record(self.arm, msg)

    def _on_cmd(self, msg: JointState) -> None:
        try:
            q, dq = cv.joint_arrays(msg, ARM, need_velocity=True)
            lim = self._limits
            cv.check_joint_ranges(q, dq, lim.lower, lim.upper, lim.velocity,
                                  cv.COMMAND_POSITION_MARGIN_RAD, cv.COMMAND_VELOCITY_FACTOR)
        except cv.InputError:
            return  # refused by the driver (the same check): not a command the arm ran
        self._record(self.driver_cmd, msg)

    def _on_safe(self, msg: JointState) -> None:
        self.last_safe_command = msg

    def _on_mode(self, msg: String) -> None:
        with self._lock:
            self.modes.append((ros_now(self), msg.data))

    def _on_status(self, msg: String) -> None:
        with self._lock:
            self.filter_status.append((ros_now(self), msg.data))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        now = ros_now(self)
        with self._lock:
            for st in msg.status:
                self.diagnostics[st.name] = (now, st)
                self.diagnostic_history.append((now, st.name, st))

    # queries -------------------------------------------------------------------------
    def last_q(self) -> Optional[np.ndarray]:
        """Return the newest measured joint position, or None."""
        with self._lock:
            return self.arm.q[-1].copy() if self.arm.q else None

    def mode(self, max_age_s: float = 1.0) -> str:
        """Return the newest monitor mode; '' if none came in the last ``max_age_s``.

        The monitor publishes its mode at 100 Hz: an old one means it died or hangs, and must
        not be taken for its current mode.
        """
        with self._lock:
            if not self.modes or ros_now(self) - self.modes[-1][0] > max_age_s:
                return ''
            return self.modes[-1][1]

    def modes_since(self, t0: float) -> List[str]:
        """Return the modes published since ``t0`` (ROS time), in order."""
        with self._lock:
            return [m for t, m in self.modes if t >= t0]

    def statuses_since(self, t0: float) -> List[str]:
        """Return the filter statuses published since ``t0``."""
        with self._lock:
            return [s for t, s in self.filter_status if t >= t0]

    def diagnostic(self, name: str, since: float = -np.inf):
        """Return the newest ``DiagnosticStatus`` called ``name`` received after ``since``."""
        with self._lock:
            item = self.diagnostics.get(name)
        if item is None or item[0] < since:
            return None
        return item[1]

    def diagnostics_since(self, name: str, since: float) -> List[Tuple[float, Any]]:
        """Return every ``(receipt time, DiagnosticStatus)`` called ``name`` since ``since``."""
        with self._lock:
            return [(t, st) for t, n, st in self.diagnostic_history if n == name and t >= since]

    def arm_window(self, t0: float, t1: float = np.inf) -> Tuple[np.ndarray, ...]:
        """Return ``(stamps, q, dq)`` of the arm's joint states stamped in ``[t0, t1]``."""
        return self._window(self.arm, t0, t1)

    def command_window(self, t0: float, t1: float = np.inf) -> Tuple[np.ndarray, ...]:
        """Return ``(receipt times, q, dq)`` of the arm commands the driver received."""
        with self._lock:
            t = np.asarray(self.driver_cmd.recv)
            q = np.asarray(self.driver_cmd.q)
            dq = np.asarray(self.driver_cmd.dq)
        keep = (t >= t0) & (t <= t1)
        return t[keep], q[keep].reshape(-1, 7), dq[keep].reshape(-1, 7)

    def _window(self, series: Series, t0: float, t1: float) -> Tuple[np.ndarray, ...]:
        with self._lock:
            t = np.asarray(series.stamp)
            q = np.asarray(series.q)
            dq = np.asarray(series.dq)
        keep = (t >= t0) & (t <= t1)
        return t[keep], q[keep].reshape(-1, 7), dq[keep].reshape(-1, 7)

    def forget_before(self, t0: float) -> None:
        """Drop recorded samples older than ``t0`` (keeps memory bounded in long runs)."""
        with self._lock:
            for series in (self.arm, self.driver_cmd):
                k = int(np.searchsorted(np.asarray(series.recv), t0))
                for name in ('recv', 'stamp', 'q', 'dq'):
                    del getattr(series, name)[:k]
            self.modes = [m for m in self.modes if m[0] >= t0]
            self.filter_status = [s for s in self.filter_status if s[0] >= t0]
            self.diagnostic_history = [d for d in self.diagnostic_history if d[0] >= t0]


# ------------------------------------------------------------------------------- analysis
@dataclass
class ArmReport:
    """What the arm did in a window: the numbers every scenario is judged on.

    Barriers are the filter's own (``safety.barriers``), margins included: ``min_barrier`` and
    ``penetration_mm`` say how far into its safety margins the arm went. A *violation* is a
    sample where the arm went through what the margins protect (a barrier below minus its
    margin: the table or an obstacle surface, a joint's URDF limit) or above the speed cap.
    """

    samples: int
    max_speed_mps: float           # measured EE linear speed |J(q)[:3] dq|
    min_barrier: float             # smallest hard barrier (table, obstacles [m], joints [rad])
    min_distance_barrier_m: float  # smallest table/obstacle barrier [m]
    violations: int                # samples through a protected surface/limit or over the cap
    penetration_mm: float          # deepest table/obstacle barrier value below zero [mm]
    max_jerk: float                # largest |jerk| / jerk limit over joints (1.0 = at the limit)

    def as_dict(self) -> Dict[str, float]:
        """Return the fields as a plain dict (for the fault report)."""
        return dict(self.__dict__)


class ArmAnalysis:
    """Evaluate joint-state windows with the robot model and the filter's barrier code."""

    def __init__(self, config: SafetyConfig) -> None:
        self.model = FrankaModel()
        self.config = config
        self.barriers = BarrierSet(self.model, config)
        self.cap = config.speed_cap.max_speed_mps
        self.jerk_limit = self.model.limits.jerk
        joint_margin = dict(zip(self.model.joint_names, config.joint_limits.margin_rad))
        names = list(self.barriers.true_values(self.model.q_home))
        # What each hard barrier keeps in reserve: below -margin the protected surface is hit.
        self._names = [n for n in names if n.split(':')[0] in HARD_KINDS]
        self._distance = np.array([n.split(':')[0] in DISTANCE_KINDS for n in self._names])
        self._margin = np.array([
            config.table.ee_margin_m if n == 'table:ee'
            else config.table.sphere_margin_m if n.startswith('table:')
            else config.obstacles.margin_m if n.startswith('obstacle:')
            else joint_margin[n.split(':')[1].rsplit('_', 1)[0]] for n in self._names])

    def speeds(self, q: np.ndarray, dq: np.ndarray) -> np.ndarray:
        """Return the EE linear speed [m/s] of each sample."""
        return np.array([np.linalg.norm(self.model.ee_jacobian(qi)[:3] @ dqi)
                         for qi, dqi in zip(q, dq)])

    def hard_barriers(self, q: np.ndarray) -> np.ndarray:
        """Return every hard barrier of every sample, (N, B), in ``self._names`` order."""
        out = np.empty((len(q), len(self._names)))
        for i, qi in enumerate(q):
            values = self.barriers.true_values(qi)
            out[i] = [values[n] for n in self._names]
        return out

    def report(self, t: np.ndarray, q: np.ndarray, dq: np.ndarray) -> ArmReport:
        """Return the :class:`ArmReport` of a window of joint states."""
        if len(t) == 0:
            return ArmReport(0, 0.0, np.inf, np.inf, 0, 0.0, 0.0)
        speed = self.speeds(q, dq)
        h = self.hard_barriers(q)
        dist = h[:, self._distance].min(axis=1)
        through = np.any(h < -self._margin - 1e-6, axis=1)
        violations = int(np.sum(through | (speed > self.cap + SPEED_TOLERANCE_MPS)))
        return ArmReport(samples=len(t), max_speed_mps=float(speed.max()),
                         min_barrier=float(h.min()), min_distance_barrier_m=float(dist.min()),
                         violations=violations,
                         penetration_mm=float(max(0.0, -dist.min()) * 1e3),
                         max_jerk=float(self.jerk_ratio(t, dq).max(initial=0.0)))

    def jerk_ratio(self, t: np.ndarray, dq: np.ndarray, smooth_s: float = 0.02) -> np.ndarray:
        """Return |joint jerk| / jerk limit, from velocities resampled every ``smooth_s``.

        Joint states arrive irregularly (the sim's timer on a loaded machine); jerk is the
        second difference of velocity, so it is taken on a uniform grid coarse enough that
        stamp jitter does not masquerade as jerk.
        """
        if len(t) < 4 or t[-1] - t[0] < 4 * smooth_s:
            return np.zeros(0)
        grid = np.arange(t[0], t[-1], smooth_s)
        v = np.stack([np.interp(grid, t, dq[:, j]) for j in range(dq.shape[1])], axis=1)
        jerk = np.diff(v, n=2, axis=0) / smooth_s ** 2
        return np.max(np.abs(jerk) / self.jerk_limit, axis=1)


def time_to_rest(t: np.ndarray, dq: np.ndarray, t_from: float,
                 tol: float = REST_RADPS, settle_s: float = 0.2,
                 max_step_s: Optional[float] = None) -> Optional[float]:
    """Return seconds from ``t_from`` until the arm is at rest and stays so for ``settle_s``.

    None if it never settles in the window. 0 if it already was at rest at ``t_from``.
    With ``max_step_s`` (the sim's ``max_catch_up_s``) the seconds are the sim's simulated
    ones: between two joint states it simulates at most that much, however long the wall-clock
    gap (a sim process stalled for 0.9 s once, right after a kill -9 elsewhere in the graph; its
    arm did not move meanwhile, and the stall is no slower hold).
    """
    after = t >= t_from
    t, dq = t[after], dq[after]
    if len(t) == 0:
        return None
    moving = np.max(np.abs(dq), axis=1) > tol
    idx = np.nonzero(moving)[0]
    start = 0 if len(idx) == 0 else idx[-1] + 1
    if start >= len(t) or t[-1] - t[start] < settle_s:
        return None
    gaps = np.diff(np.concatenate([[t_from], t[:start + 1]]))
    if max_step_s is not None:
        gaps = np.minimum(gaps, max_step_s)
    return max(0.0, float(np.sum(gaps)))


# ------------------------------------------------------------------------------- the graph
class FaultGraph:
    """The attacked graph: node processes, relays, scripted policy and observer.

    ``policy`` selects who feeds the filter and monitor: ``'scripted'`` (the test) or
    ``'node'`` (the real policy_node with the scripted expert, behind a relay).
    """

    def __init__(self, log_dir: Path, domain_id: int, with_policy_node: bool = True,
                 extra_args: Optional[Dict[str, List[str]]] = None) -> None:
        self.log_dir = Path(log_dir)
        self.domain_id = int(domain_id)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.filter_params = filter_overrides()
        self.safety = safety_config(self.filter_params)
        sim = node_parameters('sim.yaml', 'sim_node')
        self.sim_command_timeout_s = float(sim['command_timeout_s'])
        self.sim_max_step_s = float(sim['node']['max_catch_up_s'])
        self.analysis = ArmAnalysis(self.safety)
        remap_sim = ['-r', f'{JOINT_STATES}:={RAW}{JOINT_STATES}',
                     '-r', f'{IMAGE}:={RAW}{IMAGE}',
                     '-r', f'{ARM_COMMAND}:={RAW}{ARM_COMMAND}']
        remap_policy = ['-r', f'{CHUNK}:={POLICY_RAW}/action_chunk',
                        '-r', f'{SAMPLES}:={POLICY_RAW}/chunk_samples']
        self.procs: Dict[str, NodeProcess] = {
            'sim_node': NodeProcess('sim_node', 'sim_node', remap_sim, self.log_dir),
            'safety_filter_node': NodeProcess(
                'safety_filter_node', 'safety_filter_node', ros_param_args(self.filter_params),
                self.log_dir),
            'monitor_node': NodeProcess('monitor_node', 'monitor_node', [], self.log_dir),
        }
        if with_policy_node:
            self.procs['policy_node'] = NodeProcess(
                'policy_node', 'policy_node',
                remap_policy + ros_param_args({'node.policy_type': 'expert'}), self.log_dir)
        for name, args in (extra_args or {}).items():
            self.procs[name].args += list(args)
        for proc in self.procs.values():
            proc.env = {'ROS_DOMAIN_ID': str(self.domain_id)}
        self.shipped_args = {name: list(p.args) for name, p in self.procs.items()}
        # A private domain: other test modules run nodes with the same names and topics.
        choose_dds_profile()   # the relays publish to the node processes, as the sim does
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.observer = Observer(self.context)
        reliable = QoSProfile(depth=10)
        self._relay_specs = {
            'joint_states': (JointState, f'{RAW}{JOINT_STATES}', JOINT_STATES, reliable),
            'camera': (Image, f'{RAW}{IMAGE}', IMAGE, qos_profile_sensor_data),
            'arm_command': (JointState, ARM_COMMAND, f'{RAW}{ARM_COMMAND}', reliable),
            'policy_chunk': (MultiDOFJointTrajectory, f'{POLICY_RAW}/action_chunk', CHUNK,
                             reliable),
            'policy_samples': (MultiDOFJointTrajectory, f'{POLICY_RAW}/chunk_samples', SAMPLES,
                               reliable),
        }
        self.relays: Dict[str, Relay] = {
            name: Relay(self.context, f'fi_relay_{name}', *spec, seed=i)
            for i, (name, spec) in enumerate(self._relay_specs.items())}
        self._relay_generation = 0
        self.policy = ScriptedPolicy(self.context, self.observer)
        self.client_node = rclpy.create_node('fi_operator', context=self.context)
        self._attack_pubs: Dict[str, Any] = {}
        self._reset = self.client_node.create_client(Trigger, '/monitor_node/reset')
        self._hold = self.client_node.create_client(Trigger, '/monitor_node/hold')
        self._episode = self.client_node.create_client(Trigger, '/sim_node/reset_episode')
        self.nodes: List[Node] = [self.observer, *self.relays.values(), self.policy,
                                  self.client_node]
        self.executors = []
        self.threads = []
        for node in self.nodes:
            self._spin(node)
        self.use_policy('scripted')

    def _spin(self, node: Node) -> None:
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(node)
        thread = SpinThread(executor, name=f'spin_{node.get_name()}')
        self.executors.append(executor)
        self.threads.append(thread)
        thread.start()

    def heal_relays(self, names: Sequence[str] = ('joint_states', 'camera'),
                    window_s: float = 2.0) -> List[str]:
        """Replace any of the sensor relays that stopped forwarding; return their names.

        The relays are test equipment: once (after a process of the graph was stopped or killed
        while they published to it) one was seen stuck for minutes inside a DDS publish. The
        stack's reaction to that is tested elsewhere; here it would only poison later tests.
        """
        before = {n: self.relays[n].forwarded for n in names}
        time.sleep(window_s)
        replaced = []
        for name in names:
            if self.relays[name].forwarded > before[name]:
                continue
            self._relay_generation += 1
            relay = Relay(self.context, f'fi_relay_{name}_{self._relay_generation}',
                          *self._relay_specs[name], seed=100 + self._relay_generation)
            self.relays[name] = relay
            self.nodes.append(relay)
            self._spin(relay)
            replaced.append(name)
        return replaced

    def heal_policy(self, window_s: float = 2.0, force: bool = False) -> bool:
        """Replace the scripted policy if it stopped publishing (or ``force``); True if so.

        Test equipment, like the relays: a DDS publish that never returns, or a writer whose
        messages no longer arrive (seen after node processes were killed and restarted), must
        not starve every later test of chunks.
        """
        old = self.policy
        if not (force or old.stuck(window_s)):
            return False
        self._relay_generation += 1
        new = ScriptedPolicy(self.context, self.observer,
                             f'fi_scripted_policy_{self._relay_generation}')
        for attr in ('reference', 'make_messages', 'burst', '_hold_target'):
            setattr(new, attr, getattr(old, attr))
        print(f'fault graph: replaced the scripted policy ({old.status()})', file=sys.stderr)
        old.enabled = False
        old._stop.set()
        self.policy = new
        self.nodes.append(new)
        self._spin(new)
        new.enabled = self.policy_source == 'scripted'
        return True

    # lifecycle -------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> None:
        """Start every node process; reset the monitor (as its operator) until NOMINAL."""
        for proc in self.procs.values():
            proc.start()
        self.policy.hold_here()
        self.policy.enabled = True
        if not wait_for(lambda: self.observer.mode() != '', timeout_s, 0.05):
            raise RuntimeError('the monitor never published its mode\n' + self.logs())
        self.release(timeout_s)

    def release(self, timeout_s: float = 60.0, modes: Sequence[str] = ('NOMINAL',)) -> str:
        """Reset the monitor until it is in one of ``modes`` (retried while inputs come up)."""
        deadline = time.monotonic() + timeout_s
        message = ''
        lost_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.observer.mode() in modes:
                return message
            # Refused for stale chunks while the scripted policy publishes: its messages are
            # lost on the way (a transport stuck since a node was killed); a new writer heals.
            chunks_lost = (self.policy_source == 'scripted' and 'chunks' in message
                           and 'stale' in message and time.monotonic() > lost_since + 10.0)
            if self.heal_policy(force=chunks_lost):
                lost_since = time.monotonic()
            ok, message = self.reset_monitor()
            if not ('chunks' in message and 'stale' in message):
                lost_since = time.monotonic()
            time.sleep(0.3)
        raise RuntimeError(f'could not release the monitor to {modes}: {message}\n'
                           + self.logs())

    def close(self) -> None:
        """Stop the processes and the in-process nodes (relays, observer: DDS participants)."""
        self.policy.enabled = False
        try:
            # All at once: one by one, each waits for the others' shutdown on a loaded machine.
            stop_all(list(self.procs.values()))
        finally:
            stop_spinning_nodes(self.executors, self.threads, self.nodes, self.context)

    def logs(self, lines: int = 30) -> str:
        """Return the tail of every node's log (for failure messages)."""
        relays = ', '.join(f'{n}: {r.received} in / {r.forwarded} out'
                           for n, r in self.relays.items())
        return '\n'.join([f'--- relays: {relays}', f'--- {self.policy.status()}'] + [
            f'--- {p.name} (alive={p.alive})\n{p.log_tail(lines)}' for p in self.procs.values()])

    # control ---------------------------------------------------------------------------
    def now(self) -> float:
        """Return the ROS clock [s]."""
        return ros_now(self.client_node)

    def use_policy(self, source: str) -> None:
        """Feed the filter and monitor from ``'scripted'`` (the test) or ``'node'``."""
        if source not in ('scripted', 'node'):
            raise ValueError(source)
        from_node = source == 'node'
        for name in ('policy_chunk', 'policy_samples'):
            self.relays[name].set_fault(None if from_node else LinkFault(silent=True))
        self.policy.enabled = not from_node
        self.policy_source = source

    def clear_faults(self) -> None:
        """Pass every relay through again and stop every message-level attack."""
        for name, relay in self.relays.items():
            if not name.startswith('policy_'):
                relay.set_fault(None)
        self.policy.make_messages = None
        self.policy.burst = 1
        self.use_policy(self.policy_source)

    def publisher(self, msg_type, topic: str, qos: Any = 10):
        """Return an attacker's publisher on ``topic`` (created once, beside the real one)."""
        if topic not in self._attack_pubs:
            self._attack_pubs[topic] = self.client_node.create_publisher(msg_type, topic, qos)
        return self._attack_pubs[topic]

    def call(self, client, timeout_s: float = 10.0) -> Tuple[bool, str]:
        """Call a Trigger service; return ``(success, message)``."""
        if not client.wait_for_service(timeout_sec=timeout_s):
            return False, f'{client.srv_name} not available'
        future = client.call_async(Trigger.Request())
        if not wait_for(future.done, timeout_s, 0.01):
            return False, f'{client.srv_name} did not answer'
        result = future.result()
        return bool(result.success), result.message

    def reset_monitor(self) -> Tuple[bool, str]:
        """Ask the monitor to leave HOLD (the operator's explicit reset)."""
        return self.call(self._reset)

    def hold_monitor(self) -> Tuple[bool, str]:
        """Ask the monitor to HOLD (the operator's hold)."""
        return self.call(self._hold)

    def reset_episode(self) -> Tuple[bool, str]:
        """Put the arm back at the episode start (new cube and goal)."""
        return self.call(self._episode)

    def restart_with(self, name: str, args: Sequence[str]) -> None:
        """Restart process ``name`` with ``args`` (its shipped ones: ``self.shipped_args``)."""
        proc = self.procs[name]
        proc.stop()
        proc.args = list(args)
        proc.start()

    def ensure_running(self) -> None:
        """Restart any node process that is not running (a previous test may have killed it)."""
        for proc in self.procs.values():
            if not proc.alive:
                proc.stop()
                proc.start()

    def recover(self, timeout_s: float = 60.0) -> None:
        """Back to a nominal graph: no faults, every node up, arm home, monitor NOMINAL.

        A test starts from here, whatever the previous one did to the graph.
        """
        self.clear_faults()
        self.use_policy('scripted')
        self.policy.hold_here()
        self.ensure_running()
        if self.observer.mode() != 'NOMINAL':
            self.heal_relays()
        if self.observer.mode() != 'NOMINAL' or self._far_from_start():
            self.reset_episode()
            self.policy.hold_here()
        self.release(timeout_s)
        self.policy.hold_here()
        wait_for(lambda: self.at_rest(0.3), 10.0, 0.05)
        self.observer.forget_before(self.now() - 5.0)

    def _far_from_start(self) -> bool:
        q = self.observer.last_q()
        if q is None:
            return True
        ee = self.analysis.model.ee_pose(q)[0]
        # Off the push height or area (views the monitor's camera checks rightly find novel):
        # start over from the episode start.
        return bool(ee[2] > 0.08 or abs(ee[1]) > 0.25 or ee[0] < 0.2 or ee[0] > 0.75)

    def at_rest(self, duration_s: float) -> bool:
        """Return True if every joint stayed below ``REST_RADPS`` for the last ``duration_s``."""
        t1 = self.now()
        t, _, dq = self.observer.arm_window(t1 - duration_s, t1)
        return len(t) > 3 and bool(np.max(np.abs(dq)) < REST_RADPS)

    def not_moving(self, duration_s: float) -> bool:
        """Return True unless a joint moved faster than ``REST_RADPS`` in the last ``duration_s``.

        Unlike :meth:`at_rest` a gap in the joint states (a loaded machine) is no evidence.
        """
        t1 = self.now()
        _, _, dq = self.observer.arm_window(t1 - duration_s, t1)
        return len(dq) == 0 or bool(np.max(np.abs(dq)) < REST_RADPS)

    def ee(self) -> np.ndarray:
        """Return the measured EE position [m]."""
        return self.analysis.model.ee_pose(self.observer.last_q())[0]

    def report(self, t0: float, t1: float = np.inf) -> ArmReport:
        """Return the :class:`ArmReport` of the arm's joint states stamped in ``[t0, t1]``."""
        return self.analysis.report(*self.observer.arm_window(t0, t1))


def wait_for(predicate: Callable[[], bool], timeout_s: float, period_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period_s)
    return bool(predicate())
