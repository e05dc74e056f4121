"""``genpolicy-monitor-gui``: the operator widget in its own window, with its own rclpy node.

``--screenshot PATH`` renders the window offscreen, waits ``screenshot_delay_s`` for data,
saves a PNG and exits (for docs, CI artifacts and remote checks without a display).
"""

import argparse
import os
import signal
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Open the monitor window (``--screenshot PATH`` to grab it offscreen and exit)."""
    parser = argparse.ArgumentParser(description='genpolicy operator monitor window')
    parser.add_argument('--screenshot', metavar='PATH', default=None,
                        help='render offscreen, save a PNG after the delay and exit')
    parser.add_argument('--delay-s', type=float, default=None,
                        help='screenshot delay (default: screenshot_delay_s of the YAML)')
    parser.add_argument('--config', default=None, help='operator YAML (default: package one)')
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.screenshot:
        os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from genpolicy_ros.nodes.dds import choose_dds_profile
    from genpolicy_ros.nodes.runner import SpinThread
    from genpolicy_ros.rqt.bridge import OperatorBridge
    from genpolicy_ros.rqt.config import GuiConfig
    from genpolicy_ros.rqt.monitor_widget import MonitorWidget
    from genpolicy_ros.rqt.operator_state import OperatorState
    from genpolicy_ros.rqt.qt import QtCore, QtWidgets

    config = GuiConfig.load(args.config)
    choose_dds_profile()
    rclpy.init(args=ros_args)
    node = rclpy.create_node('genpolicy_monitor_gui')
    state = OperatorState(config.history_s, config.max_events)
    bridge = OperatorBridge(node, state, config.qos_depth, config.service_timeout_s)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = SpinThread(executor)
    spinner.start()

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(['genpolicy-monitor-gui'])
    widget = MonitorWidget(state, bridge, config)
    widget.resize(config.window_width_px, config.window_height_px)
    widget.show()
    result = {'ok': True}
    # Qt's event loop swallows Ctrl-C: quit on SIGINT, and wake Python regularly to notice it.
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    wake = QtCore.QTimer()
    wake.timeout.connect(lambda: None)
    wake.start(200)
    if args.screenshot:
        delay_s = config.screenshot_delay_s if args.delay_s is None else args.delay_s

        def grab() -> None:
            widget.refresh()
            result['ok'] = widget.grab().save(args.screenshot, 'PNG')
            app.quit()
        QtCore.QTimer.singleShot(int(delay_s * 1000), grab)
    try:
        app.exec_()
    except KeyboardInterrupt:
        pass
    finally:
        widget.stop()
        bridge.destroy()
        spinner.stop()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if args.screenshot:
        print(f'screenshot {"saved to " + args.screenshot if result["ok"] else "FAILED"}')
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
