"""Franka Hand through ``pylibfranka.Gripper``, in a process of its own.

The gripper's calls (``homing``, ``move``, ``grasp``) block for the whole finger motion while
holding the GIL, so they cannot run in the driver node's process. :class:`FrankaGripper` (node
side) sends requests without waiting; the worker runs them one after the other, polls the width
between them, and the node collects results with :meth:`FrankaGripper.results`. A running
command cannot be interrupted (libfranka's call does not return until it is done): the robot's
user stop is the emergency stop, as for the arm.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import signal
import time
from typing import Any, Dict, List, Optional

from genpolicy_ros.drivers.franka_config import GripperConfig
from genpolicy_ros.drivers.shared import SharedRecord, SharedText

GRIPPER_FIELDS = (('sample_time', 1), ('width', 1), ('max_width', 1), ('is_grasped', 1),
                  ('connected', 1), ('busy', 1), ('completed', 1))
OPERATIONS = ('homing', 'move', 'grasp', 'stop')


@dataclasses.dataclass
class GripperResult:
    """Outcome of one gripper command."""

    op: str
    ok: bool
    message: str


def gripper_process_main(robot_ip: str, config: GripperConfig, reconnect_period_s: float,
                         state: SharedRecord, text: SharedText, requests: Any) -> None:
    """Entry point of the gripper process: connect, poll the width, run commands in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us (see franka_control.py)
    import pylibfranka as pf
    gripper = None
    completed = 0
    period = 1.0 / config.state_rate_hz
    while True:
        if gripper is None:
            try:
                gripper = pf.Gripper(robot_ip)
                text.write({'status': 'connected', 'message': f'gripper at {robot_ip}'})
            except Exception as exc:  # no hand, or not reachable: report, retry
                state.write(connected=0.0)
                text.write({'status': 'unavailable',
                            'message': f'gripper at {robot_ip} unavailable: '
                                       f'{type(exc).__name__}: {exc}'})
                if _wait_for_request(requests, reconnect_period_s) == 'shutdown':
                    return
                continue
        try:
            st = gripper.read_once()
            state.write(sample_time=time.monotonic(), width=st.width, max_width=st.max_width,
                        is_grasped=float(st.is_grasped), connected=1.0)
        except Exception as exc:
            gripper = None
            text.write({'status': 'unavailable', 'message': f'gripper connection lost: {exc}'})
            continue
        if not requests.poll(period):
            continue
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return  # the node is gone
        op = request.get('op')
        if op == 'shutdown':
            return
        state.write(busy=1.0)
        try:
            ok = _run(gripper, op, request, config)
            message = f'{op} {"succeeded" if ok else "failed"}'
        except Exception as exc:  # CommandException, NetworkException: report it
            ok, message = False, f'{op} failed: {type(exc).__name__}: {exc}'
        completed += 1
        state.write(busy=0.0, completed=float(completed))
        try:
            requests.send({'op': op, 'ok': bool(ok), 'message': message})
        except (EOFError, OSError):
            return


def _wait_for_request(requests: Any, timeout_s: float) -> Optional[str]:
    """Wait for a shutdown during a reconnect pause; other requests fail (not connected)."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0.0 or not requests.poll(remaining):
            return None
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return 'shutdown'
        if request.get('op') == 'shutdown':
            return 'shutdown'
        requests.send({'op': request.get('op'), 'ok': False, 'message': 'gripper unavailable'})


def _run(gripper: Any, op: str, request: Dict[str, Any], config: GripperConfig) -> bool:
    if op == 'homing':
        return bool(gripper.homing())
    if op == 'move':
        return bool(gripper.move(float(request['width']), config.speed_mps))
    if op == 'grasp':
        return bool(gripper.grasp(float(request['width']), config.speed_mps, config.force_n,
                                  config.epsilon_inner_m, config.epsilon_outer_m))
    if op == 'stop':
        return bool(gripper.stop())
    raise ValueError(f'unknown gripper command {op!r} (one of {OPERATIONS})')


class FrankaGripper:
    """Node-side handle of the gripper process: send commands, read width and results."""

    def __init__(self, robot_ip: str, config: GripperConfig, reconnect_period_s: float) -> None:
        ctx = mp.get_context('spawn')
        self.config = config
        self._state = SharedRecord(ctx, GRIPPER_FIELDS)
        self._text = SharedText(ctx, 2048)
        self._conn, child = ctx.Pipe()
        self._pending = 0
        self.process = ctx.Process(
            target=gripper_process_main, name='franka-gripper', daemon=True,
            args=(robot_ip, config, reconnect_period_s, self._state, self._text, child))
        self.process.start()
        child.close()

    def request(self, op: str, width: Optional[float] = None) -> None:
        """Queue ``op`` (homing, move, grasp, stop); ``width`` [m] for move and grasp.

        Raises ValueError for an unknown op or a width outside 0..max width (or non-finite).
        """
        if op not in OPERATIONS:
            raise ValueError(f'unknown gripper command {op!r} (one of {OPERATIONS})')
        request: Dict[str, Any] = {'op': op}
        if op in ('move', 'grasp'):
            max_width = self._state.get('max_width') or 0.08
            if width is None or not (0.0 <= float(width) <= max_width):
                raise ValueError(f'gripper width {width} m is outside 0..{max_width:.3f} m')
            request['width'] = float(width)
        self._conn.send(request)
        self._pending += 1

    def results(self) -> List[GripperResult]:
        """Return the results that arrived since the last call (never blocks)."""
        out = []
        while self._pending and self._conn.poll():
            reply = self._conn.recv()
            self._pending -= 1
            out.append(GripperResult(str(reply.get('op')), bool(reply.get('ok')),
                                     str(reply.get('message'))))
        return out

    def state(self) -> Dict[str, Any]:
        """Return width [m], max_width, is_grasped, connected, busy, sample_time, status text."""
        data = self._state.read()
        _, doc = self._text.read()
        data['status'] = doc.get('status', 'starting')
        data['message'] = doc.get('message', '')
        data['pending'] = self._pending
        return data

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the gripper process (after the command in progress, if any)."""
        if self.process.is_alive():
            try:
                self._conn.send({'op': 'shutdown'})
            except (OSError, EOFError):
                pass
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        self._conn.close()
