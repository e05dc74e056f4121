"""The monitor's gate: a pure state machine NOMINAL / SLOW / HOLD and the command it lets through.

Transitions (``T`` the calibrated threshold, ``f`` = ``slow_threshold_fraction``):

* NOMINAL -> SLOW: a decision scores above ``f * T``, or a soft fault is active.
* NOMINAL/SLOW -> HOLD: ``hold_consecutive_decisions`` consecutive decisions score above ``T``,
  a hard fault is active, or ``request_hold(reason)`` is called.
* SLOW -> NOMINAL: no decision above ``f * T`` and no soft fault for ``recovery_time_s``.
* HOLD is latched: only ``reset()`` leaves it, and it refuses (saying why) while a hard fault is
  active or the newest score is still above ``T``; it goes to SLOW if a soft cause remains.
* The gate starts in HOLD ("starting up"); with ``auto_release_startup_hold`` that first hold is
  released by itself the first time no HOLD cause persists (all inputs live, newest score not
  above ``T``), never later ones.

Without a threshold (not calibrated) scores are recorded but never change the mode; the monitor
then adds an ``UNCALIBRATED`` hard fault unless told not to require a calibration.

:class:`CommandGate` shapes what reaches the driver: NOMINAL passes the filter's command, SLOW
scales its velocity (and its position step from the measured position) by
``slow_velocity_scale``; the scale changes by at most 1 per ``scale_ramp_time_s`` (also when
resuming from HOLD, where it is 0), so mode changes do not step the velocity. HOLD decelerates
from the last command sent with the shared stopping law
:func:`genpolicy_ros.safety.hold.decelerate` (within the joint acceleration limits) and then
holds that position.
"""

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Deque, List, Mapping, Optional, Sequence, Tuple

from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.monitor.watchdogs import Fault
from genpolicy_ros.safety.hold import decelerate
import numpy as np


class Mode(Enum):
    """Monitor modes; the value is the sentence an operator sees."""

    NOMINAL = 'Nominal: the safe commands pass through unchanged'
    SLOW = 'Slowed: velocities scaled down while the policy looks unsure or a soft fault persists'
    HOLD = 'Holding: decelerating to a stop and holding position until an operator resets'


@dataclass(frozen=True)
class Transition:
    """One mode change: when [s], from, to, and why."""

    time: float
    from_mode: Mode
    to_mode: Mode
    reason: str


@dataclass(frozen=True)
class GateConfig:
    """Settings of the gate (``gate.*`` in ``config/monitor.yaml``)."""

    slow_threshold_fraction: float
    slow_velocity_scale: float
    hold_consecutive_decisions: int
    recovery_time_s: float
    scale_ramp_time_s: float
    max_command_step_s: float
    auto_release_startup_hold: bool
    transition_log_size: int

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'GateConfig':
        """Build from the ``gate`` parameter mapping; every key is required."""
        cfg = cls(**take(params, cls, 'gate'))
        if not 0.0 < cfg.slow_threshold_fraction <= 1.0:
            raise ValueError('gate.slow_threshold_fraction must be in (0, 1]')
        if not 0.0 < cfg.slow_velocity_scale <= 1.0:
            raise ValueError('gate.slow_velocity_scale must be in (0, 1]')
        if cfg.hold_consecutive_decisions < 1:
            raise ValueError('gate.hold_consecutive_decisions must be >= 1')
        if cfg.recovery_time_s < 0.0 or cfg.scale_ramp_time_s < 0.0:
            raise ValueError('gate.recovery_time_s and gate.scale_ramp_time_s must be >= 0')
        if cfg.max_command_step_s <= 0.0:
            raise ValueError('gate.max_command_step_s must be > 0')
        if cfg.transition_log_size < 1:
            raise ValueError('gate.transition_log_size must be >= 1')
        return cfg


STARTUP_REASON = 'Starting up: waiting for every input to be live'


