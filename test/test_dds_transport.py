"""The stack's processes publish over UDP unless the user chose a DDS transport or profile."""

import os
import subprocess
import sys

from genpolicy_ros.nodes.dds import choose_transport, DEFAULT_TRANSPORT, TRANSPORT_ENV


def test_the_default_transport_is_set_when_nothing_was_chosen():
    env = {}
    assert choose_transport(env) == DEFAULT_TRANSPORT == 'UDPv4'
    assert env == {TRANSPORT_ENV: 'UDPv4'}


def test_a_users_transport_or_profile_is_left_alone():
    env = {TRANSPORT_ENV: 'SHM'}
    assert choose_transport(env) == 'SHM'
    assert env == {TRANSPORT_ENV: 'SHM'}
    for profile in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE'):
        env = {profile: '/etc/my_dds.xml'}
        assert choose_transport(env) == ''
        assert TRANSPORT_ENV not in env


def test_a_process_on_the_default_transport_delivers_messages():
    # In a fresh process (Fast DDS reads the variable once per participant) a publisher and a
    # subscriber on UDP only still hear each other: the value is one the installed RMW takes.
    script = (
        'import os, rclpy\n'
        'from genpolicy_ros.nodes.dds import choose_transport\n'
        'choose_transport()\n'
        'rclpy.init()\n'
        'from std_msgs.msg import String\n'
        'n = rclpy.create_node("dds_probe")\n'
        'got = []\n'
        'n.create_subscription(String, "/dds_probe", lambda m: got.append(m.data), 10)\n'
        'p = n.create_publisher(String, "/dds_probe", 10)\n'
        'import time\n'
        't0 = time.monotonic()\n'
        'while not got and time.monotonic() - t0 < 20:\n'
        '    p.publish(String(data=os.environ["FASTDDS_BUILTIN_TRANSPORTS"]))\n'
        '    rclpy.spin_once(n, timeout_sec=0.1)\n'
        'print(got[0] if got else "nothing")\n')
    env = {k: v for k, v in os.environ.items() if k != TRANSPORT_ENV}
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == 'UDPv4', out.stderr[-2000:]
