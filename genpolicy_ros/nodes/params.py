"""Declare a node's parameters from its YAML file, the one definition of every default.

Each node owns ``config/<file>.yaml`` with a ``<node_name>: ros__parameters:`` block. The node
declares exactly those parameters (with the YAML value as default and a descriptor), so a value
given at launch overrides the YAML and an unknown name is an error, as in any ROS 2 node.
"""

from pathlib import Path
from typing import Any, Dict, Optional

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from genpolicy_ros.config_io import flatten, read_ros_parameters, unflatten

# Units are part of the parameter names (``_s``, ``_hz``, ``_mps`` ...); say them in descriptors.
_UNIT_SUFFIXES = {
    '_s': 'seconds', '_ms': 'milliseconds', '_hz': 'hertz', '_m': 'metres', '_mps': 'm/s',
    '_rad': 'radians', '_radps': 'rad/s', '_deg': 'degrees', '_us': 'microseconds',
}


def load_node_params(config_file: str, node_name: str,
                     path: Optional[Path] = None) -> Dict[str, Any]:
    """Return the flattened ``ros__parameters`` of ``node_name`` in ``config/<config_file>``."""
    return flatten(read_ros_parameters(config_file, node_name, path))


def _describe(name: str) -> ParameterDescriptor:
    leaf = name.rsplit('.', 1)[-1]
    unit = next((u for s, u in _UNIT_SUFFIXES.items() if leaf.endswith(s)), None)
    text = f'{name} [{unit}]' if unit else name
    return ParameterDescriptor(description=text + ' (default from the package YAML)')


def declare_from_yaml(node: Node, config_file: str, yaml_node_name: str) -> Dict[str, Any]:
    """Declare every parameter of ``yaml_node_name`` from ``config/<config_file>`` on ``node``.

    Returns the nested dict of the values in force after overrides, ready for a core config's
    ``from_dict``.
    """
    defaults = load_node_params(config_file, yaml_node_name)
    for name, value in defaults.items():
        node.declare_parameter(name, value, _describe(name))
    return unflatten({name: node.get_parameter(name).value for name in defaults})
