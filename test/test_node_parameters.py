"""Every node declares exactly the parameters of its YAML, and the YAML builds the core config.

One definition of every default: config/<node>.yaml. A parameter the node declares but the YAML
lacks (or the reverse) would be a second, hidden default.
"""

import rclpy
from rclpy.context import Context
import pytest

from genpolicy_ros.nodes.params import load_node_params

NODES = [
    ('genpolicy_ros.nodes.sim_node', 'SimNode', 'sim.yaml', 'sim_node',
     dict(parameter_overrides=[rclpy.parameter.Parameter('node.autostart', value=False)])),
    ('genpolicy_ros.nodes.safety_filter_node', 'SafetyFilterNode', 'safety.yaml',
     'safety_filter_node', {}),
    ('genpolicy_ros.nodes.monitor_node', 'MonitorNode', 'monitor.yaml', 'monitor_node', {}),
    ('genpolicy_ros.nodes.policy_node', 'PolicyNode', 'policy.yaml', 'policy_node',
     dict(parameter_overrides=[rclpy.parameter.Parameter('node.policy_type', value='expert')])),
    ('genpolicy_ros.nodes.driver_node', 'FrankaDriverNode', 'driver.yaml', 'driver_node',
     dict(parameter_overrides=[rclpy.parameter.Parameter('node.autostart', value=False)])),
    ('genpolicy_ros.nodes.camera_node', 'CameraNode', 'camera.yaml', 'camera_node',
     dict(parameter_overrides=[rclpy.parameter.Parameter('device', value='/nonexistent')])),
]


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.mark.parametrize('module,cls,config_file,node_name,kwargs', NODES)
def test_declared_parameters_match_yaml(context, module, cls, config_file, node_name, kwargs):
    node_cls = getattr(__import__(module, fromlist=[cls]), cls)
    node = node_cls(context=context, **kwargs)
    try:
        # rclpy declares these on every node; they are not ours.
        builtin = {'use_sim_time', 'start_type_description_service'}
        declared = {name for name in node._parameters if name not in builtin}
        yaml_params = load_node_params(config_file, node_name)
        assert declared == set(yaml_params), (
            f'declared but not in YAML: {sorted(declared - set(yaml_params))}; '
            f'in YAML but not declared: {sorted(set(yaml_params) - declared)}')
        for name, value in yaml_params.items():
            if name in ('node.autostart', 'node.policy_type', 'device'):
                continue  # overridden above so the test needs no PyBullet/torch run
            got = node.get_parameter(name).value
            assert list(got) == list(value) if isinstance(value, list) else got == value, name
    finally:
        node.destroy_node()
