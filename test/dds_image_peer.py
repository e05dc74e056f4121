"""A child process for test_dds_profile: publish or count 640x480 camera frames.

``python dds_image_peer.py pub`` publishes frames at 20 Hz until killed;
``python dds_image_peer.py sub SECONDS [SLOW_S]`` counts frames for SECONDS (each callback
sleeping SLOW_S, a subscriber that falls behind) and prints ``received=<n>``. Both join the
graph as the stack's processes do (``choose_dds_profile`` before ``rclpy.init``).
"""

import sys
import time

import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from genpolicy_ros.nodes.dds import choose_dds_profile

TOPIC = '/dds_test/image_raw'


def main() -> None:
    """Run as the publisher or a subscriber (see the module docstring)."""
    role = sys.argv[1]
    choose_dds_profile()
    rclpy.init()
    node = rclpy.create_node(f'dds_image_{role}')
    if role == 'pub':
        pub = node.create_publisher(Image, TOPIC, qos_profile_sensor_data)
        msg = Image(height=480, width=640, encoding='rgb8', step=640 * 3,
                    data=bytes(640 * 480 * 3))
        while True:
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
            time.sleep(0.05)
    duration_s = float(sys.argv[2])
    slow_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    received = [0]

    def on_image(_msg: Image) -> None:
        received[0] += 1
        time.sleep(slow_s)

    node.create_subscription(Image, TOPIC, on_image, qos_profile_sensor_data)
    print('ready', flush=True)
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(f'received={received[0]}', flush=True)


if __name__ == '__main__':
    main()
