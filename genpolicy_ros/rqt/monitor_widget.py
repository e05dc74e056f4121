"""The operator view: monitor mode, Hold/Reset, live plots, barrier table and event log.

Pure Qt (through :mod:`genpolicy_ros.rqt.qt`); it knows nothing of ROS. It renders snapshots of
an :class:`~genpolicy_ros.rqt.operator_state.OperatorState` on a timer (``redraw_hz``), so topic
rates never drive repaints, and it acts through an :class:`OperatorActions` object (the
:class:`~genpolicy_ros.rqt.bridge.OperatorBridge` in rqt and in the standalone window).
"""

import math
from typing import Dict, List, Optional, Protocol

import numpy as np

from genpolicy_ros.rqt.config import GuiConfig
from genpolicy_ros.rqt.operator_state import (ERROR, Event, OK, OperatorState, Snapshot,
                                              UNKNOWN, WARN)
from genpolicy_ros.rqt.qt import pyqtgraph as pg, QtCore, QtGui, QtWidgets

MODE_COLOURS = {'NOMINAL': '#2e7d32', 'SLOW': '#f9a825', 'HOLD': '#c62828', UNKNOWN: '#757575'}
LEVEL_COLOURS = {OK: '#1b5e20', WARN: '#8d6e00', ERROR: '#b71c1c'}
REPLY_CHARS = 160  # longest reply shown in full under the buttons (layout, not tuning)
BARRIER_COLUMNS = ['Barrier', 'h value', 'Active', 'Activations', 'Active time [s]']


class OperatorActions(Protocol):
    """What the widget needs from the ROS side."""

    def request(self, service: str) -> bool:
        """Start a non-blocking call of ``hold`` or ``reset``."""

    def poll(self) -> object:
        """Expire service calls that timed out."""

    def now_s(self) -> float:
        """Return the current time on the clock the state is stamped with."""


