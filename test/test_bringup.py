"""genpolicy-sim: the whole graph as node processes (or in one process), recorded and read back.

This is the main job of the README. It runs the real nodes over real DDS with the scripted
expert as policy (the learned policy has its own evaluation), then checks what reached the arm,
what the recording holds, and that the node processes live and die with genpolicy-sim.
"""

from contextlib import contextmanager
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Tuple

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import numpy as np
import pytest
from ros_harness import Probe, ros_graph, wait_for
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import MultiDOFJointTrajectory

from genpolicy_ros.bringup import main, NodeDied, ProcessBringup
from genpolicy_ros.monitor.gate import Mode
from genpolicy_ros.nodes.process import PARENT_PID_ENV
from genpolicy_ros.recording.report import make_report
from genpolicy_ros.robot import FrankaModel

TOPICS_WITH_TRAFFIC = [
    '/joint_states', '/camera/color/image_raw', '/camera/color/camera_info',
    '/genpolicy/action_chunk', '/genpolicy/chunk_samples', '/genpolicy/safe_command',
    '/genpolicy/arm_command', '/genpolicy/filter/proposed_twist', '/genpolicy/filter/safe_twist',
    '/genpolicy/filter/status', '/genpolicy/safety/markers', '/diagnostics',
    '/genpolicy/monitor/mode', '/genpolicy/monitor/score', '/genpolicy/monitor/threshold',
]
NODES = ('sim_node', 'policy_node', 'safety_filter_node', 'monitor_node')
# What each node publishes (its proof of life) and who publishes it.
OUTPUTS = {'/joint_states': (JointState, 'sim_node'),
           '/genpolicy/action_chunk': (MultiDOFJointTrajectory, 'policy_node'),
           '/genpolicy/safe_command': (JointState, 'safety_filter_node'),
           '/genpolicy/arm_command': (JointState, 'monitor_node')}
BIN = Path(sys.executable).parent


