"""Read the ``ros__parameters`` of one node from ``config/<file>.yaml`` (no rclpy needed).

Each node's YAML is the one definition of its defaults. Settings of the ROS wrapper itself
(rates of its timers, autostart, ...) sit in a ``node:`` block beside the core's settings;
cores read everything else. ``genpolicy_ros.nodes.params`` declares the same file on a node.
"""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import yaml

from genpolicy_ros.paths import config_path

NODE_BLOCK = 'node'


def read_ros_parameters(config_file: str, node_name: str,
                        path: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Return the nested ``<node_name>: ros__parameters`` dict of ``config/<config_file>``."""
    path = Path(path) if path is not None else config_path(config_file)
    with open(path, 'r', encoding='utf-8') as f:
        doc = yaml.safe_load(f) or {}
    try:
        params = doc[node_name]['ros__parameters']
    except (KeyError, TypeError) as exc:
        raise KeyError(f'{path} has no "{node_name}: ros__parameters:" block') from exc
    if not isinstance(params, dict):
        raise ValueError(f'{path}: {node_name}.ros__parameters must be a mapping')
    return params


def split_node_block(params: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split parameters into ``(core settings, node-wrapper settings)``."""
    core = {k: v for k, v in params.items() if k != NODE_BLOCK}
    return core, dict(params.get(NODE_BLOCK) or {})


def read_core_parameters(config_file: str, node_name: str,
                         path: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Return the core's part of the parameters (everything but the ``node:`` block)."""
    return split_node_block(read_ros_parameters(config_file, node_name, path))[0]