class Gate:
    """Pure NOMINAL / SLOW / HOLD state machine driven by scores, faults and operator calls."""

    def __init__(self, config: GateConfig, threshold: Optional[float]):
        self.config = config
        self.threshold = threshold
        self._mode = Mode.HOLD
        self._reason = STARTUP_REASON
        self._startup = True
        self._consecutive = 0
        self._last_score: Optional[float] = None
        self._last_slow_cause: Optional[float] = None
        self._transitions: Deque[Transition] = deque(maxlen=config.transition_log_size)

    @property
    def mode(self) -> Mode:
        """Return the current mode."""
        return self._mode

    @property
    def reason(self) -> str:
        """Return why the gate is in its current mode."""
        return self._reason

    @property
    def slow_threshold(self) -> Optional[float]:
        """Return the score above which the gate slows down, or None if not calibrated."""
        if self.threshold is None:
            return None
        return self.config.slow_threshold_fraction * self.threshold

    @property
    def consecutive_above(self) -> int:
        """Return how many decisions in a row scored above the threshold."""
        return self._consecutive

    @property
    def last_score(self) -> Optional[float]:
        """Return the newest decision's score, or None before the first."""
        return self._last_score

    @property
    def transitions(self) -> List[Transition]:
        """Return the recorded transitions, oldest first (up to ``transition_log_size``)."""
        return list(self._transitions)

    def _go(self, to: Mode, reason: str, now: float) -> None:
        if to != self._mode:
            self._transitions.append(Transition(float(now), self._mode, to, reason))
            self._mode = to
        self._reason = reason

    def observe_score(self, score: float, now: float) -> Mode:
        """Take one decision's consistency score at time ``now`` [s]; return the mode."""
        self._last_score = float(score)
        if self.threshold is None:
            return self._mode
        thr = self.threshold
        self._consecutive = self._consecutive + 1 if score > thr else 0
        if score > self.slow_threshold:
            self._last_slow_cause = now
        if self._mode == Mode.HOLD:
            return self._mode
        k = self.config.hold_consecutive_decisions
        if self._consecutive >= k:
            self._go(Mode.HOLD, f'consistency score {score:.3g} above threshold {thr:.3g} for '
                     f'{self._consecutive} consecutive decision(s)', now)
        elif score > self.slow_threshold:
            self._go(Mode.SLOW, f'consistency score {score:.3g} above slow threshold '
                     f'{self.slow_threshold:.3g}', now)
        return self._mode

    def update(self, faults: Sequence[Fault], now: float) -> Mode:
        """Apply the faults active at time ``now`` [s] and the recovery timer; return the mode."""
        hard = [f for f in faults if f.hard]
        soft = [f for f in faults if not f.hard]
        if soft:
            self._last_slow_cause = now
        if self._mode == Mode.HOLD:
            if (self._startup and self.config.auto_release_startup_hold
                    and not self.hold_causes(faults)):
                self._release('all inputs live', soft, now)
            return self._mode
        if hard:
            self._go(Mode.HOLD, '; '.join(str(f) for f in hard), now)
        elif soft:
            self._go(Mode.SLOW, '; '.join(str(f) for f in soft), now)
        elif self._mode == Mode.SLOW:
            quiet = (self._last_slow_cause is None
                     or now - self._last_slow_cause >= self.config.recovery_time_s)
            if quiet:
                self._go(Mode.NOMINAL, f'score low and no soft fault for '
                         f'{self.config.recovery_time_s:g} s', now)
        return self._mode

    def _release(self, why: str, soft: Sequence[Fault], now: float) -> None:
        self._startup = False
        self._consecutive = 0
        score_high = (self.slow_threshold is not None and self._last_score is not None
                      and self._last_score > self.slow_threshold)
        if soft or score_high:
            causes = [str(f) for f in soft]
            if score_high:
                causes.append(f'consistency score {self._last_score:.3g} above slow threshold '
                              f'{self.slow_threshold:.3g}')
            self._last_slow_cause = now
            self._go(Mode.SLOW, f'{why}; ' + '; '.join(causes), now)
        else:
            self._go(Mode.NOMINAL, why, now)

    def hold_causes(self, faults: Sequence[Fault]) -> List[str]:
        """Return the sentences of every cause that would put the gate back into HOLD now."""
        causes = [str(f) for f in faults if f.hard]
        if (self.threshold is not None and self._last_score is not None
                and self._last_score > self.threshold):
            causes.append(f'newest consistency score {self._last_score:.3g} is still above '
                          f'the threshold {self.threshold:.3g}')
        return causes

    def reset(self, faults: Sequence[Fault], now: float) -> Tuple[bool, str]:
        """Leave HOLD if no cause persists; return ``(ok, message)`` saying what happened."""
        if self._mode != Mode.HOLD:
            return True, f'Not holding (mode {self._mode.name}): nothing to reset'
        causes = self.hold_causes(faults)
        if causes:
            return False, 'Reset refused, still: ' + '; '.join(causes)
        self._release('operator reset', [f for f in faults if not f.hard], now)
        return True, f'Reset accepted: {self._mode.name} ({self._reason})'

    def request_hold(self, reason: str, now: float) -> Mode:
        """Force HOLD (operator or another component); latched like any other HOLD."""
        if self._mode != Mode.HOLD:
            self._go(Mode.HOLD, f'hold requested: {reason}', now)
        return self._mode