def _alive(pid: int) -> bool:
    """Return True if ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != 'Z'


def _processes() -> Dict[int, dict]:
    """Return ``{pid: {'pgid', 'env'}}`` of every live process readable here."""
    out = {}
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit() or not _alive(int(entry.name)):
            continue
        try:
            stat = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
            env = (entry / 'environ').read_bytes().split(b'\0')
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        out[int(entry.name)] = dict(pgid=int(stat[2]), env=env)
    return out


def _children_of(parent_pid: int) -> List[int]:
    """Return the live node processes started by ``parent_pid``.

    They carry its pid in their environment and lead process groups of their own (what they
    start, the sim's render process, inherits the environment but not the leadership).
    """
    tag = f'{PARENT_PID_ENV}={parent_pid}'.encode()
    return [pid for pid, p in _processes().items() if tag in p['env'] and p['pgid'] == pid]


def _group_members(pgids: List[int]) -> List[int]:
    """Return the live processes in any of the process groups ``pgids``."""
    return [pid for pid, p in _processes().items() if p['pgid'] in pgids]


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout_s: float) -> List[str]:
    """Read ``proc``'s stdout until a line matches ``pattern``; return the lines read."""
    lines: List[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f'no line matching {pattern!r}:\n{"".join(lines)}')


@pytest.mark.timeout(240)
@pytest.mark.parametrize('mode', ['processes', 'in_process'])
def test_genpolicy_sim_runs_records_and_reports(tmp_path, capsys, mode):
    run = tmp_path / 'run.mcap'
    extra = ['--in-process'] if mode == 'in_process' else ['--log-dir', str(tmp_path / 'logs')]
    with pytest.raises(SystemExit) as exc:
        main(['--policy', 'expert', '--episodes', '2', '--episode-time', '4',
              '--record', str(run)] + extra)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert '=== genpolicy-sim summary ===' in out, out
    # Between episodes the demo holds the arm before the scene moves it to the start pose, so
    # the monitor sees an operator hold, not a command jump (in one process the monitor may
    # already hold on late commands, and then no transition shows).
    assert 'episodes: 2' in out and 'jumped' not in out, out
    if mode == 'processes':
        assert 'operator request (~/hold)' in out, out
    steps = int(re.search(r'filter steps: (\d+)', out).group(1))
    commands = int(re.search(r'driver: (\d+) arm commands, (\d+) refused', out).group(1))
    # Rates depend on machine load: count flow, not speed.
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
    if mode == 'processes':
        assert {p.name for p in (tmp_path / 'logs').iterdir()} == {f'{n}.log' for n in NODES}


@pytest.mark.timeout(240)
def test_node_processes_drive_the_arm_and_end_with_the_graph(tmp_path):
    graph = ProcessBringup(policy='expert', record='', log_dir=str(tmp_path / 'logs'))
    pgids = [proc.pid for proc in graph.procs.values()]
    try:
        assert set(graph.procs) == set(NODES)
        assert all(proc.alive for proc in graph.procs.values())
        assert len(set(pgids) | {os.getpid()}) == len(NODES) + 1
        with ros_graph() as (_, probe, _nodes):
            for topic, (msg_type, _) in OUTPUTS.items():
                probe.watch(msg_type, topic)
            assert wait_for(lambda: probe.count('/joint_states') > 0, 30.0)
            q0 = _arm_q(probe)
            # The monitor starts in a latched HOLD; the operator's reset releases it.
            assert graph.mode() == Mode.HOLD
            reply = graph.release_hold()
            assert 'accepted' in reply.lower(), reply
            # Generous: on a loaded machine the mode takes its time to reach the watcher.
            assert wait_for(lambda: graph.mode() != Mode.HOLD, 30.0, 0.05), graph.mode()
            released = [t for t in graph.watcher.transitions if t[0] == 'HOLD']
            assert released and 'operator reset' in released[-1][2], graph.watcher.transitions
            for topic in OUTPUTS:
                probe.clear(topic)
            model = FrankaModel()

            def moved() -> float:
                # On a loaded machine a watchdog may hold again (stale input): the operator
                # releases it, as beside a real arm; the arm must still get somewhere.
                if graph.mode() == Mode.HOLD:
                    graph.release_hold()
                if probe.last('/joint_states') is None:  # cleared above, none since
                    return 0.0
                return float(np.linalg.norm(model.ee_pose(_arm_q(probe))[0]
                                            - model.ee_pose(q0)[0]))

            wait_for(lambda: moved() > 0.02 and all(probe.count(t) > 10 for t in OUTPUTS),
                     60.0, 0.5)
            for topic, (_, node) in OUTPUTS.items():
                assert probe.count(topic) > 10, f'{node} does not publish {topic}'
            assert moved() > 0.02, f'the EE moved only {moved() * 100:.1f} cm in 60 s'

        def flowed() -> bool:
            stats = graph.stats()
            return stats.chunks > 0 and stats.filter_steps > 100 and stats.driver['commands'] > 100
        # The nodes report their counters on /diagnostics once a second: wait for a report that
        # covers the motion above, against a deadline a loaded machine meets.
        assert wait_for(flowed, 30.0, 0.2), graph.stats()
        # A node that dies is named, with the end of its log.
        graph.procs['policy_node'].kill9()
        with pytest.raises(NodeDied) as died:
            graph.check()
        assert died.value.name == 'policy_node' and died.value.returncode == -signal.SIGKILL
        assert 'policy_node.log' in str(died.value)
    finally:
        graph.shutdown()
    assert not any(proc.alive for proc in graph.procs.values())
    assert wait_for(lambda: not _group_members(pgids), 30.0, 0.1), _group_members(pgids)


def _arm_q(probe: Probe) -> np.ndarray:
    msg = probe.last('/joint_states')
    index = [msg.name.index(f'panda_joint{i}') for i in range(1, 8)]
    return np.asarray(msg.position)[index]


@contextmanager
def _running_sim(tmp_path: Path) -> Iterator[Tuple[subprocess.Popen, List[int]]]:
    """Run genpolicy-sim (expert, one episode); yield it and its node processes once it runs.

    Whatever the test did to it, genpolicy-sim is killed (and reaped) on the way out.
    """
    sim = subprocess.Popen(
        [str(BIN / 'genpolicy-sim'), '--policy', 'expert', '--episodes', '1',
         '--episode-time', '60', '--record', '', '--log-dir', str(tmp_path / 'logs')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        _wait_for_line(sim, r'ep 0 t=', 120.0)
        children = _children_of(sim.pid)
        assert len(children) == len(NODES), children
        yield sim, children
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()


@pytest.mark.timeout(240)
def test_a_dead_node_stops_genpolicy_sim_with_its_name_and_log(tmp_path):
    with _running_sim(tmp_path) as (sim, children):
        victim = next(pid for pid in children
                      if b'safety_filter_node' in Path(f'/proc/{pid}/cmdline').read_bytes())
        os.kill(victim, signal.SIGKILL)
        out, err = sim.communicate(timeout=60.0)
    assert sim.returncode == 1, (out, err)
    assert 'safety_filter_node died (exit status -9)' in err, err
    assert 'safety_filter_node.log' in err, err
    assert '=== genpolicy-sim summary ===' in out, out
    assert wait_for(lambda: not any(_alive(pid) for pid in children), 15.0, 0.1)
    assert wait_for(lambda: not _group_members(children), 15.0, 0.1)


@pytest.mark.timeout(240)
def test_node_processes_die_with_a_killed_genpolicy_sim(tmp_path):
    with _running_sim(tmp_path) as (sim, children):
        sim.kill()   # SIGKILL: no handler, no atexit; the kernel tells the children
        sim.wait()
    assert wait_for(lambda: not _group_members(children), 30.0, 0.1), [
        Path(f'/proc/{pid}/cmdline').read_bytes() for pid in _group_members(children)]
