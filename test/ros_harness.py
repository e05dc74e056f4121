"""Run real rclpy nodes in-process for tests: an executor thread plus a probe node.

Tests publish and subscribe through real DDS (loopback, private domain id from conftest);
nothing here fakes ROS.
"""

from contextlib import contextmanager
import threading
import time
from typing import Callable, Dict, Iterator, List

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from genpolicy_ros.nodes.dds import choose_dds_profile
from genpolicy_ros.nodes.runner import SpinThread, stop_spinning_nodes


class Probe(Node):
    """A node that records every message on the topics it is asked to watch."""

    def __init__(self, context: Context):
        super().__init__('test_probe', context=context)
        self.messages: Dict[str, List[object]] = {}
        self.arrival: Dict[str, List[float]] = {}
        self._lock = threading.Lock()
        self._kept: Dict[tuple, object] = {}

    def watch(self, msg_type, topic: str, qos: QoSProfile | int = 10) -> None:
        """Start recording ``topic``."""
        self.messages.setdefault(topic, [])
        self.arrival.setdefault(topic, [])

        def cb(msg, topic=topic):
            with self._lock:
                self.messages[topic].append(msg)
                self.arrival[topic].append(time.monotonic())
        self.create_subscription(msg_type, topic, cb, qos)

    def client(self, srv_type, name: str):
        """Return a service client for ``name``, created on first use and kept.

        Kept, not destroyed after a call: destroying an entity from the test thread while the
        probe's executor builds its wait set in another thread killed that executor once
        (rclpy ``InvalidHandle``), and every later service response went unheard.
        """
        key = ('client', srv_type, name)
        if key not in self._kept:
            self._kept[key] = self.create_client(srv_type, name)
        return self._kept[key]

    def publisher(self, msg_type, topic: str, qos: QoSProfile | int = 10):
        """Return a publisher on ``topic``, created on first use and kept (see :meth:`client`)."""
        key = ('publisher', msg_type, topic)
        if key not in self._kept:
            self._kept[key] = self.create_publisher(msg_type, topic, qos)
        return self._kept[key]

    def count(self, topic: str) -> int:
        """Messages received on ``topic`` so far."""
        with self._lock:
            return len(self.messages.get(topic, []))

    def last(self, topic: str):
        """Most recent message on ``topic`` (None before the first)."""
        with self._lock:
            msgs = self.messages.get(topic, [])
            return msgs[-1] if msgs else None

    def clear(self, topic: str) -> None:
        """Forget what ``topic`` received so far."""
        with self._lock:
            self.messages[topic] = []
            self.arrival[topic] = []


@contextmanager
def ros_graph(*factories: Callable[[Context], Node]) -> Iterator[tuple]:
    """Create a private rclpy context, build nodes with ``factories``, spin each in a thread.

    One single-threaded executor per node, as genpolicy-sim does: rclpy's multi-threaded
    executor busy-waits while a ready timer's callback is still running, which starved every
    other thread of the process (measured: a 100 Hz publisher fell to 8 Hz).
    Yields ``(context, probe, nodes)``; everything is destroyed on exit.
    """
    choose_dds_profile()   # as every process of the stack does
    context = Context()
    rclpy.init(context=context)
    probe = Probe(context)
    nodes = [f(context) for f in factories]
    executors, threads = [], []
    for n in [probe, *nodes]:
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(n)
        executors.append(executor)
        threads.append(SpinThread(executor))
    for thread in threads:
        thread.start()
    try:
        yield context, probe, nodes
    finally:
        stop_spinning_nodes(executors, threads, [probe, *nodes], context)


def wait_for(predicate: Callable[[], bool], timeout_s: float, period_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period_s)
    return predicate()
