"""genpolicy-sim: the whole graph in one process, recorded to MCAP and read back.

This is the main job of the README. It runs the real node classes over real DDS with the
scripted expert as policy (the learned policy has its own evaluation), then checks what
reached the arm and what the recording holds.
"""

import re

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import pytest

from genpolicy_ros.bringup import main
from genpolicy_ros.recording.report import make_report

TOPICS_WITH_TRAFFIC = [
    '/joint_states', '/camera/color/image_raw', '/camera/color/camera_info',
    '/genpolicy/action_chunk', '/genpolicy/chunk_samples', '/genpolicy/safe_command',
    '/genpolicy/arm_command', '/genpolicy/filter/proposed_twist', '/genpolicy/filter/safe_twist',
    '/genpolicy/filter/status', '/genpolicy/safety/markers', '/diagnostics',
    '/genpolicy/monitor/mode', '/genpolicy/monitor/score', '/genpolicy/monitor/threshold',
]


@pytest.mark.timeout(180)
def test_genpolicy_sim_runs_records_and_reports(tmp_path, capsys):
    run = tmp_path / 'run.mcap'
    with pytest.raises(SystemExit) as exc:
        main(['--policy', 'expert', '--episodes', '1', '--episode-time', '8',
              '--record', str(run)])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert '=== genpolicy-sim summary ===' in out, out
    steps = int(re.search(r'filter steps: (\d+)', out).group(1))
    commands = int(re.search(r'driver: (\d+) arm commands, (\d+) refused', out).group(1))
    # Rates depend on machine load (one Python process, one GIL): count flow, not speed.
    assert steps > 50 and commands > 50, out
    assert re.search(r'driver: \d+ arm commands, 0 refused', out), out
    counts = {}
    with open(run, 'rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _, channel, _, msg in reader.iter_decoded_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
    for topic in TOPICS_WITH_TRAFFIC:
        assert counts.get(topic, 0) > 0, f'{topic} not recorded: {counts}'
    assert counts['/genpolicy/arm_command'] > 50
    assert counts['/camera/color/image_raw'] > 10
    written = make_report(str(run), str(tmp_path / 'report'))
    names = {p.name for p in written}
    assert {'speed.png', 'barriers.png', 'monitor.png', 'trajectory_top.png',
            'summary.md'} <= names, names
    assert all(p.stat().st_size > 1000 for p in written)
