"""The ROS side of the operator view: subscriptions and service calls feeding an OperatorState.

Callbacks run in whatever executor spins ``node`` (rqt's, or the standalone window's thread)
and only update the model under its lock; they never touch Qt. Service calls are asynchronous:
:meth:`OperatorBridge.request` returns at once and the reply lands in the model when it comes.
"""

import threading
from typing import Callable, Dict, List, Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from rclpy.client import Client
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from genpolicy_ros.rqt.operator_state import OperatorState, parse_statuses

# Contract names (DESIGN.md); remap them like any ROS name if a deployment differs.
PROPOSED_TWIST = '/genpolicy/filter/proposed_twist'
SAFE_TWIST = '/genpolicy/filter/safe_twist'
DIAGNOSTICS = '/diagnostics'
MODE = '/genpolicy/monitor/mode'
SCORE = '/genpolicy/monitor/score'
THRESHOLD = '/genpolicy/monitor/threshold'
SERVICES = {'hold': '/monitor_node/hold', 'reset': '/monitor_node/reset'}


class OperatorBridge:
    """Subscribe to the operator topics on ``node`` and call the monitor's services."""

    def __init__(self, node: Node, state: OperatorState, qos_depth: int,
                 service_timeout_s: float):
        self.node = node
        self.state = state
        self.service_timeout_s = float(service_timeout_s)
        qos = QoSProfile(depth=int(qos_depth))
        self._subs = [
            node.create_subscription(TwistStamped, PROPOSED_TWIST,
                                     self._twist_cb('proposed'), qos),
            node.create_subscription(TwistStamped, SAFE_TWIST, self._twist_cb('safe'), qos),
            node.create_subscription(DiagnosticArray, DIAGNOSTICS, self._diag_cb, qos),
            node.create_subscription(String, MODE, self._mode_cb, qos),
            node.create_subscription(Float64, SCORE,
                                     lambda m: state.on_score(self.now_s(), m.data), qos),
            node.create_subscription(Float64, THRESHOLD,
                                     lambda m: state.on_threshold(self.now_s(), m.data), qos),
        ]
        self._clients: Dict[str, Client] = {
            key: node.create_client(Trigger, name) for key, name in SERVICES.items()}
        self._futures: Dict[str, object] = {}
        self._calls_lock = threading.Lock()  # Qt thread requests, executor thread replies

    def now_s(self) -> float:
        """Return the node's clock in seconds (sim time when ``use_sim_time`` is set)."""
        return self.node.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ topics
    def _twist_cb(self, which: str) -> Callable[[TwistStamped], None]:
        def cb(msg: TwistStamped) -> None:
            lin = msg.twist.linear
            self.state.on_twist(which, self.now_s(), (lin.x, lin.y, lin.z))
        return cb

    def _diag_cb(self, msg: DiagnosticArray) -> None:
        self.state.on_diagnostics(self.now_s(), parse_statuses(msg))

    def _mode_cb(self, msg: String) -> None:
        self.state.on_mode(self.now_s(), msg.data)

    # ------------------------------------------------------------------ services
    def request(self, service: str) -> bool:
        """Call ``hold`` or ``reset`` without blocking; return False if it could not be sent."""
        client = self._clients[service]
        now = self.now_s()
        with self._calls_lock:
            if service in self._futures:
                self.state.on_service_reply(now, service, False, 'a call is already pending')
                return False
            if not client.service_is_ready():
                self.state.on_service_reply(now, service, False,
                                            f'service {SERVICES[service]} is not available')
                return False
            self.state.on_service_request(now, service)
            future = client.call_async(Trigger.Request())
            self._futures[service] = future
        future.add_done_callback(lambda f, s=service: self._done(s, f))
        return True

    def _done(self, service: str, future) -> None:
        with self._calls_lock:
            if self._futures.get(service) is not future:
                return  # already expired by poll()
            self._futures.pop(service, None)
        exc = future.exception()
        if exc is not None:
            self.state.on_service_reply(self.now_s(), service, False, f'call failed: {exc}')
            return
        reply = future.result()
        self.state.on_service_reply(self.now_s(), service, bool(reply.success), reply.message)

    def poll(self) -> List[str]:
        """Expire calls older than the timeout (call from the redraw timer); return expired."""
        expired = []
        now = self.now_s()
        with self._calls_lock:
            calls = list(self._futures.items())
        for service, future in calls:
            since: Optional[float] = self.state.pending_since(service)
            if since is not None and now - since > self.service_timeout_s:
                with self._calls_lock:
                    if self._futures.pop(service, None) is None:
                        continue  # the reply won the race
                self._clients[service].remove_pending_request(future)
                self.state.on_service_reply(
                    now, service, False, f'no reply within {self.service_timeout_s:.1f} s')
                expired.append(service)
        return expired

    def destroy(self) -> None:
        """Drop subscriptions and clients (the node itself belongs to the caller)."""
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        for client in self._clients.values():
            self.node.destroy_client(client)
        self._subs, self._clients, self._futures = [], {}, {}
