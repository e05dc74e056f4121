"""Runtime consistency monitor: STAC-style score, conformal calibration, watchdogs, gate.

Pure core (no rclpy): ``RuntimeMonitor`` is what ``monitor_node`` and the lock-step evaluation
drive. See ``monitor.py`` for the facade and the other modules for each part.
"""

from genpolicy_ros.monitor.calibration import (Calibration, calibrate, conformal_threshold,
                                               InsufficientCalibrationData, load_calibration,
                                               min_episodes, save_calibration)
from genpolicy_ros.monitor.consistency import (ConsistencyConfig, ConsistencyScore,
                                               ConsistencyScorer, OverlapStatus)
from genpolicy_ros.monitor.gate import CommandGate, Gate, GateConfig, Mode, Transition
from genpolicy_ros.monitor.monitor import MonitorConfig, MonitorStatus, RuntimeMonitor
from genpolicy_ros.monitor.watchdogs import Fault, FaultKind, WatchdogConfig, Watchdogs

__all__ = [
    'Calibration', 'calibrate', 'conformal_threshold', 'InsufficientCalibrationData',
    'load_calibration', 'min_episodes', 'save_calibration',
    'ConsistencyConfig', 'ConsistencyScore', 'ConsistencyScorer', 'OverlapStatus',
    'CommandGate', 'Gate', 'GateConfig', 'Mode', 'Transition',
    'MonitorConfig', 'MonitorStatus', 'RuntimeMonitor',
    'Fault', 'FaultKind', 'WatchdogConfig', 'Watchdogs',
]