class CommandGate:
    """Turn the mode and the filter's newest safe command into the command sent to the arm."""

    def __init__(self, config: GateConfig, acceleration_limits: np.ndarray):
        self.config = config
        self.acceleration_limits = np.asarray(acceleration_limits, dtype=float)
        if self.acceleration_limits.ndim != 1 or np.any(self.acceleration_limits <= 0.0):
            raise ValueError('acceleration_limits must be a 1-D array of positive values '
                             '[rad/s^2]')
        self._scale = 0.0  # effective velocity scale; 0 while holding so a resume ramps up
        self._last_q: Optional[np.ndarray] = None
        self._last_dq: Optional[np.ndarray] = None
        self._last_time: Optional[float] = None

    @property
    def scale(self) -> float:
        """Return the velocity scale applied to the newest command (0 while holding)."""
        return self._scale

    def _step_dt(self, now: float) -> float:
        if self._last_time is None:
            return self.config.max_command_step_s
        return min(now - self._last_time, self.config.max_command_step_s)

    def command(self, mode: Mode, q: np.ndarray, dq: np.ndarray,
                safe: Optional[Tuple[np.ndarray, np.ndarray]],
                now: float) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``(q_cmd [rad], dq_cmd [rad/s])`` for the driver at time ``now`` [s].

        ``q, dq`` is the measured joint state; ``safe`` the filter's newest good command
        ``(q_cmd, dq_cmd)`` or None. Without a safe command the gate holds whatever the mode.
        Raises ``ValueError`` only if it must hold and has no finite state to hold from.
        """
        q = np.asarray(q, dtype=float)
        dq = np.asarray(dq, dtype=float)
        if self._last_time is not None and now <= self._last_time:
            return self._last_q.copy(), self._last_dq.copy()  # same tick asked twice
        dt = self._step_dt(now)
        if mode == Mode.HOLD or safe is None:
            self._scale = 0.0
            if self._last_q is not None:
                base_q, base_dq = self._last_q, self._last_dq
            else:
                base_q, base_dq = q, dq
            if not np.all(np.isfinite(base_q)):
                raise ValueError('cannot hold: no finite joint position to hold')
            q_cmd, dq_cmd = decelerate(base_q, base_dq, self.acceleration_limits, dt)
        else:
            target = 1.0 if mode == Mode.NOMINAL else self.config.slow_velocity_scale
            ramp = self.config.scale_ramp_time_s
            if ramp <= 0.0:
                self._scale = target
            else:
                # Full scale change (1 -> 0) takes ramp seconds; never overshoot the target.
                step = dt / ramp
                self._scale = float(np.clip(target, self._scale - step, self._scale + step))
            q_safe, dq_safe = (np.asarray(a, dtype=float) for a in safe)
            if self._scale == 1.0:
                q_cmd, dq_cmd = q_safe.copy(), dq_safe.copy()
            else:
                # The filter's position target is a short step ahead of the measured position;
                # scaling that step keeps position and velocity targets consistent.
                q_cmd = q + self._scale * (q_safe - q)
                dq_cmd = self._scale * dq_safe
        self._last_q, self._last_dq, self._last_time = q_cmd, dq_cmd, float(now)
        return q_cmd.copy(), dq_cmd.copy()
