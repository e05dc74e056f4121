"""Watchdogs on the monitor's inputs: staleness, bad values, clock faults, command sanity.

Every watchdog reports a :class:`Fault` for as long as its cause persists and nothing once it has
cleared, so the gate can refuse a reset while a cause is still there:

* ``STALE``: the newest good message of a stream is older than ``stale_ms`` (age measured on
  its stamp against ``now``, both on the same clock), or no message arrived yet.
* ``NON_FINITE`` / ``MALFORMED``: NaN/Inf or wrong sizes; active until the stream's next good
  message (the bad message itself is discarded and does not refresh the stream).
* ``TIME_BACKWARDS`` / ``TIME_JUMP``: a stamp older than the previous one, a stamp that advanced
  more than ``max_stamp_jump_ms`` beyond the time that passed on the clock between the two
  messages (a clock jump; a mere gap in the stream advances both equally and is the staleness
  watchdog's business), or a stamp ahead of ``now`` by more than ``max_future_stamp_ms``; active
  until the next message whose stamp is consistent. The offending stamp becomes the new
  reference, so a clock restart raises one fault and then clears instead of blocking forever.
* ``COMMAND_JUMP``: ``|q_cmd - q_prev| > v_max * dt * command_jump_factor`` for some joint, with
  ``dt`` the stamp difference capped at the stream's ``stale_ms`` (a gap must not license a jump)
  and floored at ``command_period_ms`` (timer jitter can stamp two commands closer together than
  the filter's period; each still covers one period of motion).
  ``COMMAND_VELOCITY``: ``|dq_cmd| > v_max * command_velocity_factor``. Both active until the
  next command that passes.
* ``FALLBACK_RATE``: more than ``max_fallback_fraction`` of the last ``fallback_window_commands``
  safe commands were filter fallbacks (count over a full-size window, so the first commands of
  a run cannot trip it with a tiny denominator).
* ``LATENCY``: the newest chunk arrived more than ``inference_latency_budget_ms`` after its
  observation stamp.

Hard faults (the arm must stop) and soft faults (slow down) are fixed by kind in
:data:`HARD_KINDS`; only latency and fallback rate are soft: they degrade performance, not the
integrity of what reaches the arm.
"""

from collections import deque
from dataclasses import dataclass
from enum import Enum
import math
from typing import Any, Deque, List, Mapping, Optional

from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.monitor.consistency import ConsistencyScorer
import numpy as np


class FaultKind(Enum):
    """Kinds of fault; the value is the sentence an operator sees."""

    STALE = 'Input is stale: no recent message'
    NON_FINITE = 'Input contains NaN or Inf'
    MALFORMED = 'Input has the wrong size or shape'
    TIME_BACKWARDS = 'Timestamp went backwards'
    TIME_JUMP = 'Timestamp jumped forward beyond the allowed bound'
    COMMAND_JUMP = 'Joint command jumped further than the velocity limits allow'
    COMMAND_VELOCITY = 'Joint velocity command exceeds the velocity limits'
    FALLBACK_RATE = 'Safety filter falls back too often'
    LATENCY = 'Policy inference latency over budget'
    UNCALIBRATED = 'No consistency calibration for this policy: cannot judge its outputs'
    NOVEL_OBSERVATION = 'Camera images unlike the training data: the policy is out of its depth'
    FROZEN_FRAME = 'Camera image frozen while the arm moves'


HARD_KINDS = frozenset({
    FaultKind.STALE, FaultKind.NON_FINITE, FaultKind.MALFORMED, FaultKind.TIME_BACKWARDS,
    FaultKind.TIME_JUMP, FaultKind.COMMAND_JUMP, FaultKind.COMMAND_VELOCITY,
    FaultKind.UNCALIBRATED, FaultKind.NOVEL_OBSERVATION, FaultKind.FROZEN_FRAME,
})


@dataclass(frozen=True)
class Fault:
    """One active fault: what, where, why, and the value against its threshold."""

    kind: FaultKind
    source: str
    message: str
    value: float
    threshold: float

    @property
    def hard(self) -> bool:
        """Return True if this fault must stop the arm (HOLD) rather than slow it (SLOW)."""
        return self.kind in HARD_KINDS

    def __str__(self) -> str:
        return f'{self.source}: {self.kind.value}: {self.message}'


