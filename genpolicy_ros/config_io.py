"""Read the ``ros__parameters`` of one node from ``config/<file>.yaml`` (no rclpy needed).

Each node's YAML is the one definition of its defaults. Settings of the ROS wrapper itself
(rates of its timers, autostart, ...) sit in a ``node:`` block beside the core's settings;
cores read everything else. ``genpolicy_ros.nodes.params`` declares the same file on a node.
"""

import dataclasses
from pathlib import Path
import typing
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import yaml

from genpolicy_ros.paths import config_path

NODE_BLOCK = 'node'
T = TypeVar('T')


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


def build_config(cls: Type[T], params: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a nested dict; unknown or missing keys raise ValueError.

    Nested dataclass fields are built recursively from nested dicts; ``float``, ``int`` and
    ``List[...]`` fields are converted (an ``int`` field refuses 2.5 and booleans), so a YAML
    typo or a missing value fails at start-up, not in the middle of a run.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f'{cls.__name__}: expected a mapping, got {type(params).__name__}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = set(params) - names, names - set(params)
    if unknown or missing:
        raise ValueError(f'{cls.__name__}: unknown keys {sorted(unknown)}, '
                         f'missing keys {sorted(missing)}')
    kwargs: Dict[str, Any] = {}
    for name in names:
        value, hint = params[name], hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ValueError(f'{cls.__name__}.{name} must be a mapping')
            value = build_config(hint, value)
        elif hint is float:
            value = float(value)
        elif hint is int:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f'{cls.__name__}.{name} must be an integer, got {value!r}')
            value = int(value)
        elif typing.get_origin(hint) in (list, List):
            value = [typing.get_args(hint)[0](v) for v in value]
        kwargs[name] = value
    return cls(**kwargs)


def flatten(params: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
    """Flatten nested dicts into ROS 2 dotted parameter names."""
    out: Dict[str, Any] = {}
    for key, value in params.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def unflatten(params: Mapping[str, Any]) -> Dict[str, Any]:
    """Turn ROS 2's dotted parameter names (``gate.recovery_time_s``) back into nested dicts."""
    out: Dict[str, Any] = {}
    for key, value in params.items():
        node = out
        parts = key.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f'parameter {key!r} conflicts with a scalar parameter')
        node[parts[-1]] = value
    return out
