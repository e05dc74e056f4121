"""The stack's Fast DDS profile: the default transports with a shared-memory segment for images.

ROS 2's default RMW (rmw_fastrtps) carries messages between processes of one machine in shared
memory, in a segment of 512 KiB per participant by default (Fast DDS 3.2) - less than one
640x480 RGB frame (900 KiB). Measured here (a 30 Hz publisher of such frames, sensor-data QoS):
a subscriber got 0.5-9.5 frames per second (median 4, 2 s windows); a subscriber killed with
SIGKILL could leave the camera unable to reach any subscriber, the restarted one included (the
fault suite's ``kill9[policy_node]``). With the segment at 8 MiB (``config/fastdds.xml``): 29.5
frames per second, and a subscriber restarted after each of ten kill -9s received frames
within 2 s.

Every process of the stack calls :func:`choose_dds_profile` before ``rclpy.init`` (Fast DDS
reads the variable when it creates its first participant); child processes inherit it. A
user's own choice wins: nothing changes when a Fast DDS XML profile or
``FASTDDS_BUILTIN_TRANSPORTS`` is set. Other RMWs ignore the variable.
"""

import os
from typing import MutableMapping, Optional

from genpolicy_ros.paths import config_path

PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
# Set by the user, any of these means they chose the transport themselves.
USER_CHOICE_ENVS = (PROFILE_ENV, 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS')
PROFILE_FILE = 'fastdds.xml'


def choose_dds_profile(env: Optional[MutableMapping[str, str]] = None) -> str:
    """Point ``env`` (``os.environ``) at the stack's Fast DDS profile unless one was chosen.

    Returns the profile file now in effect, or ``''`` when the user's own transport setting
    decides. Call it before ``rclpy.init``.
    """
    env = os.environ if env is None else env
    if any(env.get(name) for name in USER_CHOICE_ENVS):
        return env.get(PROFILE_ENV, '')
    path = config_path(PROFILE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f'the Fast DDS profile {path} is missing from the install')
    env[PROFILE_ENV] = str(path)
    return str(path)
