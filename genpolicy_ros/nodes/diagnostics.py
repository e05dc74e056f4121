"""Small helpers to report on ``/diagnostics`` without ``diagnostic_updater``.

``diagnostic_updater`` is not available as a wheel; the message is simple enough to fill by
hand, and every node reports the same way: one status per concern, named ``<node>: <concern>``.
"""

from typing import Dict, Iterable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

# Levels as ints (the message stores them as a single byte).
OK, WARN, ERROR, STALE = 0, 1, 2, 3


def status(node_name: str, concern: str, level: int, message: str,
           values: Optional[Dict[str, object]] = None, hardware_id: str = 'genpolicy_ros'
           ) -> DiagnosticStatus:
    """Build one ``DiagnosticStatus`` (``level`` one of OK/WARN/ERROR/STALE)."""
    st = DiagnosticStatus()
    st.level = bytes([int(level)])
    st.name = f'{node_name}: {concern}'
    st.message = message
    st.hardware_id = hardware_id
    st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in (values or {}).items()]
    return st


def array(stamp, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    """Wrap statuses into a ``DiagnosticArray`` stamped ``stamp``."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f'{v:.6g}'
    return str(v)


class TransportHealth:
    """Report subscriptions that cannot connect because their QoS is incompatible.

    A reliable subscription never matches a best-effort publisher: no message ever arrives and
    nothing fails, so the link would be silently dead. rclpy raises a "requested incompatible
    QoS" event instead; pass :meth:`callbacks` as a subscription's ``event_callbacks`` and put
    :meth:`report` into the node's diagnostics.
    """

    def __init__(self, node) -> None:
        self.node = node
        self.incompatible: Dict[str, int] = {}   # topic -> events so far
        self.last_policy: Dict[str, str] = {}    # topic -> the policy that did not match

    def callbacks(self, topic: str):
        """Return the event callbacks to give a subscription to ``topic``."""
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks

        def on_incompatible(info, topic: str = topic) -> None:
            self._on_incompatible(topic, info)
        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

    def _on_incompatible(self, topic: str, info) -> None:
        self.incompatible[topic] = int(info.total_count)
        policy = getattr(info.last_policy_kind, 'name', str(info.last_policy_kind))
        self.last_policy[topic] = policy
        self.node.get_logger().error(
            f'subscription to {topic} cannot receive: a publisher offered an incompatible QoS '
            f'({policy}); no message of it will arrive', throttle_duration_sec=1.0)

    def report(self, node_name: str) -> DiagnosticStatus:
        """Return the ``<node>: transport`` status, ERROR once a link was found incompatible."""
        if not self.incompatible:
            return status(node_name, 'transport', OK, 'all subscriptions compatible')
        bad = ', '.join(f'{t} ({self.last_policy[t]})' for t in sorted(self.incompatible))
        values = {f'incompatible_qos.{t}': n for t, n in sorted(self.incompatible.items())}
        return status(node_name, 'transport', ERROR,
                      f'a publisher offered an incompatible QoS on {bad}: its messages never '
                      'arrive', values)
