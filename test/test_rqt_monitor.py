"""Operator view: the pure model, the widget driven by real ROS topics and services, plugin.xml.

The widget runs offscreen (QT_QPA_PLATFORM=offscreen from conftest); ROS traffic is real DDS on
a private domain. Qt lives in the test's main thread and is pumped while waiting; the executor
spins the ROS nodes in the harness thread, as rqt does.
"""

import ast
import math
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

from conftest import REPO_ROOT
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
import numpy as np
import pytest
from rclpy.node import Node
from ros_harness import ros_graph, wait_for
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.rqt.config import GuiConfig
from genpolicy_ros.rqt.operator_state import OperatorState, parse_statuses, StatusRecord

# ----------------------------------------------------------------------------- pure model


def _barrier(name, value, active):
    return StatusRecord(f'safety_filter_node: barrier {name}', 1 if active else 0, '',
                        {'value': str(value), 'active': str(active)})


def test_state_counts_interventions_and_active_time():
    """Activations count rising edges; active time includes the running interval."""
    s = OperatorState(history_s=10.0, max_events=100)
    s.on_diagnostics(0.0, [_barrier('table', 0.20, False)])
    s.on_diagnostics(1.0, [_barrier('table', 0.01, True)])
    s.on_diagnostics(1.5, [_barrier('table', 0.02, False)])
    s.on_diagnostics(2.0, [_barrier('table', 0.00, True)])
    snap = s.snapshot(now_s=2.25)
    (row,) = snap.barriers
    assert row.name == 'table' and row.active and row.activations == 2
    assert row.active_time_s == pytest.approx(0.5 + 0.25)
    kinds = [e.kind for e in snap.events]
    assert kinds == ['intervention', 'release', 'intervention']
    assert 'released after 0.50 s' in snap.events[1].text


def test_state_mode_changes_reason_from_gate_and_stale_age():
    """The gate diagnostic's reason completes a mode change first seen on the mode topic."""
    s = OperatorState(history_s=10.0, max_events=100)
    s.on_mode(1.0, 'NOMINAL')
    s.on_mode(2.0, 'HOLD')                       # topic first, reason comes with the gate
    gate = StatusRecord('monitor_node: gate', 2, 'holding',
                        {'mode': 'HOLD', 'reason': 'score above threshold', 'score': '3.5',
                         'threshold': '1.2'})
    s.on_diagnostics(2.01, [gate])
    snap = s.snapshot(now_s=5.0)
    assert snap.mode == 'HOLD' and snap.reason == 'score above threshold'
    assert [e.text for e in snap.events] == [
        'mode NOMINAL', 'mode NOMINAL -> HOLD: score above threshold']
    assert snap.score == 3.5 and snap.threshold == 1.2
    assert snap.mode_age_s == pytest.approx(5.0 - 2.01)


def test_state_series_are_trimmed_to_history_and_events_bounded():
    """Plots keep ``history_s`` seconds; the event log keeps ``max_events`` entries."""
    s = OperatorState(history_s=1.0, max_events=3)
    for k in range(100):
        s.on_twist('proposed', 0.05 * k, (0.3, 0.4, 0.0))
    t, v = s.snapshot().proposed
    assert t[-1] - t[0] <= 1.0 and np.allclose(v, 0.5)
    for k in range(5):
        s.on_mode(float(k), 'HOLD' if k % 2 else 'NOMINAL')
    events = s.snapshot().events
    assert len(events) == 3 and events[-1].seq == 5


def test_parse_statuses_accepts_rclpy_messages():
    """Levels arrive as one byte from rclpy and become ints."""
    status = diag.status('safety_filter_node', 'barrier table', diag.WARN, 'active',
                         {'value': 0.01, 'active': True})
    msg = diag.array(_stamp(), [status])
    (rec,) = parse_statuses(msg)
    assert rec.level == 1 and rec.values == {'value': '0.01', 'active': 'True'}


def _stamp():
    from builtin_interfaces.msg import Time
    return Time(sec=1, nanosec=0)


