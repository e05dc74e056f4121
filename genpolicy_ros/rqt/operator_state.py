"""What the operator view shows, as a plain-Python model (no Qt, no rclpy).

ROS callbacks (or a recorded run being replayed) push values in with ``on_*`` methods, from
any thread; the widget takes a consistent :class:`Snapshot` at its own redraw rate. The model
also turns the raw stream into the operator's story: mode changes with their reason, barrier
interventions (activation count and time active), filter status changes and service replies.

Inputs follow the contract in DESIGN.md: ``/diagnostics`` statuses named
``safety_filter_node: barrier <name>`` (keys ``value``, ``active``),
``safety_filter_node: status`` and ``monitor_node: gate`` (keys ``mode``, ``reason``,
``score``, ``threshold``).
"""

from collections import deque
from dataclasses import dataclass, replace
import math
import threading
from typing import Deque, Dict, Iterable, List, Optional, Tuple

import numpy as np

BARRIER_PREFIX = 'safety_filter_node: barrier '
FILTER_STATUS = 'safety_filter_node: status'
MONITOR_GATE = 'monitor_node: gate'
MODES = ('NOMINAL', 'SLOW', 'HOLD')
UNKNOWN = 'UNKNOWN'
OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class StatusRecord:
    """One ``diagnostic_msgs/DiagnosticStatus`` as plain values."""

    name: str
    level: int
    message: str
    values: Dict[str, str]


def level_int(level: object) -> int:
    """Return a diagnostic level as int; rclpy gives ``bytes`` (one byte), decoders an int."""
    if isinstance(level, (bytes, bytearray)):
        return int(level[0]) if level else 0
    return int(level)


def parse_statuses(msg: object) -> List[StatusRecord]:
    """Convert a ``DiagnosticArray`` (rclpy message or decoded MCAP record) into records."""
    return [StatusRecord(name=str(s.name), level=level_int(s.level), message=str(s.message),
                         values={str(kv.key): str(kv.value) for kv in s.values})
            for s in msg.status]


def _as_bool(text: str) -> bool:
    return text.strip().lower() in ('true', '1', 'yes')


def _as_float(text: Optional[str]) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


@dataclass
class BarrierRow:
    """One barrier as the table shows it."""

    name: str
    value: float                 # latest h; h >= 0 is safe
    active: bool                 # constraint active in the filter's QP right now
    activations: int             # inactive -> active transitions seen
    active_time_s: float         # total time active (the running interval included)
    last_update_s: float
    active_since_s: Optional[float] = None


@dataclass
class Event:
    """One line of the operator's event log."""

    seq: int
    time_s: float
    kind: str                    # mode | intervention | release | filter | service
    level: int
    text: str


@dataclass
class ModeChange:
    """A monitor mode transition with the reason the monitor gave (when it gave one)."""

    time_s: float
    previous: str
    mode: str
    reason: str


@dataclass
class Snapshot:
    """A consistent copy of the model for one redraw."""

    version: int
    events_version: int
    now_s: float
    mode: str
    reason: str
    mode_age_s: float            # since the last mode/gate update (inf before the first)
    score: float
    threshold: float
    filter_status: str
    filter_level: int
    proposed: Tuple[np.ndarray, np.ndarray]   # (t_s, speed_mps)
    safe: Tuple[np.ndarray, np.ndarray]
    score_series: Tuple[np.ndarray, np.ndarray]
    threshold_series: Tuple[np.ndarray, np.ndarray]
    barriers: List[BarrierRow]
    events: List[Event]
    pending_services: Dict[str, float]        # service -> request time
    last_reply: Optional[Event]
    mode_changes: List[ModeChange]


class _Series:
    """A time series that keeps the last ``history_s`` seconds."""

    def __init__(self, history_s: float):
        self.history_s = history_s
        self.points: Deque[Tuple[float, float]] = deque()

    def add(self, t: float, v: float) -> None:
        self.points.append((t, v))
        horizon = t - self.history_s
        while self.points and self.points[0][0] < horizon:
            self.points.popleft()

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        if not self.points:
            return np.zeros(0), np.zeros(0)
        a = np.asarray(self.points, dtype=float)
        return a[:, 0].copy(), a[:, 1].copy()


