"""``genpolicy-report RUN.mcap [--out DIR]``: plots and a Markdown summary of a recorded run.

Reads the MCAP back with the ``mcap_ros2`` decoder (no rclpy) and replays ``/diagnostics`` and the
monitor topics through the same :class:`~genpolicy_ros.rqt.operator_state.OperatorState` the
operator view uses, so the report and the live view count interventions and holds alike.

Figures (PNG, matplotlib Agg): EE speed proposed vs safe, barrier values, monitor score and
mode, and the EE / command trajectory from above over the workspace box. Times are seconds from
the first message's log time.
"""

import argparse
from dataclasses import dataclass, field
from pathlib import Path
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
from mcap.reader import make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402
import numpy as np  # noqa: E402

from genpolicy_ros.paths import urdf_path  # noqa: E402
from genpolicy_ros.recording.config import ReportConfig  # noqa: E402
from genpolicy_ros.rqt.operator_state import (BarrierRow, ModeChange, OperatorState,  # noqa
                                              parse_statuses, Snapshot)

TOPICS = {
    'proposed': '/genpolicy/filter/proposed_twist',
    'safe': '/genpolicy/filter/safe_twist',
    'diagnostics': '/diagnostics',
    'mode': '/genpolicy/monitor/mode',
    'score': '/genpolicy/monitor/score',
    'threshold': '/genpolicy/monitor/threshold',
    'joint_states': '/joint_states',
    'safe_command': '/genpolicy/safe_command',
    'action_chunk': '/genpolicy/action_chunk',
}
MODE_COLOURS = {'NOMINAL': '#2e7d32', 'SLOW': '#f9a825', 'HOLD': '#c62828'}


@dataclass
class Run:
    """What a report needs from one recording (times in seconds from the first message)."""

    path: str
    start_ns: int
    duration_s: float
    counts: Dict[str, int]
    types: Dict[str, str]
    speeds: Dict[str, Tuple[np.ndarray, np.ndarray]]
    score: Tuple[np.ndarray, np.ndarray]
    threshold: Tuple[np.ndarray, np.ndarray]
    barriers: Dict[str, List[Tuple[float, float, bool]]]
    modes: List[Tuple[float, str]]
    joint_states: List[Tuple[float, Dict[str, float]]]
    safe_commands: List[Tuple[float, Dict[str, float]]]
    chunk_targets: np.ndarray          # (K, 3) first EE target of each chunk
    snapshot: Snapshot                 # the operator model after replaying the run
    min_h: Dict[str, float] = field(default_factory=dict)


def _series(points: List[Tuple[float, float]]) -> Tuple[np.ndarray, np.ndarray]:
    if not points:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(points, dtype=float)
    return a[:, 0], a[:, 1]