class MonitorWidget(QtWidgets.QWidget):
    """Operator view of the safety filter and runtime monitor."""

    def __init__(self, state: OperatorState, actions: OperatorActions, config: GuiConfig,
                 parent: Optional[QtWidgets.QWidget] = None):
        super().__init__(parent)
        self.setObjectName('GenpolicyMonitorWidget')
        self.setWindowTitle('genpolicy monitor')
        self.state, self.actions, self.config = state, actions, config
        self._drawn_version = -1
        self._drawn_events = -1
        self._build()
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(max(1, int(round(1000.0 / config.redraw_hz))))

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QtWidgets.QVBoxLayout(self)

        top = QtWidgets.QHBoxLayout()
        self.mode_label = QtWidgets.QLabel(UNKNOWN)
        self.mode_label.setObjectName('modeIndicator')
        self.mode_label.setAlignment(QtCore.Qt.AlignCenter)
        self.mode_label.setMinimumSize(260, 90)
        font = self.mode_label.font()
        font.setPointSize(28)
        font.setBold(True)
        self.mode_label.setFont(font)
        top.addWidget(self.mode_label)

        info = QtWidgets.QVBoxLayout()
        self.reason_label = QtWidgets.QLabel('waiting for the monitor...')
        self.reason_label.setWordWrap(True)
        bold = self.reason_label.font()
        bold.setPointSize(bold.pointSize() + 2)
        self.reason_label.setFont(bold)
        self.score_label = QtWidgets.QLabel('score: -   threshold: -')
        self.filter_label = QtWidgets.QLabel('filter: -')
        self.filter_label.setWordWrap(True)
        for w in (self.reason_label, self.score_label, self.filter_label):
            info.addWidget(w)
        top.addLayout(info, stretch=1)

        buttons = QtWidgets.QVBoxLayout()
        self.hold_button = QtWidgets.QPushButton('HOLD')
        self.hold_button.setStyleSheet('background-color: #c62828; color: white; '
                                       'font-weight: bold; padding: 10px;')
        self.hold_button.setToolTip('Latch the monitor in HOLD (the arm stops)')
        self.reset_button = QtWidgets.QPushButton('Reset')
        self.reset_button.setStyleSheet('padding: 10px;')
        self.reset_button.setToolTip('Leave HOLD (the monitor decides if it is safe to)')
        self.hold_button.clicked.connect(lambda: self._call('hold'))
        self.reset_button.clicked.connect(lambda: self._call('reset'))
        self.reply_label = QtWidgets.QLabel('')
        self.reply_label.setWordWrap(True)
        self.reply_label.setMinimumWidth(260)
        self.reply_label.setMinimumHeight(40)
        for w in (self.hold_button, self.reset_button, self.reply_label):
            buttons.addWidget(w)
        top.addLayout(buttons)
        root.addLayout(top)

        pg.setConfigOptions(antialias=True)
        plots = QtWidgets.QHBoxLayout()
        self.speed_plot = pg.PlotWidget(title='EE linear speed')
        self.score_plot = pg.PlotWidget(title='Monitor score vs threshold')
        for plot, unit in ((self.speed_plot, 'm/s'), (self.score_plot, '')):
            plot.setBackground('w')
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.addLegend(offset=(10, 10))
            plot.setLabel('bottom', 'time', units='s')
            plot.setLabel('left', unit)
            plot.getAxis('left').enableAutoSIPrefix(False)
            plot.getAxis('bottom').enableAutoSIPrefix(False)
            plot.setMinimumHeight(200)
            plots.addWidget(plot)
        self.proposed_curve = self.speed_plot.plot(
            name='proposed', pen=pg.mkPen('#9e9e9e', width=2))
        self.safe_curve = self.speed_plot.plot(name='safe (filtered)',
                                               pen=pg.mkPen('#1565c0', width=2))
        self.score_curve = self.score_plot.plot(name='score', pen=pg.mkPen('#6a1b9a', width=2))
        self.threshold_curve = self.score_plot.plot(
            name='threshold', pen=pg.mkPen('#c62828', width=2, style=QtCore.Qt.DashLine))
        root.addLayout(plots, stretch=2)

        bottom = QtWidgets.QHBoxLayout()
        self.barrier_table = QtWidgets.QTableWidget(0, len(BARRIER_COLUMNS))
        self.barrier_table.setHorizontalHeaderLabels(BARRIER_COLUMNS)
        self.barrier_table.verticalHeader().setVisible(False)
        self.barrier_table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        header = self.barrier_table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)
        self.event_log = QtWidgets.QListWidget()
        self.event_log.setObjectName('eventLog')
        self.event_log.setWordWrap(True)
        self.event_log.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        left, right = QtWidgets.QVBoxLayout(), QtWidgets.QVBoxLayout()
        left.addWidget(QtWidgets.QLabel('Barriers (h >= 0 is safe)'))
        left.addWidget(self.barrier_table)
        right.addWidget(QtWidgets.QLabel('Events (newest first)'))
        right.addWidget(self.event_log)
        bottom.addLayout(left, stretch=5)
        bottom.addLayout(right, stretch=4)
        root.addLayout(bottom, stretch=2)
        self._paint_mode(UNKNOWN, stale=True)

    # ------------------------------------------------------------------ behaviour
    def _call(self, service: str) -> None:
        self.reply_label.setText(f'{service}: sending...')
        self.actions.request(service)
        self.refresh()

    def refresh(self) -> None:
        """Redraw from a fresh snapshot (timer slot; cheap when nothing changed)."""
        self.actions.poll()
        snap = self.state.snapshot(self.actions.now_s())
        stale = snap.mode_age_s > self.config.stale_after_s
        self._paint_mode(snap.mode, stale)
        self._paint_text(snap, stale)
        if snap.version != self._drawn_version:
            self._paint_plots(snap)
            self._paint_barriers(snap)
            self._drawn_version = snap.version
        if snap.events_version != self._drawn_events:
            self._paint_events(snap.events)
            self._drawn_events = snap.events_version

    def _paint_mode(self, mode: str, stale: bool) -> None:
        colour = MODE_COLOURS[UNKNOWN] if stale else MODE_COLOURS.get(mode, MODE_COLOURS[UNKNOWN])
        self.mode_label.setText(mode)
        self.mode_label.setStyleSheet(f'background-color: {colour}; color: white; '
                                      'border-radius: 8px; padding: 8px;')

    def _paint_text(self, snap: Snapshot, stale: bool) -> None:
        if snap.mode == UNKNOWN:
            reason = 'waiting for the monitor...'
        else:
            reason = snap.reason or 'no reason given'
        if stale and snap.mode != UNKNOWN:
            reason = f'STALE: no monitor update for {snap.mode_age_s:.1f} s (last: {reason})'
        self.reason_label.setText(reason)
        self.score_label.setText(f'score: {_fmt(snap.score)}   threshold: '
                                 f'{_fmt(snap.threshold)}')
        level = LEVEL_COLOURS.get(snap.filter_level, LEVEL_COLOURS[ERROR])
        self.filter_label.setText(f'filter: {snap.filter_status or "-"}')
        self.filter_label.setStyleSheet(f'color: {level};')
        if snap.pending_services:
            self.reply_label.setText(', '.join(f'{s}: waiting for reply'
                                               for s in snap.pending_services))
            self.reply_label.setStyleSheet('')
        elif snap.last_reply is not None:
            # Refusals can list every stale input: keep the label short, the tooltip complete.
            text = snap.last_reply.text
            self.reply_label.setText(text if len(text) <= REPLY_CHARS
                                     else text[:REPLY_CHARS - 3] + '...')
            self.reply_label.setToolTip(text)
            self.reply_label.setStyleSheet(
                f'color: {LEVEL_COLOURS.get(snap.last_reply.level, "#000")};')

    def _paint_plots(self, snap: Snapshot) -> None:
        # x axis: seconds relative to now, so the newest sample sits at 0.
        for curve, (t, v) in ((self.proposed_curve, snap.proposed),
                              (self.safe_curve, snap.safe),
                              (self.score_curve, snap.score_series),
                              (self.threshold_curve, snap.threshold_series)):
            curve.setData(t - snap.now_s, v)
        for plot in (self.speed_plot, self.score_plot):
            plot.setXRange(-self.config.history_s, 0.0, padding=0.0)

    def _paint_barriers(self, snap: Snapshot) -> None:
        table = self.barrier_table
        table.setRowCount(len(snap.barriers))
        for r, row in enumerate(snap.barriers):
            cells = [row.name, _fmt(row.value), 'yes' if row.active else 'no',
                     str(row.activations), f'{row.active_time_s:.2f}']
            for c, text in enumerate(cells):
                item = table.item(r, c)
                if item is None:
                    item = QtWidgets.QTableWidgetItem()
                    table.setItem(r, c, item)
                item.setText(text)
                unsafe = not math.isnan(row.value) and row.value < 0.0
                item.setBackground(QtGui.QColor('#ffcdd2' if unsafe else
                                                '#fff3c4' if row.active else '#ffffff'))

    def _paint_events(self, events: List[Event]) -> None:
        self.event_log.clear()
        for ev in reversed(events):
            item = QtWidgets.QListWidgetItem(f'{_clock(ev.time_s)}  {ev.text}')
            item.setForeground(QtGui.QColor(LEVEL_COLOURS.get(ev.level, '#000000')))
            self.event_log.addItem(item)

    # ------------------------------------------------------------------ for tests / tools
    def displayed(self) -> Dict[str, object]:
        """Return what is on screen as plain values (mode, reason, table rows, log lines)."""
        rows = [[self.barrier_table.item(r, c).text() for c in range(len(BARRIER_COLUMNS))]
                for r in range(self.barrier_table.rowCount())]
        log = [self.event_log.item(i).text() for i in range(self.event_log.count())]
        x, y = self.safe_curve.getData()
        return {'mode': self.mode_label.text(), 'reason': self.reason_label.text(),
                'score': self.score_label.text(), 'filter': self.filter_label.text(),
                'reply': self.reply_label.text(), 'barriers': rows, 'events': log,
                'safe_points': 0 if x is None else int(np.size(x))}

    def stop(self) -> None:
        """Stop the redraw timer (before the state or the bridge goes away)."""
        self.timer.stop()


def _fmt(v: float) -> str:
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3g}'


def _clock(t_s: float) -> str:
    """Format a clock reading as ``HH:MM:SS.mmm`` (UTC for wall time, elapsed for sim time)."""
    ms = int(round((t_s % 86400.0) * 1000.0))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f'{h:02d}:{m:02d}:{s:02d}.{ms:03d}'
