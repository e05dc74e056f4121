"""Start and stop franka-sim, the FCI protocol simulator, for tests, benchmarks and trials.

franka-sim speaks libfranka's wire protocol on 127.0.0.1 (TCP 1337, 1 kHz UDP state; gripper
on TCP 1338), so the Franka backend is tested against the real protocol, not a fake. It pins
numpy 1.26 and MuJoCo < 3.3 and therefore lives in a virtualenv of its own
(``.venv-franka-sim``, made by ``scripts/setup_venv.sh``). Its arm is the project's own
``urdf/panda.urdf``, converted to MJCF by ``franka_sim_mjcf.py`` inside that virtualenv.

Port 1337 is fixed by libfranka, so one server per machine (or network namespace): starting
one takes a machine-wide lock (waiting for another test session to finish) and refuses to start
when the ports are taken. The server runs in its own process group, which :meth:`stop` signals
and waits for until no process of it is left.

``genpolicy-franka-sim`` runs one in the foreground, e.g. to try ``real_launch.py``::

    genpolicy-franka-sim &
    ros2 launch genpolicy_ros real_launch.py robot_ip:=127.0.0.1 realtime_config:=ignore
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from genpolicy_ros.paths import urdf_path

FCI_PORT = 1337
GRIPPER_PORT = 1338
# Abort motions the way the real FCI does: lost cycles, discontinuities, limits.
DEFAULT_ARGS = ('--enforce-comm-constraints', '--enforce-motion-limits')
LOCK_PATH = Path(tempfile.gettempdir()) / f'genpolicy-franka-sim-{FCI_PORT}.lock'
VENV_ENV = 'GENPOLICY_FRANKA_SIM_VENV'
MJCF_SCRIPT = Path(__file__).resolve().parent / 'franka_sim_mjcf.py'


class FrankaSimUnavailable(RuntimeError):
    """franka-sim is not installed (its virtualenv is missing or incomplete)."""


class FrankaSimError(RuntimeError):
    """The server could not be started (port taken, crashed, never ready)."""


def default_venv() -> Path:
    """Return ``$GENPOLICY_FRANKA_SIM_VENV`` or ``.venv-franka-sim`` at the repository root."""
    override = os.environ.get(VENV_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / '.venv-franka-sim'


def port_in_use(port: int, host: str = '127.0.0.1') -> bool:
    """Return whether something already listens on TCP ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _fifo_permitted() -> bool:
    """Return whether this process may start SCHED_FIFO processes (root or CAP_SYS_NICE)."""
    try:
        return subprocess.run(['chrt', '-f', '1', 'true'], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class FrankaSimServer:
    """One franka-sim server on 127.0.0.1, started and stopped as a process group.

    ``rt_priority`` > 0 runs it with SCHED_FIFO at that priority when permitted (else with
    ``nice``), as the robot's own control runs: see ``control_process_rt_priority`` in
    config/driver.yaml for the driver's side.
    """

    def __init__(self, venv: Optional[Path] = None, workdir: Optional[Path] = None,
                 args: Sequence[str] = DEFAULT_ARGS, gripper: bool = True, rt_priority: int = 20,
                 nice: int = -10,
                 startup_timeout_s: float = 60.0, lock_timeout_s: float = 900.0) -> None:
        self.venv = Path(venv) if venv is not None else default_venv()
        self.workdir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix='genpolicy-franka-sim-'))
        self.args = list(args) + ([] if gripper else ['--no-gripper'])
        self.gripper = gripper
        self.rt_priority = rt_priority
        self.nice = nice
        self.startup_timeout_s = startup_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.process: Optional[subprocess.Popen] = None
        self.mjcf_path = self.workdir / 'panda_fr3_mjcf.xml'
        self.log_path = self.workdir / 'franka-sim.log'
        self._lock_fd: Optional[int] = None
        self.starts = 0

    # ------------------------------------------------------------------ set-up
    def check_installed(self) -> None:
        """Raise FrankaSimUnavailable unless the virtualenv has the server and its check."""
        for exe in ('python', 'run-franka-sim-server', 'franka-sim-check'):
            if not (self.venv / 'bin' / exe).exists():
                raise FrankaSimUnavailable(
                    f'{self.venv / "bin" / exe} is missing: scripts/setup_venv.sh creates the '
                    f'franka-sim virtualenv (see {self.venv}.log if it failed)')

    def write_mjcf(self) -> Path:
        """Convert ``urdf/panda.urdf`` into the MJCF the server simulates; return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(self.venv / 'bin' / 'python'), str(MJCF_SCRIPT),
                               str(urdf_path('panda.urdf')), str(self.mjcf_path)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise FrankaSimError(f'MJCF conversion failed: {proc.stdout}{proc.stderr}')
        return self.mjcf_path

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o666)
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise FrankaSimError(
                        f'another session has held {LOCK_PATH} (the FCI port {FCI_PORT}) for '
                        f'{self.lock_timeout_s:.0f} s')
                time.sleep(0.5)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """Start the server and wait until it serves the FCI (``franka-sim-check``)."""
        if self.running:
            raise FrankaSimError(f'this server is already running (pid {self.pid})')
        self.check_installed()
        self._acquire_lock()
        try:
            ports = [FCI_PORT] + ([GRIPPER_PORT] if self.gripper else [])
            busy = [p for p in ports if port_in_use(p)]
            if busy:
                raise FrankaSimError(f'TCP port(s) {busy} already in use: another FCI server '
                                     '(franka-sim?) runs on this machine; stop it first')
            if not self.mjcf_path.exists():
                self.write_mjcf()
            env = dict(os.environ, FR3_MJCF=str(self.mjcf_path))
            cmd = [str(self.venv / 'bin' / 'run-franka-sim-server'), *self.args]
            if self.rt_priority and _fifo_permitted():
                # Real-time scheduling, as the FCI has it: on a loaded machine the simulated
                # robot's 1 kHz threads otherwise stall for tens of milliseconds.
                cmd = ['chrt', '-f', str(self.rt_priority), *cmd]
            elif self.nice:
                # nice(1) runs the command anyway (at normal priority) when not permitted.
                cmd = ['nice', '-n', str(self.nice), *cmd]
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, 'ab') as log:
                # A file, not a pipe: an unread pipe would block the server's 1 kHz threads.
                self.process = subprocess.Popen(cmd, env=env, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            self.starts += 1
            self._wait_ready(log_offset)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log_offset: int = 0) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last = ''
        while True:
            if self._served_a_client(log_offset):
                return
            if self.process.poll() is not None:
                raise FrankaSimError(f'franka-sim exited with code {self.process.returncode}:\n'
                                     f'{self.log_tail()}')
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrankaSimError(f'franka-sim not ready within {self.startup_timeout_s} s '
                                     f'({last}):\n{self.log_tail()}')
            check = subprocess.run(
                [str(self.venv / 'bin' / 'franka-sim-check'), '--timeout',
                 f'{min(5.0, remaining):.1f}'], capture_output=True, text=True)
            if check.returncode == 0:
                return
            last = (check.stdout + check.stderr).strip()[-300:]
            time.sleep(0.2)

    def _served_a_client(self, log_offset: int) -> bool:
        # The FCI serves one client: when a client (a driver reconnecting after a restart) got
        # there before the readiness probe, the probe cannot connect; the server's log of a
        # completed handshake shows it is serving all the same.
        try:
            with open(self.log_path, 'rb') as log:
                log.seek(log_offset)
                return b'Sent connect response' in log.read()
        except OSError:
            return False

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server's process group (SIGINT, SIGTERM, SIGKILL) and wait until it is empty.

        SIGINT is franka-sim's clean shutdown, but a process started in the background of a
        non-interactive shell inherits SIGINT ignored; SIGTERM ends it either way.
        """
        proc, self.process = self.process, None
        try:
            if proc is not None:
                for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 2.0)):
                    self._signal(proc.pid, sig)
                    try:
                        proc.wait(wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                self._signal(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
                deadline = time.monotonic() + 5.0
                while self._group_alive(proc.pid) and time.monotonic() < deadline:
                    self._signal(proc.pid, signal.SIGKILL)
                    time.sleep(0.05)
        finally:
            self._release_lock()

    def restart(self) -> None:
        """Stop and start again (the simulated arm returns to its initial pose)."""
        self.stop()
        self.start()

    @property
    def pid(self) -> Optional[int]:
        """Return the server's process id, also its process group id; None when stopped."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Return whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the server's log."""
        try:
            return self.log_path.read_text(errors='replace')[-chars:]
        except OSError:
            return '<no log>'

    @staticmethod
    def _signal(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __enter__(self) -> 'FrankaSimServer':
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Optional[List[str]] = None) -> int:
    """Run franka-sim in the foreground until Ctrl-C (the ``genpolicy-franka-sim`` command)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--venv', type=Path, default=None,
                        help=f'franka-sim virtualenv (default: ${VENV_ENV} or .venv-franka-sim)')
    parser.add_argument('--permissive', action='store_true',
                        help='do not enforce communication constraints and motion limits')
    parser.add_argument('--no-gripper', action='store_true', help='no gripper server on 1338')
    opts = parser.parse_args(argv)

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    # Ctrl-C or a plain kill stops the server with us (SIGINT may arrive ignored when started
    # in the background of a script).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    server = FrankaSimServer(venv=opts.venv, args=() if opts.permissive else DEFAULT_ARGS,
                             gripper=not opts.no_gripper)
    try:
        server.start()
    except (FrankaSimUnavailable, FrankaSimError) as exc:
        print(f'genpolicy-franka-sim: {exc}', file=sys.stderr)
        return 1
    print(f'franka-sim serving the FCI on 127.0.0.1:{FCI_PORT} (pid {server.pid}, log '
          f'{server.log_path}); Ctrl-C stops it', flush=True)
    try:
        while server.running:
            time.sleep(0.5)
        print(f'franka-sim exited:\n{server.log_tail()}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
