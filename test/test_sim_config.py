"""config/sim.yaml: loads into SimConfig, strict keys, ROS parameter types only."""

import pytest

from genpolicy_ros.config_io import read_core_parameters
from genpolicy_ros.sim.config import CameraConfig, SimConfig


def _raw():
    """Return the raw sim_node parameters from the YAML."""
    return read_core_parameters('sim.yaml', 'sim_node')


def test_loads_with_expected_values():
    """Check: loads with expected values."""
    cfg = SimConfig.load()
    assert cfg.physics_hz == 1000.0 and cfg.camera.rate_hz == 15.0
    assert cfg.joint_state_rate_hz == 250.0 and cfg.command_timeout_s == 0.1
    assert cfg.gui is False
    assert cfg.arm.home_q_rad == [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
    assert cfg.task.tcp_push_z_m == pytest.approx(
        cfg.task.push_height_m + cfg.task.tcp_above_fingertips_m)


def test_rejects_unknown_and_missing_keys():
    """Check: rejects unknown and missing keys."""
    raw = _raw()
    cam = dict(raw['camera'])
    cam['typo_px'] = 1
    with pytest.raises(ValueError, match='typo_px'):
        CameraConfig.from_dict(cam)
    cam = dict(raw['camera'])
    del cam['fov_deg']
    with pytest.raises(ValueError, match='fov_deg'):
        CameraConfig.from_dict(cam)


def _check_ros_types(node, path=''):
    """Assert every leaf is a ROS parameter type (recursing into dicts)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_ros_types(value, f'{path}.{key}' if path else key)
    elif isinstance(node, list):
        assert node, f'{path}: empty list has no ROS type'
        kinds = {type(v) for v in node}
        assert len(kinds) == 1, f'{path}: mixed list {kinds}'
        assert kinds.pop() in (bool, int, float, str), f'{path}: nested list'
    else:
        assert isinstance(node, (bool, int, float, str)), f'{path}: {type(node)}'


def test_only_ros_parameter_types():
    """Check: only ros parameter types."""
    _check_ros_types(_raw())
