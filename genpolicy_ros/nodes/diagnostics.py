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
