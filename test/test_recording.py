"""MCAP recording of the genpolicy topics over real ROS, read back, and the run report.

A publisher node plays a short run (every topic of the contract, with a barrier intervention
and a HOLD); :class:`McapRecorder` records it through real DDS; the ``mcap_ros2`` decoder must
decode every message with the schemas written; ``genpolicy-report`` must turn it into PNGs and
a Markdown summary that count what was published.
"""

import subprocess
import sys
import time

from conftest import REPO_ROOT
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from ros_harness import ros_graph, wait_for
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64, String
from trajectory_msgs.msg import MultiDOFJointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from genpolicy_ros.nodes import conversions as conv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.recording.config import RecorderConfig, ReportConfig
from genpolicy_ros.recording.msgdef import message_definition
from genpolicy_ros.recording.recorder import McapRecorder

ARM = [f'panda_joint{i}' for i in range(1, 8)]
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
CYCLES = 24


class RunPublisher(Node):
    """Publishes one short genpolicy run on every topic the recorder is configured for."""

    def __init__(self, context):
        super().__init__('run_publisher', context=context)
        cfg = RecorderConfig.load()
        sensor = set(cfg.sensor_data_topics)
        self.pubs = {}
        for topic, type_name in cfg.topic_types():
            msg_type = {'JointState': JointState, 'Image': Image, 'CameraInfo': CameraInfo,
                        'MultiDOFJointTrajectory': MultiDOFJointTrajectory,
                        'TwistStamped': TwistStamped, 'MarkerArray': MarkerArray,
                        'DiagnosticArray': DiagnosticArray, 'String': String,
                        'Float64': Float64}[type_name.split('/')[-1]]
            qos = qos_profile_sensor_data if topic in sensor else 50
            self.pubs[topic] = self.create_publisher(msg_type, topic, qos)

    def cycle(self, k: int) -> None:
        """Publish one message on every topic for cycle ``k``."""
        stamp = self.get_clock().now().to_msg()
        t = conv.stamp_to_s(stamp)
        q = HOME.copy()
        q[0] = -0.4 + 0.8 * k / (CYCLES - 1)      # sweep across the workspace
        js = conv.make_joint_state(ARM, stamp, q, np.zeros(7))
        self.pubs['/joint_states'].publish(js)
        self.pubs['/genpolicy/safe_command'].publish(js)
        self.pubs['/genpolicy/arm_command'].publish(js)
        img = np.full((24, 32, 3), k, dtype=np.uint8)
        self.pubs['/camera/color/image_raw'].publish(conv.numpy_to_image(img, stamp, 'cam'))
        k_mat = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
        p_mat = np.hstack([k_mat, np.zeros((3, 1))])
        self.pubs['/camera/color/camera_info'].publish(
            conv.make_camera_info(32, 24, k_mat, p_mat, stamp, 'cam'))
        times = np.arange(1, 5) * 0.1
        pos = np.column_stack([np.full(4, 0.5), np.linspace(-0.1, 0.1, 4), np.full(4, 0.05)])
        quat = np.tile([1.0, 0.0, 0.0, 0.0], (4, 1))
        self.pubs['/genpolicy/action_chunk'].publish(
            conv.chunk_to_msg(conv.ChunkArrays(t, 'world', times, pos, quat)))
        self.pubs['/genpolicy/chunk_samples'].publish(
            conv.samples_to_msg(t, 'world', times, np.stack([pos, pos + 0.01]), quat[0]))
        active = 8 <= k < 16
        for topic, v in (('/genpolicy/filter/proposed_twist', 0.3),
                         ('/genpolicy/filter/safe_twist', 0.1 if active else 0.3)):
            tw = TwistStamped()
            tw.header.stamp = stamp
            tw.twist = conv.make_twist(np.array([v, 0.0, 0.0, 0.0, 0.0, 0.0]))
            self.pubs[topic].publish(tw)
        marker = Marker(ns='barriers', id=1, type=Marker.CUBE, action=Marker.ADD)
        marker.header.frame_id = 'world'
        self.pubs['/genpolicy/safety/markers'].publish(MarkerArray(markers=[marker]))
        mode = 'NOMINAL' if k < 12 else 'SLOW' if k < 18 else 'HOLD'
        reason = {'NOMINAL': 'consistent', 'SLOW': 'score near threshold',
                  'HOLD': 'score above threshold for 3 chunks'}[mode]
        score = 0.5 + 0.05 * k
        self.pubs['/genpolicy/monitor/mode'].publish(String(data=mode))
        status = 'INTERVENED' if active else 'OK'
        self.pubs['/genpolicy/filter/status'].publish(String(data=status))
        self.pubs['/genpolicy/monitor/score'].publish(Float64(data=score))
        self.pubs['/genpolicy/monitor/threshold'].publish(Float64(data=1.2))
        self.pubs['/diagnostics'].publish(diag.array(stamp, [
            diag.status('safety_filter_node', 'barrier table', diag.WARN if active else diag.OK,
                        'active' if active else 'inactive',
                        {'value': 0.05 - 0.004 * min(k, 12), 'active': active}),
            diag.status('safety_filter_node', 'barrier workspace_y', diag.OK, 'inactive',
                        {'value': 0.2, 'active': False}),
            diag.status('monitor_node', 'gate', {'NOMINAL': 0, 'SLOW': 1, 'HOLD': 2}[mode],
                        reason, {'mode': mode, 'reason': reason, 'score': score,
                                 'threshold': 1.2})]))


