"""rqt plugin wrapping the operator widget (``rqt --standalone genpolicy_monitor`` or the menu).

Imports only inside an rqt install (rqt_gui_py); the widget and model it wraps are tested
without rqt. The plugin uses the node rqt gives it (``context.node``), which rqt spins.
"""

from rqt_gui_py.plugin import Plugin

from genpolicy_ros.rqt.bridge import OperatorBridge
from genpolicy_ros.rqt.config import GuiConfig
from genpolicy_ros.rqt.monitor_widget import MonitorWidget
from genpolicy_ros.rqt.operator_state import OperatorState


class MonitorPlugin(Plugin):
    """genpolicy monitor: mode, Hold/Reset, speeds, score, barriers and events."""

    def __init__(self, context):
        super().__init__(context)
        self.setObjectName('GenpolicyMonitor')
        config = GuiConfig.load()
        self._state = OperatorState(config.history_s, config.max_events)
        self._bridge = OperatorBridge(context.node, self._state, config.qos_depth,
                                      config.service_timeout_s)
        self._widget = MonitorWidget(self._state, self._bridge, config)
        if context.serial_number() > 1:
            self._widget.setWindowTitle(
                f'{self._widget.windowTitle()} ({context.serial_number()})')
        context.add_widget(self._widget)

    def shutdown_plugin(self) -> None:
        """Stop redrawing and drop the subscriptions and clients (rqt owns the node)."""
        self._widget.stop()
        self._bridge.destroy()

    def save_settings(self, plugin_settings, instance_settings) -> None:
        """Nothing to persist: every setting lives in config/operator.yaml."""

    def restore_settings(self, plugin_settings, instance_settings) -> None:
        """Nothing to restore (see :meth:`save_settings`)."""
