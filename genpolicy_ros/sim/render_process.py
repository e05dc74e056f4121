"""Render the sim camera in a separate process, so rendering does not stall the caller's process.

PyBullet holds the Python GIL for the whole ~20-25 ms of a TinyRenderer frame, freezing every
thread of the process that renders. A :class:`CameraProcess` owns a second
:class:`~genpolicy_ros.sim.world.PandaWorld` (DIRECT, same ``SimConfig``) in a child process
('spawn' start method, daemon) that is only ever used for rendering, never stepped. Each
request carries a :class:`~genpolicy_ros.sim.world.RenderSnapshot` of the caller's world; the
child applies it and renders with :meth:`PandaWorld.render`, so the image is byte-identical to
rendering the caller's world. The caller waits on a pipe, which releases the GIL.

:class:`FrameRenderer` runs the requests on a background thread, newest snapshot first, and
restarts a dead render process (what the sim node uses).

Failure policy: if the child dies (or does not answer within ``render_timeout_s``, in which
case it is killed), :meth:`CameraProcess.render` raises ``RuntimeError`` and keeps raising
until :meth:`CameraProcess.restart` starts a fresh child; a snapshot the child cannot apply
also raises ``RuntimeError`` but leaves the child running.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from typing import Callable, Optional

import numpy as np

from genpolicy_ros.sim.config import SimConfig
from genpolicy_ros.sim.world import PandaWorld, RenderSnapshot

_READY, _IMAGE, _ERROR = 'ready', 'image', 'error'
# Default CPU niceness increment of the render process. 0 = same priority as the caller. On a
# CPU-saturated machine a positive value trades frame rate for the caller's loop: measured in
# genpolicy-sim on 2 cores with one busy, nice 0 gave /joint_states ~160-205 Hz with frames at
# ~13 Hz, nice 5 ~220-230 Hz but frames at ~8-10 Hz (below the policy's 10 Hz decisions).
RENDER_NICE = 0


def _serve(conn, config: SimConfig, nice: int) -> None:
    """Child process: build the render world, then answer snapshots with images until EOF."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(nice)
    try:
        world = PandaWorld(config, gui=False)
    except Exception as exc:  # reported to the parent, which raises it as a RuntimeError
        conn.send((_ERROR, f'could not build the render world: {type(exc).__name__}: {exc}'))
        return
    conn.send((_READY, None))
    try:
        while True:
            try:
                snapshot = conn.recv()
            except EOFError:  # parent closed the pipe or died
                break
            if snapshot is None:
                break
            try:
                world.apply_render_snapshot(snapshot)
                conn.send((_IMAGE, world.render()))
            except Exception as exc:  # a bad snapshot must not kill the renderer
                conn.send((_ERROR, f'{type(exc).__name__}: {exc}'))
    finally:
        world.close()