@dataclass(frozen=True)
class StreamConfig:
    """Timing bounds of one input stream (``watchdogs.<stream>`` in the YAML).

    ``max_stamp_jump_ms`` bounds how much further the stamps may advance than the clock between
    two messages (jitter of the delivery latency).
    """

    stale_ms: float
    max_stamp_jump_ms: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any], section: str) -> 'StreamConfig':
        """Build from a parameter mapping; every key is required."""
        cfg = cls(**take(params, cls, section))
        if cfg.stale_ms <= 0.0 or cfg.max_stamp_jump_ms <= 0.0:
            raise ValueError(f'{section}: stale_ms and max_stamp_jump_ms must be > 0')
        return cfg


STREAMS = ('camera', 'joint_states', 'chunks', 'safe_command')


@dataclass(frozen=True)
class WatchdogConfig:
    """Settings of all watchdogs (``watchdogs.*`` in ``config/monitor.yaml``)."""

    camera: StreamConfig
    joint_states: StreamConfig
    chunks: StreamConfig
    safe_command: StreamConfig
    max_future_stamp_ms: float
    command_jump_factor: float
    command_period_ms: float
    command_velocity_factor: float
    fallback_window_commands: int
    max_fallback_fraction: float
    inference_latency_budget_ms: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'WatchdogConfig':
        """Build from the ``watchdogs`` parameter mapping; every key is required."""
        flat = {k: v for k, v in params.items() if k not in STREAMS}
        flat.update({s: None for s in STREAMS if s in params})
        values = take(flat, cls, 'watchdogs')
        for s in STREAMS:
            values[s] = StreamConfig.from_dict(params[s], f'watchdogs.{s}')
        cfg = cls(**values)
        if cfg.max_future_stamp_ms < 0.0:
            raise ValueError('watchdogs.max_future_stamp_ms must be >= 0')
        if cfg.command_period_ms <= 0.0:
            raise ValueError('watchdogs.command_period_ms must be > 0')
        if cfg.command_jump_factor <= 0.0 or cfg.command_velocity_factor <= 0.0:
            raise ValueError('watchdogs command factors must be > 0')
        if cfg.fallback_window_commands < 1:
            raise ValueError('watchdogs.fallback_window_commands must be >= 1')
        if not 0.0 <= cfg.max_fallback_fraction < 1.0:
            raise ValueError('watchdogs.max_fallback_fraction must be in [0, 1)')
        if cfg.inference_latency_budget_ms <= 0.0:
            raise ValueError('watchdogs.inference_latency_budget_ms must be > 0')
        return cfg


class StreamWatchdog:
    """Freshness and stamp sanity of one stream (camera, joint states, chunks, commands)."""

    def __init__(self, source: str, config: StreamConfig, max_future_stamp_ms: float):
        self.source = source
        self.config = config
        self._max_future_s = max_future_stamp_ms / 1000.0
        self._last_stamp: Optional[float] = None       # reference for ordering checks
        self._last_now: Optional[float] = None         # clock time of that message
        self._last_good_stamp: Optional[float] = None  # reference for freshness
        self._events: List[Fault] = []                 # integrity faults of the newest message

    def reset(self) -> None:
        """Forget every message (new run)."""
        self._last_stamp = None
        self._last_now = None
        self._last_good_stamp = None
        self._events = []

    @property
    def last_good_stamp(self) -> Optional[float]:
        """Return the stamp of the newest message that passed every check, or None."""
        return self._last_good_stamp

    def stamp_fault(self, stamp: float, now: float) -> Optional[Fault]:
        """Return the fault a message stamped ``stamp`` arriving at ``now`` would raise."""
        if not math.isfinite(stamp):
            return Fault(FaultKind.NON_FINITE, self.source, f'stamp is {stamp}', stamp, 0.0)
        if stamp - now > self._max_future_s:
            ahead_ms = (stamp - now) * 1000.0
            return Fault(FaultKind.TIME_JUMP, self.source,
                         f'stamp is {ahead_ms:.1f} ms ahead of the clock', ahead_ms,
                         self._max_future_s * 1000.0)
        if self._last_stamp is not None:
            step_ms = (stamp - self._last_stamp) * 1000.0
            if step_ms < 0.0:
                return Fault(FaultKind.TIME_BACKWARDS, self.source,
                             f'stamp went back by {-step_ms:.1f} ms', step_ms, 0.0)
            excess_ms = step_ms - (now - self._last_now) * 1000.0
            if excess_ms > self.config.max_stamp_jump_ms:
                return Fault(FaultKind.TIME_JUMP, self.source,
                             f'stamp advanced {excess_ms:.1f} ms more than the clock since the '
                             f'previous message', excess_ms, self.config.max_stamp_jump_ms)
        return None

    def feed(self, stamp: float, now: float, payload_fault: Optional[Fault] = None) -> bool:
        """Register a message; return True if it is good (fresh data the caller may use).

        ``payload_fault`` is the caller's verdict on the content (NaN, sizes, jumps).
        """
        stamp = float(stamp)
        faults = [f for f in (self.stamp_fault(stamp, now), payload_fault) if f is not None]
        if math.isfinite(stamp):
            self._last_stamp, self._last_now = stamp, float(now)
        self._events = faults
        if not faults:
            self._last_good_stamp = stamp
        return not faults

    def faults(self, now: float) -> List[Fault]:
        """Return the stream's active faults at time ``now``."""
        out = []
        stale_ms = self.config.stale_ms
        if self._last_good_stamp is None:
            out.append(Fault(FaultKind.STALE, self.source, 'no good message received yet',
                             math.inf, stale_ms))
        else:
            age_ms = (now - self._last_good_stamp) * 1000.0
            if age_ms > stale_ms:
                out.append(Fault(FaultKind.STALE, self.source,
                                 f'newest good message is {age_ms:.0f} ms old', age_ms,
                                 stale_ms))
        out.extend(self._events)
        return out


