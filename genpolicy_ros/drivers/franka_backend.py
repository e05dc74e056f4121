""":class:`ArmBackend` for a real Franka (FR3 or Panda) through the official ``pylibfranka``.

The node-side object. The 1 kHz loop runs in a child process (``franka_control.py``, which says
why); this class starts it, hands it commands and reads its state through shared memory, and
asks it to enable, hold, recover or stop over a pipe. The gripper has a process of its own
(``franka_gripper.py``). Nothing here imports pylibfranka: the node process never blocks in it.

Bad commands are refused here, before the control process (let alone libfranka) sees them:
wrong shape, NaN/Inf, a position within ``position_margin_rad`` of a limit, a velocity above the
limit, a jump of more than ``max_target_distance_rad`` from the current set-point.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from genpolicy_ros.drivers.backend import ArmState, validate_joint_command
from genpolicy_ros.drivers.franka_config import FrankaConfig
from genpolicy_ros.drivers.franka_control import (
    COMMAND_FIELDS, control_process_main, ROBOT_MODES, STATE_FIELDS, Status)
from genpolicy_ros.drivers.franka_gripper import FrankaGripper
from genpolicy_ros.drivers.motion import check_command, CommandRefused
from genpolicy_ros.drivers.shared import SharedRecord, SharedText


class FrankaBackendError(RuntimeError):
    """The control process did not answer or could not do what was asked."""


@dataclasses.dataclass
class FrankaSample:
    """One state sample of the 1 kHz loop, with the driver's status at that time."""

    seq: int
    age_s: float                 # how long ago the sample was read (monotonic clock)
    sample_time: float           # time.monotonic() when it was read
    robot_time: float            # robot clock [s]
    robot_mode: str              # libfranka RobotMode name ('' before the first sample)
    status: Status
    following: bool              # a fresh command is being followed
    q: np.ndarray
    dq: np.ndarray
    tau: np.ndarray
    q_d: np.ndarray
    q_c: np.ndarray              # last set-point sent (position mode) [rad]
    dq_c: np.ndarray
    ee_pose: np.ndarray          # O_T_EE as a 4x4 matrix (base frame)
    success_rate: float          # control_command_success_rate
    counters: Dict[str, int]


@dataclasses.dataclass
class FrankaStatus:
    """The control process's status text: what it is doing and why."""

    status: Status
    message: str
    errors: List[str]
    hold_reason: str
    notes: List[str]


@dataclasses.dataclass
class CommandTiming:
    """Periods between consecutive command writes of the 1 kHz loop, as a histogram."""

    centres_ms: np.ndarray       # bin centres [ms] (10 us bins; the last one: all longer)
    counts: np.ndarray
    max_ms: float

    @property
    def n(self) -> int:
        """Return the number of periods recorded."""
        return int(self.counts.sum())

    def percentile(self, p: float, around_ms: Optional[float] = None) -> float:
        """Return the ``p``-th percentile [ms] of the period, or of ``|period - around_ms|``."""
        values = self.centres_ms if around_ms is None else np.abs(self.centres_ms - around_ms)
        order = np.argsort(values)
        cumulative = np.cumsum(self.counts[order])
        if cumulative[-1] == 0:
            return float('nan')
        return float(values[order][np.searchsorted(cumulative, p / 100.0 * cumulative[-1])])


