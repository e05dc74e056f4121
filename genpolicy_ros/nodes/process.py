"""Run nodes as child processes, as a launch file does on a real ROS 2 install.

``genpolicy-sim``, the fault-injection suite and the loop benchmark share this module.

:class:`NodeProcess` starts one node from its console script (``ros2 run`` style) or, where the
scripts are not installed next to the interpreter, with ``python -m genpolicy_ros.nodes.<x>``,
in a session (process group) of its own: stopping it also stops whatever it started (the sim's
camera render process). Its output goes to ``<log_dir>/<name>.log``.

A child must not outlive the process that started it, however that one ends: a clean exit or
Ctrl-C stops the children (:meth:`NodeProcess.stop`); a SIGKILL of the parent cannot run any
code, so every child asks the kernel to send it SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux; see :func:`die_with_parent`, called by
:func:`genpolicy_ros.nodes.runner.run_node`). The kernel ties that signal to the *thread* that
started the child: start children from a thread that lives as long as they should (the main
thread).
"""

import ctypes
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from genpolicy_ros.config_io import flatten, read_ros_parameters, unflatten

BIN = Path(sys.executable).parent
# Environment variable naming the pid a child node must not outlive (set by NodeProcess).
PARENT_PID_ENV = 'GENPOLICY_PARENT_PID'
NODE_MODULES = {
    'sim_node': 'genpolicy_ros.nodes.sim_node',
    'policy_node': 'genpolicy_ros.nodes.policy_node',
    'safety_filter_node': 'genpolicy_ros.nodes.safety_filter_node',
    'monitor_node': 'genpolicy_ros.nodes.monitor_node',
    'driver_node': 'genpolicy_ros.nodes.driver_node',
    'camera_node': 'genpolicy_ros.nodes.camera_node',
}
_PR_SET_PDEATHSIG = 1


# ------------------------------------------------------------------------------- parameters
def node_parameters(config_file: str, node_name: str,
                    overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Return the nested parameters of ``node_name`` in ``config/<config_file>`` + overrides.

    ``overrides`` uses the dotted ROS names (``tracking.chunk_timeout_s``); unknown names raise.
    """
    flat = flatten(read_ros_parameters(config_file, node_name))
    for name, value in (overrides or {}).items():
        if name not in flat:
            raise KeyError(f'{config_file}: {node_name} has no parameter {name}')
        flat[name] = value
    return unflatten(flat)


def ros_param_args(overrides: Dict[str, Any]) -> List[str]:
    """Return ``-p name:=value`` arguments for a node's command line."""
    out: List[str] = []
    for name, value in overrides.items():
        if isinstance(value, (list, tuple)):
            text = '[' + ','.join(_param_text(v) for v in value) + ']'
        else:
            text = _param_text(value)
        out += ['-p', f'{name}:={text}']
    return out


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return repr(value) if ('.' in repr(value) or 'e' in repr(value)) else f'{value}.0'
    if isinstance(value, str) and (value == '' or value.strip() != value):
        return f"'{value}'"   # YAML: keep empty or padded strings strings
    return str(value)


# ------------------------------------------------------------------------------- child side
def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child started by :class:`NodeProcess`: get ``sig`` when the parent dies.

    Does nothing unless ``GENPOLICY_PARENT_PID`` is set (a node started by hand or by a launch
    file) or on a system without ``prctl``. If the parent is already gone (it died between
    starting this process and this call), ``sig`` is raised at once.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), sig)


# ------------------------------------------------------------------------------- parent side
def node_command(executable: str) -> List[str]:
    """Return the command that starts ``executable`` (a console script of the package).

    The installed script when it sits next to the running interpreter (a venv or pip install),
    else ``python -m`` on its module (a source checkout; a colcon install keeps its scripts in
    ``lib/genpolicy_ros``, where ``ros2 run`` finds them).
    """
    script = BIN / executable
    if script.is_file():
        return [str(script)]
    if executable in NODE_MODULES:
        return [sys.executable, '-m', NODE_MODULES[executable]]
    raise FileNotFoundError(f'no console script {script} and no module known for {executable}')


class NodeProcess:
    """One node in its own process group, started from its console script."""

    def __init__(self, name: str, script: str, args: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.script = script
        self.args = list(args)
        self.log_path = Path(log_dir) / f'{name}.log'
        self.proc: Optional[subprocess.Popen] = None
        self.env: Dict[str, str] = {}        # added to the inherited environment
        self.starts = 0

    def start(self) -> None:
        """Start the process (a new session, so its children die with it)."""
        if self.alive:
            raise RuntimeError(f'{self.name} is already running')
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, 'ab')
        log.write(f'\n===== start {self.starts} at {time.time():.3f}\n'.encode())
        log.flush()
        cmd = node_command(self.script) + ['--ros-args', '-r', f'__node:={self.name}'
                                           ] + self.args
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid()), **self.env}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env)
        log.close()
        self.starts += 1

    @property
    def pid(self) -> int:
        """Return the process id (the process group id too)."""
        assert self.proc is not None, f'{self.name} never started'
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        """Return the exit status once the process ended (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's main process only (as a crash or a stall would hit it)."""
        if self.alive:
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the node process, then anything it left in its group (render workers)."""
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10.0)
        self._kill_group()

    def interrupt(self) -> None:
        """Ctrl-C the whole group without waiting (stop several nodes in parallel)."""
        if not self.alive:
            return
        try:
            os.killpg(self.pid, signal.SIGCONT)
            os.killpg(self.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ctrl-C the group, then SIGKILL whatever is left after ``timeout_s``."""
        if self.proc is None:
            return
        self.interrupt()
        self.wait_or_kill(timeout_s)

    def wait_or_kill(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the process to end, then SIGKILL it and its group.

        One Ctrl-C only: a second one would interrupt the node's own clean-up.
        """
        if self.proc is None:
            return
        if self.alive:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if self.alive:
            self.proc.kill()
            self.proc.wait(timeout=10.0)
        self._kill_group()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the node's log."""
        try:
            text = self.log_path.read_text(errors='replace').splitlines()
        except FileNotFoundError:
            return ''
        return '\n'.join(text[-lines:])


def stop_all(procs: Sequence[NodeProcess], timeout_s: float = 10.0) -> None:
    """Ctrl-C every process at once, then wait for each (SIGKILL after ``timeout_s``)."""
    for proc in procs:
        proc.interrupt()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.wait_or_kill(max(0.1, deadline - time.monotonic()))