def _record(path) -> dict:
    cfg = RecorderConfig.load()
    holder = {}

    def recorder_node(context):
        node = Node('mcap_recorder', context=context)
        holder['rec'] = McapRecorder.from_config(node, str(path), cfg)
        return node

    with ros_graph(RunPublisher, recorder_node) as (_, probe, nodes):
        pub, rec = nodes[0], holder['rec']
        assert wait_for(lambda: all(p.get_subscription_count() >= 1
                                    for p in pub.pubs.values()), 10.0)
        for k in range(CYCLES):
            pub.cycle(k)
            time.sleep(0.02)
        assert wait_for(lambda: all(n == CYCLES for n in rec.counts.values()), 10.0), \
            rec.counts
        rec.close()
        rec.close()                                        # idempotent
    return rec.counts


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    """One recorded run shared by the tests of this module."""
    path = tmp_path_factory.mktemp('run') / 'run.mcap'
    counts = _record(path)
    return path, counts


def test_every_topic_recorded_and_decodable(recorded):
    """Every configured topic is in the file with its count, and every message decodes."""
    path, counts = recorded
    cfg = RecorderConfig.load()
    assert counts == {t: CYCLES for t in cfg.topics}
    with open(path, 'rb') as f:
        summary = make_reader(f).get_summary()
    channels = {ch.topic: ch for ch in summary.channels.values()}
    assert set(channels) == set(cfg.topics)
    for topic, type_name in cfg.topic_types():
        ch = channels[topic]
        schema = summary.schemas[ch.schema_id]
        assert (schema.name, schema.encoding, ch.message_encoding) == (type_name, 'ros2msg',
                                                                       'cdr')
        assert schema.data.decode() == message_definition(type_name)
        assert 'reliability' in ch.metadata['offered_qos_profiles']
    decoded = {}
    with open(path, 'rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _, channel, _, msg in reader.iter_decoded_messages(log_time_order=True):
            decoded.setdefault(channel.topic, []).append(msg)
    assert {t: len(v) for t, v in decoded.items()} == counts
    imgs = decoded['/camera/color/image_raw']
    assert [bytes(i.data)[0] for i in imgs] == list(range(CYCLES))     # in order, intact
    assert imgs[0].encoding == 'rgb8' and (imgs[0].height, imgs[0].width) == (24, 32)
    js = decoded['/joint_states'][-1]
    assert list(js.name) == ARM and js.position[0] == pytest.approx(0.4)
    chunk = decoded['/genpolicy/action_chunk'][0]
    assert len(chunk.points) == 4 and chunk.points[3].transforms[0].translation.y == 0.1
    assert len(decoded['/genpolicy/chunk_samples'][0].joint_names) == 2
    gate = decoded['/diagnostics'][-1].status[2]
    assert gate.name == 'monitor_node: gate' and gate.level == 2
    assert decoded['/genpolicy/monitor/mode'][-1].data == 'HOLD'


def test_report_cli_writes_plots_and_summary(recorded, tmp_path):
    """``genpolicy-report RUN.mcap --out DIR`` writes four PNGs and a truthful summary."""
    path, _ = recorded
    out = tmp_path / 'report'
    proc = subprocess.run([sys.executable, '-m', 'genpolicy_ros.recording.report', str(path),
                           '--out', str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ('speed', 'barriers', 'monitor', 'trajectory_top'):
        png = out / f'{name}.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000
    text = (out / 'summary.md').read_text()
    assert f'| `/joint_states` | sensor_msgs/msg/JointState | {CYCLES} |' in text
    assert '| table | 1 |' in text and '| workspace_y | 0 | 0.00 |' in text
    assert '## Holds (1)' in text and 'score above threshold for 3 chunks' in text
    assert 'Final mode: HOLD' in text


def test_report_time_accounting(recorded):
    """Interventions last as long as the barrier was reported active (8 of 24 cycles)."""
    from genpolicy_ros.recording.report import load_run
    path, _ = recorded
    run = load_run(str(path))
    rows = {r.name: r for r in run.snapshot.barriers}
    period = run.duration_s / (CYCLES - 1)
    assert rows['table'].activations == 1
    assert rows['table'].active_time_s == pytest.approx(8 * period, rel=0.35)
    assert [c.mode for c in run.snapshot.mode_changes] == ['NOMINAL', 'SLOW', 'HOLD']
    assert run.min_h['table'] == pytest.approx(0.002)
    cfg = ReportConfig.load()
    for box in (cfg.workspace, cfg.task_area):
        (x0, x1), (y0, y1) = box.bounds_m()
        assert x0 < 0.5 < x1 and y0 < 0.0 < y1


def test_barrier_plot_names_only_the_barriers_closest_to_the_boundary(tmp_path, monkeypatch):
    """Check: with many barriers the legend names the lowest few and counts the rest."""
    import dataclasses
    from genpolicy_ros.recording import report
    cfg = dataclasses.replace(ReportConfig.load(), max_barrier_lines=3)
    times = np.linspace(0.0, 1.0, 20)
    # Barrier k dips to k/10 (so b00..b02 come closest to h = 0); b05 is active once.
    barriers = {f'b{k:02d}': [(float(t), 1.0 + k / 10 - np.sin(np.pi * t), k == 5 and i == 3)
                              for i, t in enumerate(times)] for k in range(15)}
    empty = (np.zeros(0), np.zeros(0))
    run = report.Run(path='x.mcap', start_ns=0, duration_s=1.0, counts={}, types={},
                     speeds={}, score=empty, threshold=empty, barriers=barriers, modes=[],
                     joint_states=[], safe_commands=[], chunk_targets=np.zeros((0, 3)),
                     snapshot=None)
    figures = []
    monkeypatch.setattr(report, '_save', lambda fig, path, c: figures.append(fig) or path)
    report.plot_barriers(run, cfg, tmp_path)
    (ax,) = figures[0].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ['b00', 'b01', 'b02', '12 more (grey)']
    report.plt.close(figures[0])
