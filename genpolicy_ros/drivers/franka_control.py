"""The Franka's 1 kHz control loop, run in a process of its own by :class:`FrankaBackend`.

Why a process: pylibfranka holds the GIL while it blocks (``readOnce`` waits for the next 1 kHz
state datagram, the gripper's ``move`` for the whole motion), so in the node's process it would
stall the ROS executor, and the executor would make the loop lose cycles. Here the loop has an
interpreter to itself, the libfranka ``enforce`` real-time mode raises only this process's
priority, and the node talks to it through shared memory (state out, command in, status text)
and a request pipe (enable, hold, recover, ...).

The loop, in one sentence per state:

* CONNECTING / DISCONNECTED: connect (``Robot``, collision behaviour, impedances, model) every
  ``reconnect_period_s``; requests are answered meanwhile.
* IDLE: connected, no motion; the state is read (``read_once``) and published at 1 kHz.
* ACTIVE: a joint position (or velocity) motion runs; each cycle reads the state, publishes it,
  takes the newest command into the :class:`SetpointGenerator` and writes its set-point. No
  command, or a stale one: the set-point decelerates and holds.
* HOLD: the motion runs, but commands are ignored (operator ``hold``, or a reconnect after a
  connection loss) until ``recover``.
* REFLEX: the robot aborted the motion (``ControlException``); nothing is commanded, the error
  list is published, and only ``recover`` (``automatic_error_recovery``) leaves it.
"""

from __future__ import annotations

import enum
import gc
import os
import signal
import time
from typing import Any, Dict, List, Optional

import numpy as np

from genpolicy_ros.drivers.franka_config import FrankaConfig
from genpolicy_ros.drivers.motion import CommandRefused, SetpointGenerator
from genpolicy_ros.drivers.shared import SharedRecord, SharedText

# libfranka's RobotMode values, in enum order.
ROBOT_MODES = ('Other', 'Idle', 'Move', 'Guiding', 'Reflex', 'UserStopped',
               'AutomaticErrorRecovery')
NOMINAL_CYCLE_S = 1e-3
# Histogram of the periods between command writes: 10 us bins up to 50 ms (last bin: longer).
PERIOD_BIN_S = 1e-5
PERIOD_BINS = 5001

STATE_FIELDS = (
    ('seq', 1), ('sample_time', 1), ('robot_time', 1), ('robot_mode', 1), ('status', 1),
    ('following', 1), ('q', 7), ('dq', 7), ('tau', 7), ('q_d', 7), ('dq_d', 7), ('q_c', 7),
    ('dq_c', 7), ('O_T_EE', 16), ('success_rate', 1), ('cycles', 1), ('lost_cycles', 1),
    ('reflexes', 1), ('connects', 1), ('stale_holds', 1), ('late_refusals', 1),
    ('ignored_commands', 1), ('limiter_clamps', 1), ('resyncs', 1),
)
COMMAND_FIELDS = (('seq', 1), ('arrival_time', 1), ('q', 7), ('dq', 7))


class Status(enum.IntEnum):
    """What the control process is doing (shared as a float in the state record)."""

    STARTING = 0
    CONNECTING = 1
    IDLE = 2
    ACTIVE = 3
    HOLD = 4
    REFLEX = 5
    DISCONNECTED = 6
    STOPPED = 7


def control_process_main(config: FrankaConfig, state: SharedRecord, command: SharedRecord,
                         text: SharedText, requests: Any) -> None:
    """Entry point of the control process (``multiprocessing`` spawn target)."""
    # Ctrl-C reaches the whole process group: the node, not this loop, decides how to stop
    # (it asks for a shutdown: decelerate, finish the motion). If the node dies, the closed
    # pipe tells the loop to do the same.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ControlLoop(config, state, command, text, requests).run()


def error_names(errors: Any) -> List[str]:
    """Return the active error names of a ``pylibfranka.Errors`` (its str is a JSON list)."""
    text = str(errors).strip()
    if text in ('', '[]'):
        return []
    return [name.strip().strip('"') for name in text.strip('[]').split(',') if name.strip()]