def _nonfinite_fault(source: str, name: str, arrays) -> Optional[Fault]:
    bad = int(sum(np.count_nonzero(~np.isfinite(a)) for a in arrays))
    if bad:
        return Fault(FaultKind.NON_FINITE, source, f'{bad} NaN/Inf value(s) in {name}',
                     float(bad), 0.0)
    return None


class Watchdogs:
    """All input watchdogs of the monitor; ``active_faults(now)`` lists what is wrong now."""

    def __init__(self, config: WatchdogConfig, velocity_limits: np.ndarray):
        self.config = config
        self.velocity_limits = np.asarray(velocity_limits, dtype=float)
        if self.velocity_limits.ndim != 1 or np.any(self.velocity_limits <= 0.0):
            raise ValueError('velocity_limits must be a 1-D array of positive values [rad/s]')
        self.n_joints = self.velocity_limits.size
        self.streams = {s: StreamWatchdog(s, getattr(config, s), config.max_future_stamp_ms)
                        for s in STREAMS}
        self._prev_cmd: Optional[np.ndarray] = None
        self._prev_cmd_stamp: Optional[float] = None
        self._fallbacks: Deque[bool] = deque(maxlen=config.fallback_window_commands)
        self._latency_ms: Optional[float] = None

    def reset(self) -> None:
        """Forget all history (new run); every stream is stale until it delivers again."""
        for w in self.streams.values():
            w.reset()
        self._prev_cmd = None
        self._prev_cmd_stamp = None
        self._fallbacks.clear()
        self._latency_ms = None

    def _shape_fault(self, source: str, **arrays: np.ndarray) -> Optional[Fault]:
        for name, a in arrays.items():
            if a.shape != (self.n_joints,):
                return Fault(FaultKind.MALFORMED, source,
                             f'{name} has shape {a.shape}, expected ({self.n_joints},)',
                             float(a.size), float(self.n_joints))
        return None

    def on_camera(self, stamp: float, now: float) -> bool:
        """Register a camera frame; return True if it is good."""
        return self.streams['camera'].feed(stamp, now)

    def on_joint_state(self, q: np.ndarray, dq: np.ndarray, stamp: float, now: float,
                       rejected: Optional[str] = None) -> bool:
        """Register a joint state (positions [rad], velocities [rad/s]); True if good.

        ``rejected`` is why the message was refused at the node's edge (wrong joint names,
        implausible values, ...): it counts as a MALFORMED message of the stream.
        """
        q = np.asarray(q, dtype=float)
        dq = np.asarray(dq, dtype=float)
        if rejected is not None:
            fault: Optional[Fault] = Fault(FaultKind.MALFORMED, 'joint_states', rejected,
                                           1.0, 0.0)
        else:
            fault = (self._shape_fault('joint_states', position=q, velocity=dq)
                     or _nonfinite_fault('joint_states', 'position/velocity', (q, dq)))
        return self.streams['joint_states'].feed(stamp, now, fault)

    def on_chunk(self, stamp: float, times_from_start: np.ndarray, samples: np.ndarray,
                 now: float, expected_dim: Optional[int] = None) -> bool:
        """Register a chunk of samples ``(N, H, D)``; return True if it is good to score.

        ``expected_dim`` is the action dimension D of the previous chunk, if any.
        """
        times = np.asarray(times_from_start, dtype=float)
        s = np.asarray(samples, dtype=float)
        fault = _nonfinite_fault('chunks', 'times/samples', (times, s))
        if fault is None:
            try:
                ConsistencyScorer.validate(stamp if math.isfinite(stamp) else 0.0, times, s)
                if expected_dim is not None and s.shape[2] != expected_dim:
                    raise ValueError(f'action dimension changed from {expected_dim} to '
                                     f'{s.shape[2]}')
            except ValueError as exc:
                fault = Fault(FaultKind.MALFORMED, 'chunks', str(exc), float(s.size), 0.0)
        good = self.streams['chunks'].feed(stamp, now, fault)
        if good:
            self._latency_ms = (now - float(stamp)) * 1000.0
        return good

    def on_safe_command(self, q_cmd: np.ndarray, dq_cmd: np.ndarray, stamp: float,
                        status_fallback: bool, now: float) -> bool:
        """Register the filter's command; return True if it may be passed on to the arm."""
        q = np.asarray(q_cmd, dtype=float)
        dq = np.asarray(dq_cmd, dtype=float)
        src = 'safe_command'
        stream = self.streams[src]
        fault = (self._shape_fault(src, position=q, velocity=dq)
                 or _nonfinite_fault(src, 'position/velocity', (q, dq)))
        if fault is None:
            fault = self._command_fault(q, dq, float(stamp))
        good = stream.feed(stamp, now, fault)
        if fault is None or fault.kind in (FaultKind.COMMAND_JUMP, FaultKind.COMMAND_VELOCITY):
            # A finite, well-sized command is the reference for the next jump check even when
            # it jumped, so one jump raises one fault instead of condemning every later command.
            self._prev_cmd, self._prev_cmd_stamp = q.copy(), float(stamp)
        self._fallbacks.append(bool(status_fallback))
        return good

    def _command_fault(self, q: np.ndarray, dq: np.ndarray, stamp: float) -> Optional[Fault]:
        cfg = self.config
        v_max = self.velocity_limits
        vel_ratio = np.abs(dq) / v_max
        j = int(np.argmax(vel_ratio))
        if vel_ratio[j] > cfg.command_velocity_factor:
            limit = float(v_max[j] * cfg.command_velocity_factor)
            return Fault(FaultKind.COMMAND_VELOCITY, 'safe_command',
                         f'joint {j + 1} velocity {dq[j]:.3f} rad/s beyond {limit:.3f} rad/s',
                         float(abs(dq[j])), limit)
        if self._prev_cmd is None or not math.isfinite(stamp):
            return None
        dt = min(stamp - self._prev_cmd_stamp, cfg.safe_command.stale_ms / 1000.0)
        if dt <= 0.0:
            return None  # the stamp check reports this; no rate can be formed
        dt = max(dt, cfg.command_period_ms / 1000.0)
        allowed = v_max * dt * cfg.command_jump_factor
        step = np.abs(q - self._prev_cmd)
        j = int(np.argmax(step / allowed))
        if step[j] > allowed[j]:
            return Fault(FaultKind.COMMAND_JUMP, 'safe_command',
                         f'joint {j + 1} moved {step[j]:.4f} rad in {dt * 1000.0:.1f} ms '
                         f'(allowed {allowed[j]:.4f} rad)', float(step[j]), float(allowed[j]))
        return None

    @property
    def fallback_fraction(self) -> float:
        """Return fallbacks among the last ``fallback_window_commands`` commands / window size."""
        return sum(self._fallbacks) / self.config.fallback_window_commands

    @property
    def latency_ms(self) -> Optional[float]:
        """Return the newest good chunk's inference latency [ms], or None."""
        return self._latency_ms

    def active_faults(self, now: float) -> List[Fault]:
        """Return every fault whose cause persists at time ``now``."""
        faults: List[Fault] = []
        for s in STREAMS:
            faults.extend(self.streams[s].faults(now))
        frac = self.fallback_fraction
        if frac > self.config.max_fallback_fraction:
            n = self.config.fallback_window_commands
            faults.append(Fault(FaultKind.FALLBACK_RATE, 'safe_command',
                                f'{sum(self._fallbacks)} of the last {n} commands were '
                                f'fallbacks', frac, self.config.max_fallback_fraction))
        budget = self.config.inference_latency_budget_ms
        if self._latency_ms is not None and self._latency_ms > budget:
            faults.append(Fault(FaultKind.LATENCY, 'chunks',
                                f'newest chunk arrived {self._latency_ms:.0f} ms after its '
                                f'observation', self._latency_ms, budget))
        return faults
