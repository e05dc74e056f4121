"""SpinThread: spins an executor until stopped, and stops cleanly while callbacks keep coming.

``Thread(target=executor.spin)`` ended by ``executor.shutdown()`` can fail in the spinning
thread (rclpy's shutdown destroys the guard condition without waiting for it); the CI log of
the in-process bringup showed that failure. These tests stop busy executors many times and
require that no exception reaches any thread.
"""

import threading
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Int32

from genpolicy_ros.nodes.runner import SpinThread, stop_spinning_nodes


def _busy_graph(context: Context):
    """Return a node with a 1 kHz timer publishing to itself, and its received count."""
    node = rclpy.create_node('spin_thread_probe', context=context)
    received = []
    pub = node.create_publisher(Int32, 'spin_thread_probe', 10)
    node.create_subscription(Int32, 'spin_thread_probe', lambda m: received.append(m.data), 10)
    node.create_timer(0.001, lambda: pub.publish(Int32(data=len(received))))
    return node, received


def test_spin_thread_runs_callbacks_and_stops_without_an_exception_in_any_thread():
    errors = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(10):
            context = Context()
            rclpy.init(context=context)
            node, received = _busy_graph(context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            thread = SpinThread(executor, name='probe')
            thread.start()
            deadline = time.monotonic() + 5.0
            while len(received) < 20 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(received) >= 20, 'the spinning thread ran no callbacks'
            stop_spinning_nodes([executor], [thread], [node], context)
            assert not thread.is_alive()
            assert not context.ok()
    finally:
        threading.excepthook = previous
    assert errors == []


def _idle_spin(name: str):
    """Return ``(context, node, executor, thread)``: a node without timers, spinning."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = SpinThread(executor)
    thread.start()
    return context, node, executor, thread


def test_stop_returns_promptly_on_an_idle_executor():
    # An executor waiting with nothing to do (no timer, no message) is woken by stop().
    context, node, executor, thread = _idle_spin('spin_thread_idle')
    time.sleep(0.2)
    assert thread.stop(timeout_s=5.0)   # spins without a timeout: only the wake ends it
    stop_spinning_nodes([executor], [thread], [node], context)


def test_the_thread_ends_when_its_context_shuts_down():
    context, node, executor, thread = _idle_spin('spin_thread_ctx')
    rclpy.try_shutdown(context=context)
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()


def test_stopping_a_thread_that_never_started_is_harmless():
    # A bring-up that fails between creating its threads and starting them still shuts down.
    context = Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    thread = SpinThread(executor)
    assert thread.stop()
    stop_spinning_nodes([executor], [thread], [], context)