class ControlLoop:
    """The state machine described in the module docstring."""

    def __init__(self, config: FrankaConfig, state: SharedRecord, command: SharedRecord,
                 text: SharedText, requests: Any) -> None:
        self.config = config
        self.state = state
        self.command = command
        self.text = text
        self.requests = requests
        self.gen = SetpointGenerator(config.motion, config.limits, config.control_mode)
        self.pf: Any = None
        self.robot: Any = None
        self.model: Any = None
        self.last_state: Any = None
        self.status = Status.STARTING
        self.enabled = False
        self.shutdown = False
        self.finishing = False
        self.hold_reason = ''          # latched hold (HOLD) until recover
        self.errors: List[str] = []    # reflex errors (REFLEX) until recover
        self.message = 'starting'
        self.ever_connected = False
        self.lost_reason = ''
        self.command_seq = 0.0
        self.accept_after = 0.0        # commands that arrived before this are ignored
        self.pending_disable: List[Any] = []
        self.period_hist = np.zeros(PERIOD_BINS, dtype=np.int64)
        self.period_max_s = 0.0
        self.last_write: Optional[float] = None
        self.notes: List[str] = []
        self._current_id: Any = None
        self._text_pending: Optional[Dict[str, Any]] = None
        # Counters published with every state sample (one lock per cycle).
        self.counts = dict(seq=0, cycles=0, lost_cycles=0, reflexes=0, connects=0,
                           late_refusals=0, ignored_commands=0)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Serve until a shutdown request (or the node's end of the pipe closes)."""
        self._set_priority()
        import pylibfranka  # here, not at module level: the node process never loads it
        self.pf = pylibfranka
        self._set_status(Status.CONNECTING, f'connecting to {self.config.robot_ip}')
        while not self.shutdown:
            if self.robot is None:
                self._connect()
                continue
            try:
                if self.enabled and not self.errors:
                    self._run_motion()
                else:
                    self._idle_cycle()
            except self.pf.ControlException as exc:
                self._on_reflex(exc)
            except RuntimeError as exc:  # NetworkException and libfranka's other failures
                self._on_connection_lost(exc)
        self.robot = None
        self._set_status(Status.STOPPED, 'stopped')

    def _set_priority(self) -> None:
        # libfranka's enforce mode gives the loop SCHED_FIFO itself; this covers ignore mode
        # (simulation) on a machine that allows it, and falls back to nice.
        priority = self.config.control_process_rt_priority
        if priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
                return
            except OSError as exc:  # no CAP_SYS_NICE
                self.notes.append(f'no SCHED_FIFO priority {priority}: {exc}')
        nice = self.config.control_process_nice
        if nice:
            try:
                os.nice(nice)
            except OSError as exc:
                self.notes.append(f'could not set nice {nice}: {exc}')

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        pf, cfg = self.pf, self.config
        realtime = (pf.RealtimeConfig.kEnforce if cfg.realtime_config == 'enforce'
                    else pf.RealtimeConfig.kIgnore)
        try:
            robot = pf.Robot(cfg.robot_ip, realtime)
            col = cfg.collision
            robot.set_collision_behavior(col.lower_torque_thresholds_nm,
                                         col.upper_torque_thresholds_nm,
                                         col.lower_force_thresholds, col.upper_force_thresholds)
            robot.set_joint_impedance(cfg.impedance.joint_nm_per_rad)
            robot.set_cartesian_impedance(cfg.impedance.cartesian)
            self.model = robot.load_model()
            first = robot.read_once()
        except Exception as exc:  # any failure to come up is reported and retried
            self.robot = None
            lost = self.status == Status.DISCONNECTED
            self._set_status(Status.DISCONNECTED if lost else Status.CONNECTING,
                             (f'{self.lost_reason}; ' if lost else '')
                             + f'cannot connect to {cfg.robot_ip}: {type(exc).__name__}: '
                             f'{exc}; retrying every {cfg.connection.reconnect_period_s} s')
            self._wait_serving(cfg.connection.reconnect_period_s)
            return
        self.robot = robot
        self.counts['connects'] += 1
        self.errors = error_names(first.current_errors)
        self._publish(first, time.monotonic())
        if self.errors:
            self._set_status(Status.REFLEX, 'robot reports errors on connect: '
                             + ', '.join(self.errors) + '; call ~/recover')
        elif self.ever_connected:
            # After a connection loss the arm resumes only on the operator's word.
            self.hold_reason = 'reconnected after a connection loss: call ~/recover to resume'
            self._set_status(Status.IDLE, self.hold_reason)
        else:
            self._set_status(Status.IDLE, f'connected to {cfg.robot_ip}')
        self.ever_connected = True

    def _on_connection_lost(self, exc: Exception) -> None:
        self.robot = None
        self.model = None
        self.last_state = None
        self.last_write = None
        self._fail_pending('connection lost')
        self.lost_reason = f'connection lost: {type(exc).__name__}: {exc}'
        self._set_status(Status.DISCONNECTED, f'{self.lost_reason}; reconnecting every '
                         f'{self.config.connection.reconnect_period_s} s')

    def _wait_serving(self, duration_s: float) -> None:
        deadline = time.monotonic() + duration_s
        while not self.shutdown:
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                return
            if self.requests.poll(min(remaining, 0.05)):
                self._serve_one()

    # ------------------------------------------------------------------ idle
    def _idle_cycle(self) -> None:
        st = self.robot.read_once()
        self._publish(st, time.monotonic(), q_c=st.q_d, dq_c=np.zeros(7), following=0.0)
        if self.status not in (Status.REFLEX, Status.IDLE):
            self._set_status(Status.IDLE, self.hold_reason or 'connected, no motion')
        for reply in self.pending_disable:
            reply.send({'ok': True, 'message': 'motion stopped'})
        self.pending_disable = []
        self._serve_requests()

    # ------------------------------------------------------------------ motion
    def _run_motion(self) -> None:
        pf, cfg = self.pf, self.config
        mode = (pf.ControllerMode.JointImpedance if cfg.controller_mode == 'joint_impedance'
                else pf.ControllerMode.CartesianImpedance)
        position = cfg.control_mode == 'position'
        ctrl = (self.robot.start_joint_position_control(mode) if position
                else self.robot.start_joint_velocity_control(mode))
        # No cyclic garbage collection inside the 1 kHz loop (a full pass takes milliseconds);
        # the loop's objects form no reference cycles, reference counting frees them.
        gc.collect()
        gc.disable()
        try:
            st, _ = ctrl.readOnce()
            now = time.monotonic()
            # Continue from what the robot last commanded: the first command must match it.
            self.gen.reset(np.asarray(st.q_d, dtype=float), np.zeros(7))
            self.accept_after = max(self.accept_after, now)
            self._publish(st, now)
            self._set_status(Status.HOLD if self.hold_reason else Status.ACTIVE,
                             self.hold_reason or 'motion running')
            self.finishing = False
            while True:
                st, duration = ctrl.readOnce()
                now = time.monotonic()
                dt = duration.to_sec()
                if dt <= 0.0:
                    dt = NOMINAL_CYCLE_S
                elif dt > 1.5 * NOMINAL_CYCLE_S:
                    self.counts['lost_cycles'] += round(dt / NOMINAL_CYCLE_S) - 1
                self._publish(st, now)
                self._serve_requests()
                if self.finishing and self.gen.at_rest:
                    # Brought to rest: end the motion with the command the robot already has.
                    msg = (pf.JointPositions(self.gen.sent.q.tolist()) if position
                           else pf.JointVelocities([0.0] * 7))
                    msg.motion_finished = True
                    ctrl.writeOnce(msg)
                    break
                if self.finishing or self.hold_reason:
                    self.gen.clear_target()
                else:
                    self._take_command(now)
                # After lost cycles the loop continues from the robot's extrapolation (its last
                # commanded values), see SetpointGenerator.step.
                sp = self.gen.step(now, dt, np.asarray(st.q, dtype=float),
                                   (st.q_d, st.dq_d, st.ddq_d))
                ctrl.writeOnce(pf.JointPositions(sp.q.tolist()) if position
                               else pf.JointVelocities(sp.dq.tolist()))
                self._note_write()
                self.state.write(block=False, q_c=sp.q, dq_c=sp.dq,
                                 following=float(self.gen.has_target),
                                 stale_holds=self.gen.stale_holds, resyncs=self.gen.resyncs,
                                 limiter_clamps=(self.gen.position_limiter.clamped
                                                 + self.gen.velocity_limiter.clamped))
        finally:
            ctrl = None  # releases libfranka's control lock, also after an exception
            self.last_write = None
            gc.enable()
        self.finishing = False
        self._set_status(Status.IDLE, self.hold_reason or 'motion finished')

    def _take_command(self, now: float) -> None:
        cmd = self.command.read(block=False)
        if cmd is None or cmd['seq'] == self.command_seq:
            return  # no new command (or the node is writing one: taken next cycle)
        self.command_seq = cmd['seq']
        if cmd['arrival_time'] < self.accept_after:
            self.counts['ignored_commands'] += 1
            return
        try:
            self.gen.set_target(cmd['q'], cmd['dq'], cmd['arrival_time'])
        except CommandRefused as exc:
            # The node checked it already; the set-point moved since. Keep the old target.
            self.counts['late_refusals'] += 1
            self.message = f'command refused in the loop: {exc}'

    def _note_write(self) -> None:
        # O(1) per cycle: a histogram bin, not a list the reply would have to carry.
        now = time.perf_counter()
        if self.last_write is not None:
            period = now - self.last_write
            self.period_hist[min(int(period / PERIOD_BIN_S), PERIOD_BINS - 1)] += 1
            self.period_max_s = max(self.period_max_s, period)
        self.last_write = now

    def _on_reflex(self, exc: Exception) -> None:
        self.counts['reflexes'] += 1
        errors: List[str] = []
        try:
            st = self.robot.read_once()
            self._publish(st, time.monotonic())
            errors = (error_names(st.last_motion_errors) or error_names(st.current_errors))
        except RuntimeError:
            pass  # connection trouble shows up in the next cycle
        if not errors:
            errors = [str(exc)]
        self.errors = errors
        self.gen.clear_target()
        self._fail_pending('motion aborted by the robot')
        self._set_status(Status.REFLEX, f'motion aborted by reflex: {", ".join(errors)} '
                         f'({exc}); the arm holds: call ~/recover')

    # ------------------------------------------------------------------ shared state
    def _publish(self, st: Any, now: float, **extra: Any) -> None:
        # Never waits for the node (block=False): a sample the node is reading right now is
        # skipped, the next one (1 ms later) goes out.
        self.last_state = st
        self.counts['seq'] += 1
        self.counts['cycles'] += 1
        self.state.write(
            block=False, sample_time=now, robot_time=st.time.to_sec(),
            robot_mode=int(st.robot_mode.value), status=float(self.status), q=st.q, dq=st.dq,
            tau=st.tau_J, q_d=st.q_d, dq_d=st.dq_d, O_T_EE=st.O_T_EE,
            success_rate=st.control_command_success_rate, **self.counts, **extra)
        if self._text_pending is not None and self.text.write(self._text_pending, block=False):
            self._text_pending = None

    def _set_status(self, status: Status, message: str) -> None:
        if status == self.status and message == self.message:
            return
        self.status = status
        self.message = message
        doc = {'status': status.name, 'message': message, 'errors': self.errors,
               'hold_reason': self.hold_reason, 'notes': self.notes}
        if self.status in (Status.ACTIVE, Status.HOLD):
            # In the motion: never wait for the node; whatever is not written now is retried
            # with every state sample.
            self.state.write(block=False, status=float(status))
            self._text_pending = doc
            if self.text.write(doc, block=False):
                self._text_pending = None
        else:
            self.state.write(status=float(status))
            self.text.write(doc)
            self._text_pending = None

    # ------------------------------------------------------------------ requests
    def _serve_requests(self) -> None:
        while not self.shutdown and self.requests.poll():
            self._serve_one()

    def _serve_one(self) -> None:
        try:
            request = self.requests.recv()
        except (EOFError, OSError):
            self.shutdown = True  # the node is gone: stop the motion and leave
            self.finishing = True
            return
        op = request.get('op')
        self._current_id = request.get('id')
        handler = getattr(self, f'_op_{op}', None)
        if handler is None:
            self._reply({'ok': False, 'message': f'unknown request {op!r}'})
            return
        reply = handler(request)
        if reply is not None:
            self._reply(reply)

    def _reply(self, reply: Dict[str, Any], request_id: Any = None) -> None:
        reply = dict(reply, id=self._current_id if request_id is None else request_id)
        try:
            self.requests.send(reply)
        except (OSError, EOFError):
            self.shutdown = True

    def _fail_pending(self, why: str) -> None:
        for reply in self.pending_disable:
            reply.send({'ok': False, 'message': why})
        self.pending_disable = []

    def _op_enable(self, request: Dict[str, Any]) -> Dict[str, Any]:
        self.enabled = True
        return {'ok': True, 'message': 'enabled'}

    def _op_disable(self, request: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        self.enabled = False
        if self.status in (Status.ACTIVE, Status.HOLD):
            self.finishing = True
            self.pending_disable.append(_Replier(self))  # answered once the motion finished
            return None
        return {'ok': True, 'message': 'no motion running'}

    def _op_stop(self, request: Dict[str, Any]) -> Dict[str, Any]:
        # Not latched: drop the current command and every older one; the next one is followed.
        self.gen.clear_target()
        self.accept_after = time.monotonic()
        return {'ok': True, 'message': 'holding until the next command'}

    def _op_hold(self, request: Dict[str, Any]) -> Dict[str, Any]:
        self.hold_reason = str(request.get('reason') or 'operator hold')
        self.gen.clear_target()
        if self.status == Status.ACTIVE:
            self._set_status(Status.HOLD, self.hold_reason)
        else:
            self._set_status(self.status, self.hold_reason)
        return {'ok': True, 'message': f'holding: {self.hold_reason}'}

    def _op_recover(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if self.robot is None:
            return {'ok': False, 'message': f'not connected: {self.message}'}
        released = self.hold_reason
        if self.errors or self.status == Status.REFLEX:
            try:
                self.robot.automatic_error_recovery()
                st = self.robot.read_once()
            except RuntimeError as exc:
                return {'ok': False, 'message': f'automatic error recovery failed: {exc}'}
            remaining = error_names(st.current_errors)
            if remaining:
                self._set_status(Status.REFLEX, 'recovery left errors: ' + ', '.join(remaining))
                return {'ok': False, 'message': 'errors remain: ' + ', '.join(remaining)}
            recovered = ', '.join(self.errors)
            self.errors = []
            self.hold_reason = ''
            self.accept_after = time.monotonic()  # no command from before the recovery
            self._set_status(Status.IDLE, f'recovered from {recovered}')
            return {'ok': True, 'message': f'recovered from: {recovered}'}
        self.hold_reason = ''
        self.accept_after = time.monotonic()
        if self.status == Status.HOLD:
            self._set_status(Status.ACTIVE, 'motion running')
        else:
            self._set_status(self.status, self.message)
        return {'ok': True, 'message': f'released hold ({released})' if released
                else 'nothing to recover'}

    def _op_model(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if self.model is None or self.last_state is None:
            return {'ok': False, 'message': f'not connected: {self.message}'}
        st = self.last_state
        return {'ok': True, 'message': 'model',
                'jacobian': np.asarray(self.model.zero_jacobian(st)).reshape(7, 6).T.tolist(),
                'gravity': list(self.model.gravity(st)),
                'coriolis': list(self.model.coriolis(st)),
                'mass': np.asarray(self.model.mass(st)).reshape(7, 7).tolist(),
                'q': list(st.q), 'O_T_EE': list(st.O_T_EE)}

    def _op_timing(self, request: Dict[str, Any]) -> Dict[str, Any]:
        reply = {'ok': True, 'message': 'timing', 'bin_s': PERIOD_BIN_S,
                 'counts': self.period_hist.tolist(), 'max_s': self.period_max_s}
        if request.get('reset'):
            self.period_hist[:] = 0
            self.period_max_s = 0.0
        return reply

    def _op_shutdown(self, request: Dict[str, Any]) -> Dict[str, Any]:
        self.shutdown = True
        self.enabled = False
        self.finishing = True
        return {'ok': True, 'message': 'shutting down'}

    def _op_ping(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return {'ok': True, 'message': 'pong'}


class _Replier:
    """A deferred reply on the request pipe (for requests answered later)."""

    def __init__(self, loop: ControlLoop) -> None:
        self._loop = loop
        self._id = loop._current_id

    def send(self, reply: Dict[str, Any]) -> None:
        self._loop._reply(reply, self._id)
