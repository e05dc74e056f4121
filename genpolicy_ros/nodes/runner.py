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


def stop_spinning_nodes(executors: Iterable[Executor], threads: Iterable[threading.Thread],
                        nodes: Iterable[Node], context: Optional[Context]) -> None:
    """Stop executors, join their spin threads, destroy the nodes, shut the context down.

    In that order, so that no callback outlives its node.
    """
    for executor in executors:
        executor.shutdown(timeout_sec=2.0)
    for thread in threads:
        thread.join(timeout=2.0)
    for node in nodes:
        node.destroy_node()
    if context is not None:
        rclpy.try_shutdown(context=context)
