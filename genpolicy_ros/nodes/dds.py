"""The DDS transport of the stack's processes: UDP on the loopback, not Fast DDS shared memory.

Why: with Fast DDS's shared-memory transport (on by default in ROS 2's default RMW), a
subscriber process killed with SIGKILL can leave the publishing process unable to deliver its
camera frames to *any* subscriber, the ones started later included (an open Fast DDS issue:
"Killing one with 'kill -9' affects the other subscribers. Even after restarting the subscriber,
data is still not subscribed to"). Here: after a kill -9 of the policy node the camera stopped
for the monitor too, and the restarted policy node never got a frame (the fault suite's
``kill9[policy_node]`` failed 1 in 4 runs of the three kill -9 tests, and in 3 of 4 full
suites); with UDP only, 6 of 6 passed. A robot that cannot see again after one node crashed
is worse than the few percent of CPU UDP costs on the loopback.

Only the publishing side matters, so every process of the stack sets it for itself
(:func:`choose_transport` before ``rclpy.init``) and children inherit it. ROS 2's default RMW
(rmw_fastrtps) reads the variable; other RMWs ignore it. A user's own choice wins: nothing
changes when ``FASTDDS_BUILTIN_TRANSPORTS`` or a Fast DDS XML profile is set.
"""

import os
from typing import MutableMapping, Optional

TRANSPORT_ENV = 'FASTDDS_BUILTIN_TRANSPORTS'
PROFILE_ENVS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
DEFAULT_TRANSPORT = 'UDPv4'


def choose_transport(env: Optional[MutableMapping[str, str]] = None) -> str:
    """Set the stack's default transport in ``env`` (``os.environ``) unless one was chosen.

    Call it before ``rclpy.init`` (Fast DDS reads the variable when a participant is
    created). Returns the transport in effect: the user's, the default, or ``''`` when an XML
    profile decides.
    """
    env = os.environ if env is None else env
    if env.get(TRANSPORT_ENV):
        return env[TRANSPORT_ENV]
    if any(env.get(name) for name in PROFILE_ENVS):
        return ''
    env[TRANSPORT_ENV] = DEFAULT_TRANSPORT
    return DEFAULT_TRANSPORT