class CameraProcess:
    """Camera renderer in a child process: :meth:`render` a snapshot, :meth:`close` when done.

    The child starts in the background on construction; the first :meth:`render` waits up to
    ``start_timeout_s`` for it to be ready. It runs ``nice`` levels below its parent
    (``RENDER_NICE``). Thread-safe (one request at a time). Usable as a context manager.

    With the 'spawn' start method the child re-imports the parent's ``__main__`` module: a script
    that creates a ``CameraProcess`` (or a sim node) must do so under
    ``if __name__ == '__main__':`` (console scripts, ``ros2 run`` and pytest do).
    """

    def __init__(self, config: Optional[SimConfig] = None, start_timeout_s: float = 60.0,
                 render_timeout_s: float = 5.0, nice: int = RENDER_NICE) -> None:
        self.config = config if config is not None else SimConfig.load()
        self.nice = int(nice)
        self.start_timeout_s = float(start_timeout_s)
        self.render_timeout_s = float(render_timeout_s)
        self._mp = multiprocessing.get_context('spawn')
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None
        self._failure = ''
        with self._lock:
            self._start()

    # ------------------------------------------------------------------ process management
    def _start(self) -> None:
        parent, child = self._mp.Pipe()
        proc = self._mp.Process(target=_serve, args=(child, self.config, self.nice),
                                name='genpolicy-camera', daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self._ready = False
        self._started = time.monotonic()
        self._failure = ''

    def _stop(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        if proc is not None:
            proc.join(timeout=1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1.0)
        if conn is not None:
            conn.close()

    def _fail(self, reason: str, detail: str = '') -> RuntimeError:
        """Kill the child, remember why, return the error to raise."""
        proc = self._proc
        self._stop()
        code = proc.exitcode if proc is not None else None
        self._failure = (f'camera render process {reason} (exit code {code}{detail}); '
                         'restart() starts a new one')
        return RuntimeError(self._failure)

    def _receive(self, timeout_s: float):
        if not self._conn.poll(max(timeout_s, 0.0)):
            raise self._fail(f'did not answer within {timeout_s:.1f} s')
        return self._conn.recv()

    # ------------------------------------------------------------------ API
    @property
    def pid(self) -> Optional[int]:
        """Process id of the child (None once closed or failed)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def alive(self) -> bool:
        """Whether the child is running (it may still be starting up)."""
        proc = self._proc
        return proc is not None and proc.is_alive()

    @property
    def failed(self) -> bool:
        """Whether a request found the child dead or unresponsive (until :meth:`restart`)."""
        return self._conn is None and bool(self._failure)

    def render(self, snapshot: RenderSnapshot) -> np.ndarray:
        """Render ``snapshot``; returns (height, width, 3) uint8 RGB like ``PandaWorld.render``.

        Raises RuntimeError if the child is dead, closed, too slow or cannot render it.
        """
        with self._lock:
            if self._conn is None:
                raise RuntimeError(self._failure or 'camera render process is closed')
            try:
                if not self._ready:
                    left = self.start_timeout_s - (time.monotonic() - self._started)
                    kind, payload = self._receive(left)
                    if kind != _READY:
                        raise self._fail(f'failed to start: {payload}')
                    self._ready = True
                self._conn.send(snapshot)
                kind, payload = self._receive(self.render_timeout_s)
            except (EOFError, OSError) as exc:
                raise self._fail('died', f', {type(exc).__name__}') from exc
        if kind != _IMAGE:
            raise RuntimeError(f'camera render process could not render: {payload}')
        return payload

    def restart(self) -> None:
        """Stop the child (if any) and start a fresh one."""
        with self._lock:
            self._stop()
            self._start()

    def close(self) -> None:
        """Stop the child (idempotent)."""
        with self._lock:
            self._stop()
            self._failure = ''

    def __enter__(self) -> 'CameraProcess':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameRenderer:
    """Render the newest submitted snapshot on a background thread with a :class:`CameraProcess`.

    :meth:`submit` never blocks: a snapshot still waiting when a newer one arrives is dropped.
    The thread waits on the render process (GIL released) and hands each image to
    ``on_frame(image, tag)``, or a ``RuntimeError`` to ``on_error(exc)``. The snapshot that
    finds the render process dead is reported that way; it is restarted for a later snapshot,
    at most once per ``restart_period_s`` (snapshots in between are dropped). Being a plain
    thread, it keeps the caller's executor free whatever executor spins the caller.
    """

    def __init__(self, config: SimConfig, on_frame: Callable[[np.ndarray, object], None],
                 on_error: Callable[[RuntimeError], None], restart_period_s: float = 1.0,
                 **camera_kwargs) -> None:
        self.camera = CameraProcess(config, **camera_kwargs)
        self.restart_period_s = float(restart_period_s)
        self._on_frame, self._on_error = on_frame, on_error
        self._cond = threading.Condition()
        self._pending: Optional[tuple] = None
        self._closed = False
        self._restart_at = 0.0
        self._thread = threading.Thread(target=self._run, name='camera-render', daemon=True)
        self._thread.start()

    def submit(self, snapshot: RenderSnapshot, tag: object = None) -> None:
        """Queue ``snapshot`` (replacing one not yet started); ``tag`` comes back with it."""
        with self._cond:
            self._pending = (snapshot, tag)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                (snapshot, tag), self._pending = self._pending, None
            try:
                if self.camera.failed:
                    if time.monotonic() < self._restart_at:
                        continue
                    self._restart_at = time.monotonic() + self.restart_period_s
                    self.camera.restart()
                image = self.camera.render(snapshot)
            except RuntimeError as exc:
                if not self._closed:
                    self._on_error(exc)
                continue
            if not self._closed:
                self._on_frame(image, tag)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and the render process (idempotent); no callback runs afterwards."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=timeout_s)
        self.camera.close()