def load_run(path: str) -> Run:
    """Read a recording; counts come from the MCAP summary, values from decoded messages."""
    with open(path, 'rb') as f:
        summary = make_reader(f).get_summary()
    if summary is None or summary.statistics is None:
        raise ValueError(f'{path} has no MCAP summary (recorder not closed?)')
    stats = summary.statistics
    counts = {ch.topic: int(stats.channel_message_counts.get(cid, 0))
              for cid, ch in summary.channels.items()}
    types = {ch.topic: summary.schemas[ch.schema_id].name
             for ch in summary.channels.values() if ch.schema_id in summary.schemas}
    start_ns = int(stats.message_start_time)
    duration_s = (int(stats.message_end_time) - start_ns) * 1e-9

    state = OperatorState(history_s=float('inf'), max_events=1_000_000)
    speeds: Dict[str, List[Tuple[float, float]]] = {'proposed': [], 'safe': []}
    score: List[Tuple[float, float]] = []
    threshold: List[Tuple[float, float]] = []
    barriers: Dict[str, List[Tuple[float, float, bool]]] = {}
    modes: List[Tuple[float, str]] = []
    joints: List[Tuple[float, Dict[str, float]]] = []
    commands: List[Tuple[float, Dict[str, float]]] = []
    targets: List[List[float]] = []
    wanted = [t for t in TOPICS.values() if t in counts]
    with open(path, 'rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        records = [(ch.topic, rec.log_time, msg) for _, ch, rec, msg in
                   reader.iter_decoded_messages(topics=wanted, log_time_order=True)]
    for topic, log_time_ns, msg in records:
        t = (log_time_ns - start_ns) * 1e-9
        if topic in (TOPICS['proposed'], TOPICS['safe']):
            which = 'proposed' if topic == TOPICS['proposed'] else 'safe'
            lin = msg.twist.linear
            speeds[which].append((t, float(np.linalg.norm([lin.x, lin.y, lin.z]))))
            state.on_twist(which, t, (lin.x, lin.y, lin.z))
        elif topic == TOPICS['diagnostics']:
            records = parse_statuses(msg)
            state.on_diagnostics(t, records)
            for rec in records:
                if rec.name.startswith('safety_filter_node: barrier '):
                    name = rec.name[len('safety_filter_node: barrier '):]
                    h = float(rec.values.get('value', 'nan'))
                    active = rec.values.get('active', 'False').strip().lower() == 'true'
                    barriers.setdefault(name, []).append((t, h, active))
                elif rec.name == 'monitor_node: gate' and 'mode' in rec.values:
                    modes.append((t, rec.values['mode'].strip().upper()))
        elif topic == TOPICS['mode']:
            state.on_mode(t, msg.data)
            modes.append((t, msg.data.strip().upper()))
        elif topic == TOPICS['score']:
            state.on_score(t, msg.data)
            score.append((t, float(msg.data)))
        elif topic == TOPICS['threshold']:
            state.on_threshold(t, msg.data)
            threshold.append((t, float(msg.data)))
        elif topic in (TOPICS['joint_states'], TOPICS['safe_command']):
            positions = dict(zip(msg.name, msg.position))
            (joints if topic == TOPICS['joint_states'] else commands).append((t, positions))
        elif topic == TOPICS['action_chunk'] and msg.points and msg.points[0].transforms:
            tr = msg.points[0].transforms[0].translation
            targets.append([tr.x, tr.y, tr.z])
    modes.sort(key=lambda p: p[0])
    return Run(path=str(path), start_ns=start_ns, duration_s=duration_s, counts=counts,
               types=types, speeds={k: _series(v) for k, v in speeds.items()},
               score=_series(score), threshold=_series(threshold), barriers=barriers,
               modes=modes, joint_states=joints, safe_commands=commands,
               chunk_targets=np.asarray(targets, dtype=float).reshape(-1, 3),
               snapshot=state.snapshot(now_s=duration_s),
               min_h={k: float(np.nanmin([h for _, h, _ in v])) if v else float('nan')
                      for k, v in barriers.items()})


class ForwardKinematics:
    """EE position of joint-state dicts with Pinocchio on the project's URDF."""

    def __init__(self, urdf_file: str, ee_link: str):
        import pinocchio as pin
        self._pin = pin
        self.model = pin.buildModelFromUrdf(str(urdf_path(urdf_file)))
        self.data = self.model.createData()
        if not self.model.existFrame(ee_link):
            raise ValueError(f'{urdf_file} has no frame {ee_link!r}')
        self.frame = self.model.getFrameId(ee_link)

    def positions(self, states: Sequence[Dict[str, float]]) -> np.ndarray:
        """Return (N, 3) EE positions; joints are matched by name (``fr3_`` = ``panda_``)."""
        pin, model = self._pin, self.model
        out = np.zeros((len(states), 3))
        for k, joints in enumerate(states):
            q = pin.neutral(model)
            for name, value in joints.items():
                jname = name if model.existJointName(name) else name.replace('fr3_', 'panda_')
                if model.existJointName(jname):
                    jid = model.getJointId(jname)
                    if model.joints[jid].nq == 1:
                        q[model.joints[jid].idx_q] = value
            pin.framesForwardKinematics(model, self.data, q)
            out[k] = self.data.oMf[self.frame].translation
        return out


