"""Configuration of the operator tools, read from ``config/operator.yaml``.

The dataclasses have no defaults: the YAML is the one definition of every value. Nested
dataclasses mirror nested YAML dicts (ROS flattens them to dotted names such as
``workspace.config_file``). Nothing here imports rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import re
import typing
from typing import Any, Dict, List, Optional


from genpolicy_ros.config_io import build_config, read_ros_parameters

CONFIG_FILE = 'operator.yaml'


def node_params(node_name: str, path: Optional[Path] = None,
                config_file: str = CONFIG_FILE) -> Dict[str, Any]:
    """Return the nested ``ros__parameters`` of ``node_name`` in a config YAML."""
    return dict(read_ros_parameters(config_file, node_name, path))


def dotted_get(params: Dict[str, Any], dotted: str) -> Any:
    """Look up ``a.b.c`` (or ``a.b[1]`` for a list element) in nested dicts."""
    match = re.fullmatch(r'(.+)\[(\d+)\]', dotted)
    node: Any = params
    for part in (match.group(1) if match else dotted).split('.'):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f'parameter {dotted!r} not found (missing {part!r})')
        node = node[part]
    if match:
        index = int(match.group(2))
        if not isinstance(node, list) or index >= len(node):
            raise KeyError(f'parameter {dotted!r}: no element {index}')
        node = node[index]
    return node


@dataclass
class RecorderConfig:
    """What :class:`~genpolicy_ros.recording.recorder.McapRecorder` records and how."""

    qos_depth: int
    chunk_size_bytes: int
    compression: str            # zstd | lz4 | none
    topics: List[str]
    types: List[str]            # pkg/msg/Type, one per topic
    sensor_data_topics: List[str]

    NODE_NAME: typing.ClassVar[str] = 'mcap_recorder'

    def __post_init__(self) -> None:
        if len(self.topics) != len(self.types):
            raise ValueError(f'{len(self.topics)} topics but {len(self.types)} types')
        if self.compression not in ('zstd', 'lz4', 'none'):
            raise ValueError(f'compression must be zstd, lz4 or none, not {self.compression!r}')
        if self.qos_depth < 1 or self.chunk_size_bytes < 1024:
            raise ValueError('qos_depth must be >= 1 and chunk_size_bytes >= 1024')

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'RecorderConfig':
        """Build from the (nested) ``ros__parameters`` dict."""
        return build_config(cls, params)

    @classmethod
    def load(cls, path: Optional[Path] = None) -> 'RecorderConfig':
        """Read ``config/operator.yaml`` (or ``path``)."""
        return cls.from_dict(node_params(cls.NODE_NAME, path))

    def topic_types(self) -> List[typing.Tuple[str, str]]:
        """Return ``[(topic, type), ...]``."""
        return list(zip(self.topics, self.types))


@dataclass
class BoxSource:
    """Where an x-y box is defined (another node's YAML), so it is stated once.

    Keys are dotted parameter names, optionally indexing a list (``task.workspace_x_m[0]``).
    """

    label: str
    config_file: str
    node_name: str
    x_min_key: str
    x_max_key: str
    y_min_key: str
    y_max_key: str

    def bounds_m(self) -> typing.Tuple[List[float], List[float]]:
        """Return ``([x_min, x_max], [y_min, y_max])`` read from the referenced YAML."""
        params = node_params(self.node_name, config_file=self.config_file)
        x = [float(dotted_get(params, k)) for k in (self.x_min_key, self.x_max_key)]
        y = [float(dotted_get(params, k)) for k in (self.y_min_key, self.y_max_key)]
        if not (x[0] < x[1] and y[0] < y[1]):
            raise ValueError(f'{self.label}: bounds must be increasing, got {x} and {y}')
        return x, y


@dataclass
class ReportConfig:
    """Settings of the offline run report (``genpolicy-report``)."""

    dpi: int
    figure_width_in: float
    panel_height_in: float
    max_plot_points: int
    max_barrier_lines: int
    urdf_file: str
    ee_link: str
    workspace: BoxSource          # the safety filter's EE box (a barrier)
    task_area: BoxSource          # where the task happens (drawn for context)

    NODE_NAME: typing.ClassVar[str] = 'run_report'

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'ReportConfig':
        """Build from the (nested) ``ros__parameters`` dict."""
        return build_config(cls, params)

    @classmethod
    def load(cls, path: Optional[Path] = None) -> 'ReportConfig':
        """Read ``config/operator.yaml`` (or ``path``)."""
        return cls.from_dict(node_params(cls.NODE_NAME, path))
