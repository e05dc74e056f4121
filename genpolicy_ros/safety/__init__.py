"""CBF-QP safety filter: barriers, QP backends (DAQP fast, cvxpy reference) and SafetyFilter.

Pure core (no ROS): the node ``genpolicy_ros.nodes.safety_filter_node`` only wires it to topics.
"""

from genpolicy_ros.safety.config import SafetyConfig
from genpolicy_ros.safety.filter import (
    BarrierReport, FilterResult, FilterStatus, RobotState, SafetyFilter)
from genpolicy_ros.safety.reference import ActionChunk, ChunkError, ReferenceTracker

__all__ = ['ActionChunk', 'BarrierReport', 'ChunkError', 'FilterResult', 'FilterStatus',
           'ReferenceTracker', 'RobotState', 'SafetyConfig', 'SafetyFilter']
