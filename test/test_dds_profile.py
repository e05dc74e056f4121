"""The stack's Fast DDS profile: chosen unless the user chose; camera frames survive a kill -9."""

import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import List
import xml.etree.ElementTree as ET

import pytest

from genpolicy_ros.nodes.dds import choose_dds_profile, PROFILE_ENV
from genpolicy_ros.paths import config_path

PEER = str(Path(__file__).resolve().parent / 'dds_image_peer.py')
FRAME_BYTES = 640 * 480 * 3


def test_the_profile_is_chosen_when_the_user_chose_nothing():
    env = {}
    assert choose_dds_profile(env) == str(config_path('fastdds.xml'))
    assert env == {PROFILE_ENV: str(config_path('fastdds.xml'))}


@pytest.mark.parametrize('name', ['FASTDDS_DEFAULT_PROFILES_FILE',
                                  'FASTRTPS_DEFAULT_PROFILES_FILE',
                                  'FASTDDS_BUILTIN_TRANSPORTS'])
def test_a_users_own_choice_is_left_alone(name):
    env = {name: 'UDPv4' if name == 'FASTDDS_BUILTIN_TRANSPORTS' else '/etc/my_dds.xml'}
    before = dict(env)
    choose_dds_profile(env)
    assert env == before


def test_the_shared_memory_segment_holds_several_full_frames():
    ns = {'d': 'http://www.eprosima.com'}
    root = ET.parse(config_path('fastdds.xml')).getroot()
    shm = [t for t in root.iter(f'{{{ns["d"]}}}transport_descriptor')
           if t.find('d:type', ns).text == 'SHM']
    assert len(shm) == 1
    assert int(shm[0].find('d:segment_size', ns).text) >= 4 * FRAME_BYTES
    participant = root.find('.//d:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    used = {t.text for t in participant.iter(f'{{{ns["d"]}}}transport_id')}
    assert used == {t.find('d:transport_id', ns).text
                    for t in root.iter(f'{{{ns["d"]}}}transport_descriptor')}


def _peer(procs: List[subprocess.Popen], *args: str) -> subprocess.Popen:
    # The test run's own ROS domain (test/conftest.py); the peers choose the profile themselves.
    env = {k: v for k, v in os.environ.items() if k != PROFILE_ENV}
    proc = subprocess.Popen([sys.executable, PEER, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


def _received(proc: subprocess.Popen, timeout_s: float) -> int:
    out, _ = proc.communicate(timeout=timeout_s)
    lines = [ln for ln in out.splitlines() if ln.startswith('received=')]
    assert lines, f'the subscriber printed no count:\n{out}'
    return int(lines[-1].split('=')[1])


def test_frames_reach_a_subscriber_restarted_after_another_was_killed():
    # 640x480 frames at 20 Hz; a subscriber that falls behind is killed with SIGKILL while
    # frames are in flight, then a new one must get frames again, and a subscriber that ran
    # throughout must not have lost the stream (with the default 512 KiB segment both failed).
    procs: List[subprocess.Popen] = []
    try:
        _peer(procs, 'pub')
        steady = _peer(procs, 'sub', '14')
        time.sleep(1.0)
        victim = _peer(procs, 'sub', '60', '0.2')
        assert victim.stdout.readline().strip() == 'ready'
        time.sleep(3.0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        restarted = _peer(procs, 'sub', '6')
        # Discovery takes up to about a second; 6 s at 20 Hz is 120 frames.
        assert _received(restarted, 30.0) >= 40
        assert _received(steady, 30.0) >= 100   # 14 s at 20 Hz: 280 frames
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
