"""RuntimeMonitor: the last gate before the arm driver (pure core of ``monitor_node``).

Feed it every input as it arrives (``on_chunk_samples``, ``on_joint_state``, ``on_camera``,
``on_safe_command``), call ``update(now)`` at the control rate, and send only what
``gated_command(q, dq, now)`` returns. All times are seconds on one clock (the node's ROS
clock; simulated time in lock-step evaluation): ``now`` is when a message is handled, ``stamp``
is when its content was observed.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

from genpolicy_ros.config_io import read_core_parameters
from genpolicy_ros.monitor.calibration import Calibration, load_calibration
from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.monitor.consistency import (ConsistencyConfig, ConsistencyScore,
                                               ConsistencyScorer)
from genpolicy_ros.monitor.gate import CommandGate, Gate, GateConfig, Mode, Transition
from genpolicy_ros.monitor.novelty import (CameraContentChecks, FEATURE_DEFINITION,
                                           FeatureNoveltyModel, FrameReadings, NoveltyConfig)
from genpolicy_ros.monitor.watchdogs import Fault, FaultKind, WatchdogConfig, Watchdogs
from genpolicy_ros.paths import config_path
import numpy as np

NODE_NAME = 'monitor_node'
CONFIG_FILE = 'monitor.yaml'


@dataclass(frozen=True)
class MonitorConfig:
    """All monitor settings, read from ``config/monitor.yaml`` (``monitor_node`` parameters)."""

    calibration_file: str
    require_calibration: bool
    consistency: ConsistencyConfig
    watchdogs: WatchdogConfig
    gate: GateConfig
    novelty: NoveltyConfig

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'MonitorConfig':
        """Build from the nested ``ros__parameters`` mapping; every key is required.

        A node holding ROS 2's flat dotted names passes them through
        :func:`genpolicy_ros.config_io.unflatten` first.
        """
        sections = ('consistency', 'watchdogs', 'gate', 'novelty')
        flat = {k: v for k, v in params.items() if k not in sections}
        flat.update({s: None for s in sections if s in params})
        values = take(flat, cls, 'monitor_node')
        values['consistency'] = ConsistencyConfig.from_dict(params['consistency'])
        values['watchdogs'] = WatchdogConfig.from_dict(params['watchdogs'])
        values['gate'] = GateConfig.from_dict(params['gate'])
        values['novelty'] = NoveltyConfig.from_dict(params['novelty'])
        return cls(**values)

    @classmethod
    def load(cls, path: Union[str, Path, None] = None) -> 'MonitorConfig':
        """Read ``path`` (default ``config/monitor.yaml``), ROS 2 parameter-file layout."""
        return cls.from_dict(read_core_parameters(CONFIG_FILE, NODE_NAME, path))


@dataclass(frozen=True)
class MonitorStatus:
    """Snapshot for diagnostics and the operator: what the monitor does and why."""

    mode: Mode
    reason: str
    score: Optional[float]
    threshold: Optional[float]
    slow_threshold: Optional[float]
    consecutive_above: int
    last_chunk: Optional[ConsistencyScore]
    faults: Tuple[Fault, ...]
    fallback_fraction: float
    latency_ms: Optional[float]
    velocity_scale: float
    calibration: Optional[Calibration]
    last_transition: Optional[Transition]
    novelty_distance: Optional[float] = None
    novelty_threshold: Optional[float] = None

    def as_key_values(self) -> List[Tuple[str, str]]:
        """Return ``(key, value)`` strings for a diagnostic_msgs/DiagnosticStatus."""
        def num(x: Optional[float]) -> str:
            return 'n/a' if x is None else f'{x:.6g}'

        chunk = self.last_chunk
        kv = [('mode', self.mode.name), ('mode_sentence', self.mode.value),
              ('reason', self.reason), ('score', num(self.score)),
              ('threshold', num(self.threshold)), ('slow_threshold', num(self.slow_threshold)),
              ('consecutive_above', str(self.consecutive_above)),
              ('mmd2', num(chunk.mmd2 if chunk else None)),
              ('dispersion_m', num(chunk.dispersion_m if chunk else None)),
              ('overlap', chunk.status.value if chunk else 'n/a'),
              ('fallback_fraction', num(self.fallback_fraction)),
              ('latency_ms', num(self.latency_ms)), ('velocity_scale', num(self.velocity_scale)),
              ('novelty_distance', num(self.novelty_distance)),
              ('novelty_threshold', num(self.novelty_threshold)),
              ('calibration', (f'{self.calibration.policy_checkpoint} '
                               f'({self.calibration.date}, n={self.calibration.n_episodes}, '
                               f'alpha={self.calibration.alpha:g})')
               if self.calibration else 'none'),
              ('faults', str(len(self.faults)))]
        kv += [(f'fault.{f.source}.{f.kind.name}',
                f'{f.message} (value {f.value:.6g}, threshold {f.threshold:.6g})')
               for f in self.faults]
        return kv


class RuntimeMonitor:
    """Consistency score + watchdogs + gate; only ``gated_command`` output may reach the arm."""

    def __init__(self, config: MonitorConfig, velocity_limits: np.ndarray,
                 acceleration_limits: np.ndarray, calibration: Optional[Calibration],
                 novelty_model: Optional[FeatureNoveltyModel] = None):
        """Create a monitor; ``calibration`` None means "not calibrated" (see the config).

        ``velocity_limits`` [rad/s] and ``acceleration_limits`` [rad/s^2] are per joint, e.g.
        ``FrankaModel().limits.velocity`` / ``.acceleration``. A calibration made for a
        different score definition is refused with ``ValueError``. ``novelty_model`` (the
        policy encoder's training-feature statistics) enables the camera-novelty check; frozen
        frames are checked whenever camera images are passed to :meth:`on_camera`.
        """
        if calibration is not None:
            mine = config.consistency.definition()
            if calibration.score_definition != mine:
                raise ValueError(
                    f'the calibration was made for another score definition:\n  '
                    f'{calibration.score_definition}\nthis monitor computes:\n  {mine}\n'
                    f'recalibrate with the current config')
            if calibration.novelty_definition != FEATURE_DEFINITION:
                raise ValueError(f'the calibration was made for another novelty feature: '
                                 f'{calibration.novelty_definition!r}; recalibrate')
        self.config = config
        self.calibration = calibration
        self.scorer = ConsistencyScorer(config.consistency)
        self.watchdogs = Watchdogs(config.watchdogs, velocity_limits)
        threshold = calibration.threshold if calibration is not None else None
        self.gate = Gate(config.gate, threshold)
        self.camera_checks = CameraContentChecks(
            config.novelty, novelty_model,
            calibration.novelty_threshold if calibration is not None else None)
        self.command_gate = CommandGate(config.gate, acceleration_limits)
        if self.watchdogs.n_joints != self.command_gate.acceleration_limits.size:
            raise ValueError('velocity and acceleration limits have different lengths')
        self._now: Optional[float] = None
        self._last_chunk: Optional[ConsistencyScore] = None
        self._safe: Optional[Tuple[np.ndarray, np.ndarray]] = None

    @classmethod
    def from_files(cls, config: Optional[MonitorConfig] = None,
                   velocity_limits: Optional[np.ndarray] = None,
                   acceleration_limits: Optional[np.ndarray] = None) -> 'RuntimeMonitor':
        """Build from ``config/monitor.yaml``, the calibration file it names, and the robot.

        Limits default to ``genpolicy_ros.robot.FrankaModel().limits``. A missing calibration
        file gives an uncalibrated monitor; an invalid one raises.
        """
        config = config if config is not None else MonitorConfig.load()
        if velocity_limits is None or acceleration_limits is None:
            from genpolicy_ros.robot import FrankaModel
            limits = FrankaModel().limits
            velocity_limits = limits.velocity if velocity_limits is None else velocity_limits
            acceleration_limits = (limits.acceleration if acceleration_limits is None
                                   else acceleration_limits)
        path = config_path(config.calibration_file)
        calibration = load_calibration(path) if path.is_file() else None
        return cls(config, velocity_limits, acceleration_limits, calibration,
                   load_novelty_model(config))

    def _tick(self, now: float) -> float:
        now = float(now)
        self._now = now if self._now is None else max(self._now, now)
        return now

    # Inputs ------------------------------------------------------------------------------

    def on_chunk_samples(self, stamp: float, times_from_start: np.ndarray, samples: np.ndarray,
                         now: float) -> Optional[ConsistencyScore]:
        """Score a decision's samples ``(N, H, D)``; return the score, or None if rejected.

        Rejected chunks (NaN, sizes, stamps) raise a watchdog fault instead of an exception.
        """
        now = self._tick(now)
        if not self.watchdogs.on_chunk(stamp, times_from_start, samples, now,
                                       self.scorer.sample_dim):
            return None
        result = self.scorer.score(stamp, times_from_start, samples)
        self._last_chunk = result
        self.gate.observe_score(result.score, now)
        return result

    def on_joint_state(self, q: np.ndarray, dq: np.ndarray, stamp: float, now: float,
                       rejected: Optional[str] = None) -> bool:
        """Register a measured joint state; return True if it was good.

        ``rejected``: why the message was refused before it got here (a MALFORMED fault).
        """
        good = self.watchdogs.on_joint_state(q, dq, stamp, self._tick(now), rejected)
        if good:
            self.camera_checks.on_joint_positions(q, stamp)
        return good

    def on_camera(self, stamp: float, now: float, image: Optional[np.ndarray] = None,
                  readings: Optional[FrameReadings] = None) -> bool:
        """Register a camera frame; return True if its stamp (and image) were good.

        With ``image`` (H, W, 3) uint8 the content is checked too (novelty, frozen frame);
        ``readings``: ``camera_checks.read`` of it, if computed already (outside a lock).
        """
        good = self.watchdogs.on_camera(stamp, self._tick(now))
        if good and image is not None:
            self.camera_checks.on_frame(image, stamp, readings)
        return good

    def on_safe_command(self, q_cmd: np.ndarray, dq_cmd: np.ndarray, stamp: float,
                        status_fallback: bool, now: float) -> bool:
        """Register the safety filter's command; return True if it may be passed on."""
        now = self._tick(now)
        good = self.watchdogs.on_safe_command(q_cmd, dq_cmd, stamp, status_fallback, now)
        if good:
            self._safe = (np.array(q_cmd, dtype=float), np.array(dq_cmd, dtype=float))
        return good

    # Decisions ---------------------------------------------------------------------------

    def active_faults(self, now: float) -> List[Fault]:
        """Return the watchdog faults at ``now`` plus UNCALIBRATED when that is required."""
        faults = self.watchdogs.active_faults(now) + self.camera_checks.active_faults()
        if self.calibration is None and self.config.require_calibration:
            faults.append(Fault(FaultKind.UNCALIBRATED, 'calibration',
                                f'config/{self.config.calibration_file} not loaded', 0.0, 0.0))
        return faults

    def update(self, now: float) -> Mode:
        """Evaluate the faults at ``now`` [s] and return the mode (HOLD is latched)."""
        now = self._tick(now)
        return self.gate.update(self.active_faults(now), now)

    def gated_command(self, q: np.ndarray, dq: np.ndarray,
                      now: float) -> Tuple[np.ndarray, np.ndarray, Mode]:
        """Return ``(q_cmd, dq_cmd, mode)`` to send, given the measured joint state ``q, dq``.

        NOMINAL: the newest safe command; SLOW: scaled; HOLD (or no safe command yet):
        decelerate within the acceleration limits, then hold position.
        """
        mode = self.update(now)
        q_cmd, dq_cmd = self.command_gate.command(mode, q, dq, self._safe, float(now))
        return q_cmd, dq_cmd, mode

    def reset(self, now: Optional[float] = None) -> Tuple[bool, str]:
        """Leave HOLD if no cause persists; ``(ok, message)`` says what happened or why not."""
        now = self._tick(now) if now is not None else self._now
        if now is None:
            return False, 'Reset refused: no input received yet'
        return self.gate.reset(self.active_faults(now), now)

    def request_hold(self, reason: str = 'operator request', now: Optional[float] = None) -> Mode:
        """Force HOLD (latched until ``reset``)."""
        now = self._tick(now) if now is not None else (self._now or 0.0)
        return self.gate.request_hold(reason, now)

    @property
    def mode(self) -> Mode:
        """Return the current mode, as of the last update."""
        return self.gate.mode

    @property
    def transitions(self) -> List[Transition]:
        """Return the recorded mode transitions ``(time, from, to, reason)``, oldest first."""
        return self.gate.transitions

    def status(self, now: Optional[float] = None) -> MonitorStatus:
        """Return a diagnostics snapshot; faults are evaluated at ``now`` (default: latest)."""
        t = now if now is not None else self._now
        faults = tuple(self.active_faults(t)) if t is not None else ()
        transitions = self.gate.transitions
        return MonitorStatus(
            mode=self.gate.mode, reason=self.gate.reason, score=self.gate.last_score,
            threshold=self.gate.threshold, slow_threshold=self.gate.slow_threshold,
            consecutive_above=self.gate.consecutive_above, last_chunk=self._last_chunk,
            faults=faults, fallback_fraction=self.watchdogs.fallback_fraction,
            latency_ms=self.watchdogs.latency_ms, velocity_scale=self.command_gate.scale,
            calibration=self.calibration,
            last_transition=transitions[-1] if transitions else None,
            novelty_distance=self.camera_checks.last_distance,
            novelty_threshold=self.camera_checks.threshold)


def load_novelty_model(config: MonitorConfig) -> Optional[FeatureNoveltyModel]:
    """Load ``config/<novelty.model_file>`` if it exists (None: novelty check off)."""
    path = config_path(config.novelty.model_file)
    return FeatureNoveltyModel.load(path) if path.is_file() else None