def _decimate(t: np.ndarray, v: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    if t.size <= n:
        return t, v
    idx = np.linspace(0, t.size - 1, n).astype(int)
    return t[idx], v[idx]


def _mode_spans(run: Run) -> List[Tuple[float, float, str]]:
    spans = []
    for (t0, mode), nxt in zip(run.modes, run.modes[1:] + [(run.duration_s, '')]):
        if spans and spans[-1][2] == mode:
            spans[-1] = (spans[-1][0], nxt[0], mode)
        else:
            spans.append((t0, nxt[0], mode))
    return spans


def _shade_modes(ax, run: Run) -> None:
    for t0, t1, mode in _mode_spans(run):
        if mode in ('SLOW', 'HOLD') and t1 > t0:
            ax.axvspan(t0, t1, color=MODE_COLOURS[mode], alpha=0.12, lw=0)


def plot_speed(run: Run, cfg: ReportConfig, out: Path) -> Path:
    """EE linear speed, proposed by the policy vs sent by the filter; SLOW/HOLD shaded."""
    fig, ax = plt.subplots(figsize=(cfg.figure_width_in, cfg.panel_height_in))
    for key, style in (('proposed', dict(color='#9e9e9e', lw=1.5, label='proposed')),
                       ('safe', dict(color='#1565c0', lw=1.5, label='safe (filtered)'))):
        ax.plot(*_decimate(*run.speeds[key], cfg.max_plot_points), **style)
    _shade_modes(ax, run)
    ax.set_ylim(bottom=0.0)
    ax.set(xlabel='time [s]', ylabel='EE speed [m/s]',
           title='EE linear speed (shaded: monitor SLOW / HOLD)')
    ax.grid(alpha=0.3)
    ax.legend(loc='upper right')
    return _save(fig, out / 'speed.png', cfg)


def plot_barriers(run: Run, cfg: ReportConfig, out: Path) -> Path:
    """Barrier values h(t); thick where the constraint was active; h = 0 is the boundary."""
    fig, ax = plt.subplots(figsize=(cfg.figure_width_in, cfg.panel_height_in))
    series = {name: np.asarray([(t, h, float(act)) for t, h, act in points])
              for name, points in run.barriers.items()}
    # Name only the barriers that came closest to the boundary: a legend of all ~40 covers
    # the plot and the figure.
    closest = sorted(series, key=lambda n: float(series[n][:, 1].min()))
    named = set(closest[:cfg.max_barrier_lines])
    others = len(series) - len(named)
    for name in sorted(series, key=lambda n: (n in named, n)):  # named ones drawn on top
        a = series[name]
        if name in named:
            line, = ax.plot(a[:, 0], a[:, 1], lw=1.2, label=name)
            color = line.get_color()
        else:
            color = '#9e9e9e'
            ax.plot(a[:, 0], a[:, 1], lw=0.6, color=color, alpha=0.6)
        act = a[:, 2] > 0.5
        ax.plot(a[act, 0], a[act, 1], '.', color=color, ms=5)
    if others:
        ax.plot([], [], lw=0.6, color='#9e9e9e', label=f'{others} more (grey)')
    ax.axhline(0.0, color='#c62828', lw=1.0, ls='--')
    ax.set(xlabel='time [s]', ylabel='h', title='Barrier values (dots: active; h >= 0 safe)')
    ax.grid(alpha=0.3)
    if run.barriers:
        ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize='small')
    return _save(fig, out / 'barriers.png', cfg)


def plot_monitor(run: Run, cfg: ReportConfig, out: Path) -> Path:
    """Monitor score vs threshold, with the mode as a coloured band underneath."""
    fig, (ax, band) = plt.subplots(2, 1, sharex=True, figsize=(
        cfg.figure_width_in, cfg.panel_height_in * 1.3), gridspec_kw={'height_ratios': [4, 1]})
    ax.plot(*_decimate(*run.score, cfg.max_plot_points), color='#6a1b9a', lw=1.5,
            label='score')
    ax.plot(*_decimate(*run.threshold, cfg.max_plot_points), color='#c62828', lw=1.5,
            ls='--', label='threshold')
    ax.set(ylabel='score', title='Runtime monitor')
    ax.grid(alpha=0.3)
    ax.legend(loc='upper left')
    for t0, t1, mode in _mode_spans(run):
        band.axvspan(t0, t1, color=MODE_COLOURS.get(mode, '#757575'), lw=0)
        if t1 - t0 > 0.06 * max(run.duration_s, 1e-9):
            band.text(0.5 * (t0 + t1), 0.5, mode, ha='center', va='center', color='white',
                      fontsize=8, fontweight='bold')
    band.set(yticks=[], xlabel='time [s]', ylabel='mode')
    band.set_xlim(0.0, max(run.duration_s, 1e-3))
    return _save(fig, out / 'monitor.png', cfg)