class FrankaBackend:
    """:class:`~genpolicy_ros.drivers.backend.ArmBackend` over pylibfranka.

    ``FrankaBackend(config)`` starts the control process (which connects in the background,
    retrying) and the gripper process. :meth:`enable` starts the motion; until then the state is
    read but nothing is commanded. Close with :meth:`close` (also a context manager).
    """

    def __init__(self, config: FrankaConfig) -> None:
        if not config.robot_ip:
            raise ValueError('franka.robot_ip is empty: set the FCI address of the arm')
        self.config = config
        self.joint_names: List[str] = list(config.joint_names)
        ctx = mp.get_context('spawn')  # never fork a process that runs rclpy threads
        self._state = SharedRecord(ctx, STATE_FIELDS)
        self._command = SharedRecord(ctx, COMMAND_FIELDS)
        self._text = SharedText(ctx)
        self._conn, child = ctx.Pipe()
        self._request_lock = threading.Lock()
        self._request_id = 0
        self._command_seq = 0
        self.refused = 0
        self.process = ctx.Process(target=control_process_main, name='franka-control',
                                   daemon=True, args=(config, self._state, self._command,
                                                      self._text, child))
        self.process.start()
        child.close()
        self.gripper: Optional[FrankaGripper] = None
        if config.gripper.enabled:
            self.gripper = FrankaGripper(config.robot_ip, config.gripper,
                                         config.connection.reconnect_period_s)
        self._closed = False
        # Up once it reports a status (connecting may then block: it answers requests between
        # attempts, not during one).
        deadline = time.monotonic() + config.connection.startup_timeout_s
        while self._state.get('status') == Status.STARTING:
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.close()
                raise FrankaBackendError('the Franka control process did not start')
            time.sleep(0.01)

    def __enter__(self) -> 'FrankaBackend':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ state
    def sample(self) -> FrankaSample:
        """Return the newest state sample of the control loop."""
        d = self._state.read()
        mode = int(d['robot_mode'])
        counters = {k: int(d[k]) for k in ('cycles', 'lost_cycles', 'reflexes', 'connects',
                                           'stale_holds', 'late_refusals', 'ignored_commands',
                                           'limiter_clamps', 'resyncs')}
        return FrankaSample(
            seq=int(d['seq']), age_s=(time.monotonic() - d['sample_time']
                                      if d['seq'] > 0 else float('inf')),
            sample_time=d['sample_time'], robot_time=d['robot_time'],
            robot_mode=ROBOT_MODES[mode] if d['seq'] > 0 and 0 <= mode < len(ROBOT_MODES)
            else '', status=Status(int(d['status'])), following=bool(d['following']),
            q=d['q'], dq=d['dq'], tau=d['tau'], q_d=d['q_d'], q_c=d['q_c'], dq_c=d['dq_c'],
            ee_pose=d['O_T_EE'].reshape(4, 4).T.copy(), success_rate=d['success_rate'],
            counters=counters)

    def status(self) -> FrankaStatus:
        """Return what the control process is doing and why (errors, hold reason)."""
        _, doc = self._text.read()
        return FrankaStatus(status=Status[doc.get('status', 'STARTING')],
                            message=str(doc.get('message', 'starting')),
                            errors=list(doc.get('errors', [])),
                            hold_reason=str(doc.get('hold_reason', '')),
                            notes=list(doc.get('notes', [])))

    def read_state(self) -> ArmState:
        """Return the latest measured state (robot time stamp); RuntimeError if none is fresh."""
        s = self.sample()
        if s.age_s > self.config.connection.state_timeout_s:
            raise FrankaBackendError(f'no robot state for {s.age_s:.3f} s: '
                                     f'{self.status().message}')
        width = float('nan')
        if self.gripper is not None:
            g = self.gripper.state()
            width = g['width'] if g['connected'] else float('nan')
        return ArmState(q=s.q, dq=s.dq, tau=s.tau, stamp=s.robot_time, gripper_width=width)

    def wait_for(self, predicate, timeout_s: float, period_s: float = 0.01) -> bool:
        """Poll ``predicate(self.sample())`` until it holds or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.sample()):
                return True
            time.sleep(period_s)
        return bool(predicate(self.sample()))

    # ------------------------------------------------------------------ commands
    def command(self, q: np.ndarray, dq: np.ndarray) -> None:
        """Hand a joint position [rad] + velocity [rad/s] target to the 1 kHz loop.

        Raises :class:`~genpolicy_ros.drivers.motion.CommandRefused` (a ValueError) for a command
        that must not reach the robot; the previous target stays in force. While the driver
        holds (operator hold, reflex, not yet enabled) a valid command is stored but not followed.
        """
        q, dq = validate_joint_command(q, dq, len(self.joint_names))
        s = self.sample()
        reference = s.q_c if s.status in (Status.ACTIVE, Status.HOLD) else s.q_d
        try:
            check_command(q, dq, self.config.limits, self.config.motion.position_margin_rad,
                          reference if s.seq > 0 else None,
                          self.config.motion.max_target_distance_rad)
        except CommandRefused:
            self.refused += 1
            raise
        self._command_seq += 1
        self._command.write(seq=self._command_seq, arrival_time=time.monotonic(), q=q, dq=dq)

    def stop(self) -> None:
        """Drop the current command: the arm decelerates and holds until the next command."""
        self._request({'op': 'stop'})

    def hold(self, reason: str = 'operator hold') -> str:
        """Latch a hold: commands are ignored until :meth:`recover`; returns the reply."""
        return self._request({'op': 'hold', 'reason': reason})['message']

    def recover(self) -> Tuple[bool, str]:
        """Clear a reflex (``automatic_error_recovery``) or a latched hold; ``(ok, message)``."""
        reply = self._request({'op': 'recover'})
        return bool(reply['ok']), str(reply['message'])

    def enable(self) -> None:
        """Start the motion (as soon as connected) and follow commands."""
        self._request({'op': 'enable'})

    def disable(self, timeout_s: Optional[float] = None) -> Tuple[bool, str]:
        """Bring the arm to rest and finish the motion; returns ``(ok, message)``."""
        reply = self._request({'op': 'disable'}, timeout_s)
        return bool(reply['ok']), str(reply['message'])

    def model(self) -> Dict[str, Any]:
        """Return libfranka's model at the current state: jacobian (6x7), gravity, mass, ..."""
        reply = self._request({'op': 'model'})
        if not reply['ok']:
            raise FrankaBackendError(reply['message'])
        return {k: np.asarray(v) for k, v in reply.items() if k not in ('ok', 'message')}

    def command_timing(self, reset: bool = False) -> CommandTiming:
        """Return the histogram of periods between the loop's command writes (then reset it)."""
        reply = self._request({'op': 'timing', 'reset': reset})
        counts = np.asarray(reply['counts'], dtype=np.int64)
        centres_ms = (np.arange(counts.size) + 0.5) * reply['bin_s'] * 1e3
        return CommandTiming(centres_ms, counts, 1e3 * float(reply['max_s']))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Bring the arm to rest, finish the motion, stop both processes (idempotent)."""
        if self._closed:
            return
        self._closed = True
        timeout = self.config.connection.request_timeout_s
        if self.process.is_alive():
            try:
                self._request({'op': 'shutdown'}, timeout)
            except (FrankaBackendError, OSError, EOFError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        self._conn.close()
        if self.gripper is not None:
            self.gripper.close()

    @property
    def child_pids(self) -> List[int]:
        """Return the pids of the control (and gripper) processes."""
        pids = [self.process.pid]
        if self.gripper is not None:
            pids.append(self.gripper.process.pid)
        return [p for p in pids if p is not None]

    def _request(self, request: Dict[str, Any],
                 timeout_s: Optional[float] = None) -> Dict[str, Any]:
        timeout = self.config.connection.request_timeout_s if timeout_s is None else timeout_s
        with self._request_lock:
            if not self.process.is_alive():
                raise FrankaBackendError('the Franka control process is not running')
            self._request_id += 1
            request = dict(request, id=self._request_id)
            self._conn.send(request)
            deadline = time.monotonic() + timeout
            while True:
                while not self._conn.poll(0.05):
                    if not self.process.is_alive():
                        raise FrankaBackendError('the Franka control process exited')
                    if time.monotonic() > deadline:
                        raise FrankaBackendError(
                            f'no answer to {request["op"]!r} within {timeout} s')
                try:
                    reply = self._conn.recv()
                except (EOFError, OSError) as exc:
                    raise FrankaBackendError(f'the Franka control process exited: {exc}') from exc
                if reply.get('id') == self._request_id:  # else: late answer to a timed-out one
                    return reply