# ----------------------------------------------------------------------------- ROS + Qt
class ScenarioPublisher(Node):
    """Publishes what the safety filter and the monitor publish, as they would."""

    def __init__(self, context):
        super().__init__('scenario_publisher', context=context)
        self.proposed = self.create_publisher(TwistStamped, '/genpolicy/filter/proposed_twist',
                                              10)
        self.safe = self.create_publisher(TwistStamped, '/genpolicy/filter/safe_twist', 10)
        self.diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.mode = self.create_publisher(String, '/genpolicy/monitor/mode', 10)
        self.score = self.create_publisher(Float64, '/genpolicy/monitor/score', 10)
        self.threshold = self.create_publisher(Float64, '/genpolicy/monitor/threshold', 10)

    def step(self, k: int, mode: str, reason: str, barriers: dict) -> None:
        """Publish one cycle: twists, score, threshold, mode and the diagnostics array."""
        stamp = self.get_clock().now().to_msg()
        v_prop = 0.25 + 0.05 * math.sin(0.2 * k)
        cap = 0.12 if any(active for _, active in barriers.values()) else 1.0
        for pub, v in ((self.proposed, v_prop), (self.safe, min(v_prop, cap))):
            msg = TwistStamped()
            msg.header.stamp = stamp
            msg.header.frame_id = 'world'
            msg.twist.linear.x, msg.twist.linear.y = 0.8 * v, 0.6 * v
            pub.publish(msg)
        score = 0.6 + 0.02 * k if mode != 'NOMINAL' else 0.5 + 0.1 * math.sin(0.3 * k)
        self.score.publish(Float64(data=score))
        self.threshold.publish(Float64(data=1.2))
        self.mode.publish(String(data=mode))
        statuses = [diag.status('safety_filter_node', f'barrier {name}',
                                diag.WARN if active else diag.OK,
                                'active' if active else 'inactive',
                                {'value': float(h), 'active': bool(active)})
                    for name, (h, active) in barriers.items()]
        any_active = any(a for _, a in barriers.values())
        statuses.append(diag.status(
            'safety_filter_node', 'status', diag.WARN if any_active else diag.OK,
            'Close to the table, decelerating' if any_active else 'Command passed unchanged'))
        statuses.append(diag.status(
            'monitor_node', 'gate', {'NOMINAL': 0, 'SLOW': 1, 'HOLD': 2}[mode], reason,
            {'mode': mode, 'reason': reason, 'score': float(score), 'threshold': 1.2}))
        self.diag.publish(diag.array(stamp, statuses))


class MonitorServices(Node):
    """A stand-in monitor serving the real Trigger services: hold latches, reset releases."""

    def __init__(self, context):
        super().__init__('monitor_node', context=context)
        self.holding = False
        self.calls = []
        self.create_service(Trigger, '/monitor_node/hold', self._hold)
        self.create_service(Trigger, '/monitor_node/reset', self._reset)

    def _hold(self, request, response):
        self.calls.append('hold')
        self.holding = True
        response.success, response.message = True, 'HOLD latched by operator'
        return response

    def _reset(self, request, response):
        self.calls.append('reset')
        response.success = self.holding
        response.message = 'released to NOMINAL' if self.holding else 'not in HOLD'
        self.holding = False
        return response


@pytest.fixture(scope='module')
def qapp():
    """One offscreen QApplication for the module."""
    from genpolicy_ros.rqt.qt import QtWidgets
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication(['test'])