def plot_trajectory(run: Run, cfg: ReportConfig, out: Path) -> Path:
    """Top view (x-y): measured EE, safe command and policy targets over the workspace box."""
    fig, ax = plt.subplots(figsize=(cfg.panel_height_in * 2.2, cfg.panel_height_in * 2.2))
    for box, style in ((cfg.workspace, dict(ec='#c62828', lw=1.5, ls='--')),
                       (cfg.task_area, dict(ec='#455a64', lw=1.0, ls=':'))):
        (x0, x1), (y0, y1) = box.bounds_m()
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, label=box.label,
                                   **style))
    if run.joint_states or run.safe_commands:
        fk = ForwardKinematics(cfg.urdf_file, cfg.ee_link)
        for states, style in ((run.joint_states, dict(color='#1565c0', lw=1.8,
                                                      label='EE (measured)')),
                              (run.safe_commands, dict(color='#ef6c00', lw=1.0, ls=':',
                                                       label='safe command'))):
            if states:
                step = max(1, len(states) // cfg.max_plot_points)
                p = fk.positions([s for _, s in states[::step]])
                ax.plot(p[:, 0], p[:, 1], **style)
                ax.plot(p[-1, 0], p[-1, 1], 'o', color=style['color'], ms=5)
    if run.chunk_targets.size:
        ax.plot(run.chunk_targets[:, 0], run.chunk_targets[:, 1], 'x', color='#6a1b9a',
                ms=4, label='policy targets')
    ax.set(xlabel='x [m]', ylabel='y [m]', title='EE trajectory from above')
    ax.autoscale_view()
    ax.set_aspect('equal', adjustable='datalim')
    ax.grid(alpha=0.3)
    ax.legend(loc='best', fontsize='small')
    return _save(fig, out / 'trajectory_top.png', cfg)


def _save(fig, path: Path, cfg: ReportConfig) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=cfg.dpi)
    plt.close(fig)
    return path


def summary_markdown(run: Run, figures: Sequence[Path]) -> str:
    """Return the Markdown summary: duration, counts, interventions by barrier, holds."""
    snap = run.snapshot
    lines = [f'# Run report: `{Path(run.path).name}`', '',
             f'- Duration: {run.duration_s:.2f} s', f'- Messages: {sum(run.counts.values())}',
             f'- Final mode: {snap.mode}', '', '## Messages per topic', '',
             '| topic | type | messages | rate [Hz] |', '|---|---|---:|---:|']
    for topic in sorted(run.counts):
        rate = run.counts[topic] / run.duration_s if run.duration_s > 0 else 0.0
        lines.append(f'| `{topic}` | {run.types.get(topic, "?")} | {run.counts[topic]} | '
                     f'{rate:.1f} |')
    lines += ['', '## Interventions by barrier', '']
    rows: List[BarrierRow] = sorted(snap.barriers, key=lambda r: (-r.activations, r.name))
    if rows:
        lines += ['| barrier | activations | time active [s] | min h |', '|---|---:|---:|---:|']
        lines += [f'| {r.name} | {r.activations} | {r.active_time_s:.2f} | '
                  f'{run.min_h.get(r.name, float("nan")):.4g} |' for r in rows]
    else:
        lines.append('No barrier diagnostics recorded.')
    holds: List[ModeChange] = [c for c in snap.mode_changes if c.mode == 'HOLD']
    lines += ['', f'## Holds ({len(holds)})', '']
    if holds:
        lines += ['| time [s] | from | reason |', '|---:|---|---|']
        lines += [f'| {c.time_s:.2f} | {c.previous} | {c.reason or "(none given)"} |'
                  for c in holds]
    else:
        lines.append('The monitor never entered HOLD.')
    spans = _mode_spans(run)
    if spans:
        total = {m: sum(t1 - t0 for t0, t1, mm in spans if mm == m) for _, _, m in spans}
        lines += ['', '## Time per mode', '', '| mode | time [s] |', '|---|---:|']
        lines += [f'| {m} | {s:.2f} |' for m, s in total.items()]
    lines += ['', '## Figures', ''] + [f'![{p.stem}]({p.name})' for p in figures]
    return '\n'.join(lines) + '\n'


def make_report(mcap_path: str, out_dir: str,
                config: Optional[ReportConfig] = None) -> List[Path]:
    """Write the PNGs and ``summary.md`` for ``mcap_path`` into ``out_dir``; return the paths."""
    cfg = config if config is not None else ReportConfig.load()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = load_run(mcap_path)
    figures = [plot_speed(run, cfg, out), plot_barriers(run, cfg, out),
               plot_monitor(run, cfg, out), plot_trajectory(run, cfg, out)]
    summary = out / 'summary.md'
    summary.write_text(summary_markdown(run, figures), encoding='utf-8')
    return figures + [summary]


def main(argv: Optional[List[str]] = None) -> int:
    """Command line entry point of ``genpolicy-report``."""
    parser = argparse.ArgumentParser(
        description='Plots and a Markdown summary of a genpolicy MCAP recording.')
    parser.add_argument('mcap', help='recorded run (.mcap)')
    parser.add_argument('--out', default=None, help='output directory (default: RUN_report/)')
    parser.add_argument('--config', default=None, help='operator YAML (default: package one)')
    args = parser.parse_args(argv)
    out = args.out or str(Path(args.mcap).with_suffix('')) + '_report'
    paths = make_report(args.mcap, out, ReportConfig.load(args.config))
    for p in paths:
        print(p)
    return 0


if __name__ == '__main__':
    sys.exit(main())
