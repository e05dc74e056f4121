"""A periodic loop on its own thread, at real-time priority where the system permits it.

An rclpy timer runs on the executor thread, after whatever callback is running (a camera frame
checked by the monitor takes ~3 ms): its period jitters by that much. A thread of its own that
sleeps to absolute deadlines, scheduled SCHED_FIFO, wakes on time; it then needs the GIL, which
another thread of the process gives up within the interpreter's switch interval, so that is
shortened too. Without the privilege (CAP_SYS_NICE or an rtprio limit) the loop runs at normal
priority and :attr:`PeriodicThread.realtime_error` says why.
"""

import os
import sys
import threading
import time
from typing import Callable, Optional

# How long another thread may keep the GIL once the loop asks for it (CPython default 5 ms).
GIL_SWITCH_INTERVAL_S = 0.0005


def realtime_thread(priority: int, tid: int = 0) -> Optional[str]:
    """Schedule thread ``tid`` (0: the calling one) SCHED_FIFO at ``priority``; None or why not."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:   # no privilege, or not Linux
        return f'SCHED_FIFO {priority} refused: {exc}'
    _shorten_gil_switch()
    return None


def realtime_process(priority: int) -> Optional[str]:
    """Schedule every thread of this process SCHED_FIFO at ``priority``; None or why not.

    Threads started later inherit it. A real-time loop waiting for the GIL held by a thread
    of normal priority waits until the scheduler gives that thread a core again (on a busy
    machine, milliseconds): so the whole process, not only the loop, runs real-time.
    """
    if priority <= 0:
        return None
    for tid in os.listdir('/proc/self/task'):
        refused = realtime_thread(priority, int(tid))
        if refused:
            return refused
    return None


def _shorten_gil_switch() -> None:
    # Another thread of the process gives up the GIL this soon once a real-time one asks.
    if sys.getswitchinterval() > GIL_SWITCH_INTERVAL_S:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


class PeriodicThread:
    """Call ``step()`` every ``period_s`` on a daemon thread until :meth:`stop`.

    ``priority`` 1-99 asks for SCHED_FIFO at that priority (0: normal scheduling). A step that
    overran its period is not made up for with a burst: the next deadline starts from now.
    An exception in ``step`` goes to ``on_error`` and the loop goes on.
    """

    def __init__(self, name: str, period_s: float, step: Callable[[], None], priority: int,
                 on_error: Callable[[BaseException], None]) -> None:
        if period_s <= 0.0:
            raise ValueError(f'period must be > 0 s, got {period_s}')
        if not 0 <= priority <= 99:
            raise ValueError(f'real-time priority must be 0 (off) to 99, got {priority}')
        self.period_s = float(period_s)
        self.priority = int(priority)
        self._step = step
        self._on_error = on_error
        self._stop = threading.Event()
        self._started = threading.Event()
        self.realtime = False                  # SCHED_FIFO granted
        self.realtime_error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> 'PeriodicThread':
        """Start the loop; return once it has set its scheduling (self, for chaining)."""
        self._thread.start()
        self._started.wait(timeout=5.0)
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the loop and wait up to ``timeout_s`` for its current step to finish."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=timeout_s)

    def _set_priority(self) -> None:
        if self.priority <= 0:
            return
        self.realtime_error = realtime_thread(self.priority)
        self.realtime = self.realtime_error is None

    def _run(self) -> None:
        self._set_priority()
        self._started.set()
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += self.period_s
            delay = deadline - time.monotonic()
            if delay > 0.0:
                time.sleep(delay)   # clock_nanosleep: finer than an Event's timed wait
            else:
                deadline = time.monotonic()
            if self._stop.is_set():
                break
            try:
                self._step()
            except Exception as exc:  # the loop must outlive one bad step
                self._on_error(exc)