def _pump_until(app, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    app.processEvents()
    return predicate()


def test_widget_shows_live_ros_state_and_calls_services(qapp, tmp_path):
    """Real topics drive mode, table, log and plots; buttons reach real Trigger services."""
    from genpolicy_ros.rqt.bridge import OperatorBridge
    from genpolicy_ros.rqt.monitor_widget import MonitorWidget

    config = GuiConfig.load()
    state = OperatorState(config.history_s, config.max_events)
    holder = {}

    def gui_node(context):
        node = Node('genpolicy_monitor_gui', context=context)
        holder['bridge'] = OperatorBridge(node, state, config.qos_depth,
                                          config.service_timeout_s)
        return node

    with ros_graph(ScenarioPublisher, MonitorServices, gui_node) as (_, probe, nodes):
        scenario, services, _ = nodes
        bridge = holder['bridge']
        widget = MonitorWidget(state, bridge, config)
        widget.resize(config.window_width_px, config.window_height_px)
        widget.show()
        assert wait_for(lambda: scenario.count_subscribers('/diagnostics') >= 1, 5.0)
        assert wait_for(lambda: bridge._clients['hold'].service_is_ready(), 5.0)

        barriers = {'table': (0.20, False), 'workspace_x_max': (0.08, False),
                    'joint4_lower': (0.35, False), 'self_collision_hand_link0': (0.12, False)}
        for k in range(15):
            scenario.step(k, 'NOMINAL', 'consistent', barriers)
            time.sleep(0.01)
        assert _pump_until(qapp, lambda: widget.displayed()['mode'] == 'NOMINAL', 5.0)
        barriers['table'] = (0.012, True)
        for k in range(15, 30):
            scenario.step(k, 'SLOW', 'score 0.95 near threshold 1.2', barriers)
            time.sleep(0.01)
        hold_reason = 'score 1.31 above threshold 1.2 for 3 chunks'
        for k in range(30, 40):
            scenario.step(k, 'HOLD', hold_reason, barriers)
            time.sleep(0.01)
        assert _pump_until(qapp, lambda: widget.displayed()['reason'] == hold_reason, 5.0)
        shown = widget.displayed()
        assert shown['mode'] == 'HOLD'
        rows = {r[0]: r for r in shown['barriers']}
        assert set(rows) == set(barriers)
        assert rows['table'][1:4] == ['0.012', 'yes', '1']
        assert rows['joint4_lower'][2:4] == ['no', '0']
        assert float(rows['table'][4]) > 0.0
        log = '\n'.join(shown['events'])
        assert 'mode NOMINAL -> SLOW' in log and f'mode SLOW -> HOLD: {hold_reason}' in log
        assert 'barrier table active (h = 0.012)' in log
        assert 'filter: Close to the table, decelerating' in log
        assert shown['events'][0].endswith(hold_reason)          # newest first
        assert shown['safe_points'] >= 30
        assert 'threshold: 1.2' in shown['score']

        # Hold button -> real Trigger service -> reply shown.
        widget.hold_button.click()
        assert _pump_until(qapp, lambda: 'hold: OK' in widget.displayed()['reply'], 5.0)
        assert widget.displayed()['reply'] == 'hold: OK: HOLD latched by operator'
        assert services.calls == ['hold']
        widget.reset_button.click()
        assert _pump_until(qapp, lambda: 'reset: OK' in widget.displayed()['reply'], 5.0)
        assert widget.displayed()['reply'] == 'reset: OK: released to NOMINAL'
        assert any('reset: OK' in line for line in widget.displayed()['events'])

        shot = tmp_path / 'operator_widget.png'
        widget.refresh()
        assert widget.grab().save(str(shot), 'PNG')
        assert shot.stat().st_size > 10_000
        out = os.environ.get('GENPOLICY_SCREENSHOT_OUT')  # for refreshing docs/ by hand
        if out:
            widget.grab().save(out, 'PNG')

        # Silence: the indicator goes stale (grey) instead of showing an old mode as live.
        state_age = config.stale_after_s + 0.3
        assert _pump_until(qapp, lambda: widget.displayed()['reason'].startswith('STALE'),
                           state_age + 2.0)
        widget.stop()
        widget.close()


def test_service_unavailable_and_timeout_are_reported_without_blocking(qapp):
    """No server and no reply both end as a FAILED reply; clicks return at once."""
    from genpolicy_ros.rqt.bridge import OperatorBridge
    from genpolicy_ros.rqt.monitor_widget import MonitorWidget

    config = GuiConfig.load()
    state = OperatorState(config.history_s, config.max_events)
    release = threading.Event()

    class SlowMonitor(Node):
        def __init__(self, context):
            super().__init__('slow_monitor', context=context)
            self.create_service(Trigger, '/monitor_node/reset', self._reset)

        def _reset(self, request, response):
            release.wait(10.0)               # a monitor that never answers in time
            response.success, response.message = True, 'late'
            return response

    holder = {}

    def gui_node(context):
        node = Node('gui', context=context)
        holder['bridge'] = OperatorBridge(node, state, config.qos_depth, 0.5)
        return node

    with ros_graph(SlowMonitor, gui_node) as _:
        bridge = holder['bridge']
        widget = MonitorWidget(state, bridge, config)
        assert wait_for(lambda: bridge._clients['reset'].service_is_ready(), 5.0)
        t0 = time.monotonic()
        widget.hold_button.click()                         # nobody serves hold
        assert time.monotonic() - t0 < 0.5
        assert 'not available' in widget.displayed()['reply']
        widget.reset_button.click()
        assert time.monotonic() - t0 < 0.5                 # the click never waits for a reply
        assert _pump_until(qapp, lambda: 'no reply within 0.5 s' in
                           widget.displayed()['reply'], 5.0)
        release.set()
        widget.stop()


def test_standalone_screenshot(tmp_path):
    """``genpolicy-monitor-gui --screenshot`` renders offscreen, saves a PNG and exits 0."""
    shot = tmp_path / 'standalone.png'
    env = dict(os.environ, QT_QPA_PLATFORM='offscreen', PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, '-m', 'genpolicy_ros.rqt.standalone',
                           '--screenshot', str(shot), '--delay-s', '0.5'],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert shot.stat().st_size > 10_000
    from genpolicy_ros.rqt.qt import QtGui
    image = QtGui.QImage(str(shot))
    assert image.width() >= 800 and image.height() >= 600


# ----------------------------------------------------------------------------- plugin
def test_plugin_xml_names_an_existing_plugin_class():
    """plugin.xml is well-formed and its class exists in the module it names."""
    root = ET.parse(REPO_ROOT / 'plugin.xml').getroot()
    assert root.tag == 'library'
    (cls,) = root.findall('class')
    assert cls.get('base_class_type') == 'rqt_gui_py::Plugin'
    module, _, class_name = cls.get('type').rpartition('.')
    source = REPO_ROOT / (module.replace('.', '/') + '.py')
    tree = ast.parse(source.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert class_name in classes
    assert [b.id for b in classes[class_name].bases] == ['Plugin']
    assert cls.find('qtgui/label').text and cls.find('description').text.strip()
    assert 'plugin="${prefix}/plugin.xml"' in (REPO_ROOT / 'package.xml').read_text()


def test_plugin_loads_through_rqt(qapp):
    """Where rqt exists, rqt's own provider discovers, loads and unloads the plugin."""
    pytest.importorskip('rqt_gui_py', reason='rqt_gui_py is not installable from PyPI; this '
                        'runs where ROS 2 with rqt is sourced and genpolicy_ros is installed')
    from qt_gui.plugin_context import PluginContext
    from rqt_gui_py.ros_py_plugin_provider import RosPyPluginProvider

    from genpolicy_ros.rqt.monitor_widget import MonitorWidget
    from genpolicy_ros.rqt.plugin import MonitorPlugin
    from genpolicy_ros.rqt.qt import QtCore

    class Handler(QtCore.QObject):
        """The slice of qt_gui's PluginHandler that a plugin context uses."""

        def __init__(self):
            super().__init__()
            self.widgets = []

        def instance_id(self):
            return type('InstanceId', (), {'serial_number': 1})()

        def add_widget(self, widget):
            self.widgets.append(widget)

        def argv(self):
            return []

    provider = RosPyPluginProvider()
    try:
        ids = [d.plugin_id() for d in provider.discover(None)]
        assert 'genpolicy_ros/GenpolicyMonitor' in ids, ids
        handler = Handler()
        plugin = provider.load('genpolicy_ros/GenpolicyMonitor', PluginContext(handler))
        assert isinstance(plugin, MonitorPlugin)
        (widget,) = handler.widgets
        assert isinstance(widget, MonitorWidget)
        plugin.shutdown_plugin()
        provider.unload(plugin)
    finally:
        provider.shutdown()
