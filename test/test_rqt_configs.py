"""The operator-side configuration files are real and consistent with the contract.

``config/operator.yaml`` loads into the config dataclasses with ROS parameter types only;
``config/diagnostic_aggregator.yaml`` groups every genpolicy status name exactly once; and
``config/genpolicy.rviz`` shows the robot, TF and the safety markers in the ``world`` frame.
"""

import yaml

from genpolicy_ros.paths import config_path
from genpolicy_ros.recording.config import RecorderConfig, ReportConfig
from genpolicy_ros.recording.msgdef import import_message
from genpolicy_ros.rqt.config import GuiConfig

STATUS_NAMES = ['sim_node: arm', 'policy_node: inference', 'safety_filter_node: status',
                'safety_filter_node: barrier table', 'monitor_node: gate']


def _ros_param_type_ok(value) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list) and value:
        kinds = {type(v) for v in value}
        return len(kinds) == 1 and kinds <= {bool, int, float, str}
    if isinstance(value, dict):
        return all(_ros_param_type_ok(v) for v in value.values())
    return False


def test_operator_yaml_loads_and_uses_ros_parameter_types():
    """Every block loads; every value is a ROS parameter type; every type imports."""
    doc = yaml.safe_load(config_path('operator.yaml').read_text())
    for node in ('monitor_gui', 'mcap_recorder', 'run_report'):
        assert _ros_param_type_ok(doc[node]['ros__parameters']), node
    gui, rec, rep = GuiConfig.load(), RecorderConfig.load(), ReportConfig.load()
    assert gui.redraw_hz > 0 and rec.qos_depth >= 1 and rep.dpi > 0
    for _, type_name in rec.topic_types():
        assert import_message(type_name).__name__ == type_name.split('/')[-1]
    for box in (rep.workspace, rep.task_area):
        (x0, x1), (y0, y1) = box.bounds_m()
        assert x0 < x1 and y0 < y1


def test_diagnostic_aggregator_groups_each_status_once():
    """Each genpolicy status name lands in exactly one analyzer group."""
    doc = yaml.safe_load(config_path('diagnostic_aggregator.yaml').read_text())
    params = doc['analyzers']['ros__parameters']
    groups = {k: v for k, v in params.items() if isinstance(v, dict)}
    assert set(groups) == {'arm', 'policy', 'safety_filter', 'monitor'}
    for name, g in groups.items():
        assert g['type'] == 'diagnostic_aggregator/GenericAnalyzer' and g['path'], name
        assert _ros_param_type_ok(g), name
    for status in STATUS_NAMES:
        hits = [n for n, g in groups.items()
                if any(status.startswith(p) for p in g['startswith'])]
        assert len(hits) == 1, (status, hits)
    for g in groups.values():
        for expected in g.get('expected', []):
            assert any(expected.startswith(p) for p in g['startswith'])


def test_rviz_config_shows_robot_tf_and_safety_markers():
    """Show the RobotModel (/robot_description), TF, a grid and the markers in world."""
    doc = yaml.safe_load(config_path('genpolicy.rviz').read_text())
    manager = doc['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'world'
    displays = {d['Class']: d for d in manager['Displays']}
    assert displays['rviz_default_plugins/RobotModel']['Description Topic']['Value'] == \
        '/robot_description'
    assert displays['rviz_default_plugins/MarkerArray']['Topic']['Value'] == \
        '/genpolicy/safety/markers'
    assert displays['rviz_default_plugins/TF']['Enabled']
    assert displays['rviz_default_plugins/Grid']['Reference Frame'] == '<Fixed Frame>'