class OperatorState:
    """Thread-safe model of the operator view; times are seconds on one clock (the node's)."""

    def __init__(self, history_s: float, max_events: int):
        if history_s <= 0 or max_events < 1:
            raise ValueError('history_s must be > 0 and max_events >= 1')
        self._lock = threading.Lock()
        self._version = 0
        self._events_version = 0
        self._seq = 0
        self._latest_s = -math.inf
        self._mode = UNKNOWN
        self._reason = ''
        self._mode_update_s = -math.inf
        self._score = math.nan
        self._threshold = math.nan
        self._filter_status = ''
        self._filter_level = OK
        self._series = {k: _Series(history_s) for k in
                        ('proposed', 'safe', 'score', 'threshold')}
        self._barriers: Dict[str, BarrierRow] = {}
        self._events: Deque[Event] = deque(maxlen=int(max_events))
        self._mode_changes: Deque[ModeChange] = deque(maxlen=int(max_events))
        self._pending: Dict[str, float] = {}
        self._last_reply: Optional[Event] = None

    # ------------------------------------------------------------------ inputs
    def on_twist(self, which: str, t_s: float, linear: Iterable[float]) -> None:
        """Record an EE twist; ``which`` is ``proposed`` or ``safe`` (linear part in m/s)."""
        if which not in ('proposed', 'safe'):
            raise ValueError(f'twist series must be proposed or safe, not {which!r}')
        speed = float(np.linalg.norm(np.asarray(list(linear), dtype=float)))
        with self._lock:
            self._touch(t_s)
            self._series[which].add(t_s, speed)

    def on_score(self, t_s: float, score: float) -> None:
        """Record the monitor's consistency score."""
        with self._lock:
            self._touch(t_s)
            self._score = float(score)
            self._series['score'].add(t_s, float(score))

    def on_threshold(self, t_s: float, threshold: float) -> None:
        """Record the monitor's threshold."""
        with self._lock:
            self._touch(t_s)
            self._threshold = float(threshold)
            self._series['threshold'].add(t_s, float(threshold))

    def on_mode(self, t_s: float, mode: str, reason: Optional[str] = None) -> None:
        """Record the monitor mode (``reason`` when known: the gate diagnostic carries it)."""
        mode = mode.strip().upper()
        with self._lock:
            self._touch(t_s)
            self._set_mode(t_s, mode, reason)

    def on_diagnostics(self, t_s: float, statuses: Iterable[StatusRecord]) -> None:
        """Digest one ``/diagnostics`` array (already parsed with :func:`parse_statuses`)."""
        with self._lock:
            self._touch(t_s)
            for st in statuses:
                if st.name.startswith(BARRIER_PREFIX):
                    self._barrier(t_s, st.name[len(BARRIER_PREFIX):], st)
                elif st.name == FILTER_STATUS:
                    if st.message != self._filter_status or st.level != self._filter_level:
                        if st.message != self._filter_status:
                            self._event(t_s, 'filter', st.level, f'filter: {st.message}')
                        self._filter_status, self._filter_level = st.message, st.level
                elif st.name == MONITOR_GATE:
                    if 'mode' in st.values:
                        self._set_mode(t_s, st.values['mode'].strip().upper(),
                                       st.values.get('reason', st.message))
                    if 'score' in st.values:
                        self._score = _as_float(st.values['score'])
                    if 'threshold' in st.values:
                        self._threshold = _as_float(st.values['threshold'])

    def on_service_request(self, t_s: float, service: str) -> None:
        """Note that ``service`` (hold/reset) was called and awaits a reply."""
        with self._lock:
            self._touch(t_s)
            self._pending[service] = t_s
            self._event(t_s, 'service', OK, f'{service} requested')

    def on_service_reply(self, t_s: float, service: str, success: bool, message: str) -> None:
        """Record the reply (or failure: no server, timeout) of a service call."""
        with self._lock:
            self._touch(t_s)
            self._pending.pop(service, None)
            word = 'OK' if success else 'FAILED'
            self._last_reply = self._event(t_s, 'service', OK if success else ERROR,
                                           f'{service}: {word}: {message}')

    def pending_since(self, service: str) -> Optional[float]:
        """Return when the pending call of ``service`` was made (None if none is pending)."""
        with self._lock:
            return self._pending.get(service)

    # ------------------------------------------------------------------ output
    def snapshot(self, now_s: Optional[float] = None) -> Snapshot:
        """Return a consistent copy; ``now_s`` (default: latest input time) ends running spans."""
        with self._lock:
            now = self._latest_s if now_s is None else float(now_s)
            rows = []
            for row in sorted(self._barriers.values(), key=lambda r: r.name):
                total = row.active_time_s
                if row.active and row.active_since_s is not None:
                    total += max(0.0, now - row.active_since_s)
                rows.append(replace(row, active_time_s=total))
            return Snapshot(
                version=self._version, events_version=self._events_version, now_s=now,
                mode=self._mode, reason=self._reason,
                mode_age_s=now - self._mode_update_s, score=self._score,
                threshold=self._threshold, filter_status=self._filter_status,
                filter_level=self._filter_level,
                proposed=self._series['proposed'].arrays(), safe=self._series['safe'].arrays(),
                score_series=self._series['score'].arrays(),
                threshold_series=self._series['threshold'].arrays(),
                barriers=rows, events=[replace(e) for e in self._events],
                pending_services=dict(self._pending),
                last_reply=self._last_reply,
                mode_changes=[replace(c) for c in self._mode_changes])

    # ------------------------------------------------------------------ internals
    def _touch(self, t_s: float) -> None:
        self._version += 1
        self._latest_s = max(self._latest_s, float(t_s))

    def _event(self, t_s: float, kind: str, level: int, text: str) -> Event:
        self._seq += 1
        ev = Event(seq=self._seq, time_s=float(t_s), kind=kind, level=int(level), text=text)
        self._events.append(ev)
        self._events_version += 1
        return ev

    def _set_mode(self, t_s: float, mode: str, reason: Optional[str]) -> None:
        self._mode_update_s = max(self._mode_update_s, t_s)
        if mode != self._mode:
            level = {'NOMINAL': OK, 'SLOW': WARN, 'HOLD': ERROR}.get(mode, WARN)
            previous = self._mode
            self._mode, self._reason = mode, reason or ''
            self._mode_changes.append(ModeChange(t_s, previous, mode, reason or ''))
            text = (f'mode {mode}' if previous == UNKNOWN else f'mode {previous} -> {mode}')
            self._event(t_s, 'mode', level, text + (f': {reason}' if reason else ''))
        elif reason and reason != self._reason:
            # The mode topic and the gate diagnostic race: the reason may come second.
            self._reason = reason
            if self._mode_changes and not self._mode_changes[-1].reason:
                self._mode_changes[-1].reason = reason
            last = next((e for e in reversed(self._events) if e.kind == 'mode'), None)
            if last is not None and last.text.endswith(mode):
                last.text += f': {reason}'
                self._events_version += 1

    def _barrier(self, t_s: float, name: str, st: StatusRecord) -> None:
        value = _as_float(st.values.get('value'))
        active = _as_bool(st.values.get('active', 'False'))
        row = self._barriers.get(name)
        if row is None:
            row = BarrierRow(name=name, value=value, active=False, activations=0,
                             active_time_s=0.0, last_update_s=t_s)
            self._barriers[name] = row
        if active and not row.active:
            row.activations += 1
            row.active_since_s = t_s
            self._event(t_s, 'intervention', WARN,
                        f'barrier {name} active (h = {value:.3g})')
        elif row.active and not active:
            span = t_s - (row.active_since_s if row.active_since_s is not None else t_s)
            row.active_time_s += max(0.0, span)
            row.active_since_s = None
            self._event(t_s, 'release', OK, f'barrier {name} released after {span:.2f} s')
        row.value, row.active, row.last_update_s = value, active, t_s
