"""Run one node in its own process until Ctrl-C; stop nodes spun on threads of one process.

``run_node`` is what ``ros2 run`` and launch files start.
"""

import threading
from typing import Callable, Iterable, List, Optional

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future

from genpolicy_ros.nodes.dds import choose_dds_profile
from genpolicy_ros.nodes.process import die_with_parent


def run_node(factory: Callable[[], Node], args: Optional[List[str]] = None) -> None:
    """Init rclpy, build the node, spin it on a single-threaded executor, clean up on exit.

    Single-threaded on purpose: rclpy's multi-threaded executor busy-waits while a ready
    timer's callback still runs (the filter's 100 Hz step), starving the rest of the process.
    Slow work has its own threads (policy inference) or processes (camera rendering).
    Started by :class:`~genpolicy_ros.nodes.process.NodeProcess` (``genpolicy-sim``), the node
    ends (SIGTERM, a clean shutdown) when the process that started it dies.
    """
    die_with_parent()
    choose_dds_profile()
    rclpy.init(args=args)
    node = factory()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        # Ctrl-C can invalidate the context while the executor builds its wait set (a known
        # rclpy shutdown race): that is a shutdown, not a crash. Anything else is re-raised.
        if rclpy.ok():
            raise
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


class SpinThread(threading.Thread):
    """A daemon thread spinning ``executor`` until :meth:`stop` (or its context shuts down).

    Why not ``Thread(target=executor.spin)``: that thread can only be ended by
    ``executor.shutdown()``, which destroys the executor's guard condition without waiting
    (rclpy's shutdown does not wait for the spinning thread), and a spin iteration already
    past its wait then fails in its task handler (``'NoneType' object has no attribute
    'trigger'``). This thread spins until a future of its own is done, so :meth:`stop` ends
    the loop (waking the executor's wait) before anyone shuts the executor down.
    """

    def __init__(self, executor: Executor, name: Optional[str] = None) -> None:
        super().__init__(name=name, daemon=True)
        self.executor = executor
        self._stopped: Future = Future()

    def run(self) -> None:
        """Spin until stopped; a shutdown of the context ends the loop too."""
        try:
            self.executor.spin_until_future_complete(self._stopped)
        except ExternalShutdownException:
            pass

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Leave the spin loop after the current callback; return whether the thread ended."""
        if not self._stopped.done():
            self._stopped.set_result(None)   # its done-callback wakes the executor's wait
        if self.ident is None:
            return True                      # never started (a bring-up that failed early)
        self.join(timeout=timeout_s)
        return not self.is_alive()


def stop_spinning_nodes(executors: Iterable[Executor], threads: Iterable[SpinThread],
                        nodes: Iterable[Node], context: Optional[Context]) -> None:
    """Stop the spin threads, shut the executors down, destroy the nodes and the context.

    In that order, so that no callback outlives its node (see :class:`SpinThread`).
    """
    for thread in threads:
        thread.stop()
    for executor in executors:
        executor.shutdown(timeout_sec=2.0)
    for node in nodes:
        node.destroy_node()
    if context is not None:
        rclpy.try_shutdown(context=context)
