"""Record ROS 2 topics into an MCAP file that ``ros2 bag``, Foxglove and ``mcap_ros2`` read.

Messages are taken off the wire already CDR-serialised (``raw=True`` subscriptions), so they
are written byte for byte as published, with no decode/encode cost in the callback. Each topic
gets a ``ros2msg`` schema holding the full message definition (see :mod:`.msgdef`) and a channel
with the ``offered_qos_profiles`` metadata rosbag2 writes, which ``ros2 bag play`` reads.
"""

import argparse
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import CompressionType, Writer
import mcap_ros2
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, qos_profile_sensor_data,
                       ReliabilityPolicy)

from genpolicy_ros.recording.config import RecorderConfig
from genpolicy_ros.recording.msgdef import (check_definition, full_type_name, import_message,
                                            message_definition)

_COMPRESSION = {'zstd': CompressionType.ZSTD, 'lz4': CompressionType.LZ4,
                'none': CompressionType.NONE}


def _qos_yaml(qos: QoSProfile) -> str:
    """Describe ``qos`` the way rosbag2 stores ``offered_qos_profiles`` (a YAML list)."""
    return ('- history: {h}\n  depth: {d}\n  reliability: {r}\n  durability: {u}\n'
            '  deadline:\n    sec: 9223372036\n    nsec: 854775807\n'
            '  lifespan:\n    sec: 9223372036\n    nsec: 854775807\n'
            '  liveliness: 1\n  liveliness_lease_duration:\n    sec: 9223372036\n'
            '    nsec: 854775807\n  avoid_ros_namespace_conventions: false\n'
            ).format(h=int(qos.history), d=int(qos.depth), r=int(qos.reliability),
                     u=int(qos.durability))


class McapRecorder:
    """Subscribe to ``(topic, type)`` pairs on ``node`` and write everything to ``path``.

    Thread-safe: callbacks from a multi-threaded executor serialise on one lock. Call
    :meth:`close` (or use it as a context manager) to flush the summary; a file not closed
    is still readable up to its last complete chunk but has no index.
    """

    def __init__(self, node: Node, path: str, topics: Sequence[Tuple[str, str]],
                 qos_depth: int, chunk_size_bytes: int, compression: str = 'zstd',
                 sensor_data_topics: Sequence[str] = ()):
        self._node = node
        self.path = str(path)
        self._lock = threading.Lock()
        self._closed = False
        self._counts: Dict[str, int] = {}
        self._file = open(self.path, 'wb')
        self._writer = Writer(self._file, chunk_size=int(chunk_size_bytes),
                              compression=_COMPRESSION[compression])
        self._writer.start(profile='ros2',
                           library=f'genpolicy_ros mcap-ros2-support/{mcap_ros2.__version__}')
        self._schemas: Dict[str, int] = {}
        self._subscriptions = []
        sensor = set(sensor_data_topics)
        for topic, type_name in topics:
            qos = (qos_profile_sensor_data if topic in sensor else
                   QoSProfile(depth=int(qos_depth), history=HistoryPolicy.KEEP_LAST,
                              reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE))
            self._add_topic(topic, type_name, qos)

    @classmethod
    def from_config(cls, node: Node, path: str, config: RecorderConfig) -> 'McapRecorder':
        """Build a recorder for the topics and settings of ``config``."""
        return cls(node, path, config.topic_types(), qos_depth=config.qos_depth,
                   chunk_size_bytes=config.chunk_size_bytes, compression=config.compression,
                   sensor_data_topics=config.sensor_data_topics)

    def _add_topic(self, topic: str, type_name: str, qos: QoSProfile) -> None:
        msg_type = import_message(type_name)
        name = full_type_name(type_name)
        if name not in self._schemas:
            definition = message_definition(name)
            check_definition(name, definition)  # fail now, not in a reader months later
            self._schemas[name] = self._writer.register_schema(
                name=name, encoding=SchemaEncoding.ROS2, data=definition.encode())
        channel_id = self._writer.register_channel(
            topic=topic, message_encoding=MessageEncoding.CDR, schema_id=self._schemas[name],
            metadata={'offered_qos_profiles': _qos_yaml(qos)})
        self._counts[topic] = 0

        def callback(data: bytes, topic: str = topic, channel_id: int = channel_id) -> None:
            self._write(topic, channel_id, data)

        self._subscriptions.append(self._node.create_subscription(
            msg_type, topic, callback, qos, raw=True, event_callbacks=self._events(topic)))

    def _events(self, topic: str):
        """Return the subscription's event callbacks: an incompatible QoS is logged, nothing more.

        rclpy adds two event handlers to every subscription by default (incompatible QoS and
        incompatible type), and the executor visits each of them on every wake-up: with 15
        topics, about a third of the recorder's CPU time per message. The type is the
        topic's own here, so only the QoS check stays.
        """
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks
        logger = self._node.get_logger()

        def incompatible(event) -> None:
            policy = getattr(event.last_policy_kind, 'name', str(event.last_policy_kind))
            logger.warning(f'not recording {topic}: its publisher offers an incompatible QoS '
                           f'({policy})', throttle_duration_sec=5.0)
        return SubscriptionEventCallbacks(incompatible_qos=incompatible,
                                          use_default_callbacks=False)

    def _write(self, topic: str, channel_id: int, data: bytes) -> None:
        stamp_ns = self._node.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self._writer.add_message(channel_id=channel_id, log_time=stamp_ns,
                                     publish_time=stamp_ns, data=bytes(data),
                                     sequence=self._counts[topic])
            self._counts[topic] += 1

    @property
    def counts(self) -> Dict[str, int]:
        """Messages written so far, per topic."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop subscribing, write the MCAP summary and close the file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sub in self._subscriptions:
            self._node.destroy_subscription(sub)
        self._subscriptions.clear()
        with self._lock:
            self._writer.finish()
            self._file.close()

    def __enter__(self) -> 'McapRecorder':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Optional[List[str]] = None) -> int:
    """``genpolicy-record OUT.mcap [--duration-s S]``: record the genpolicy topics until Ctrl-C."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from genpolicy_ros.nodes.dds import choose_dds_profile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('output', help='MCAP file to write')
    parser.add_argument('--duration-s', type=float, default=None,
                        help='stop after this many seconds (default: until Ctrl-C)')
    parser.add_argument('--config', default=None, help='operator YAML (default: package one)')
    args, ros_args = parser.parse_known_args(argv)
    choose_dds_profile()
    rclpy.init(args=ros_args)
    node = rclpy.create_node('mcap_recorder')
    recorder = McapRecorder.from_config(node, args.output, RecorderConfig.load(args.config))
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    start = time.monotonic()
    try:
        while rclpy.ok() and (args.duration_s is None
                              or time.monotonic() - start < args.duration_s):
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        recorder.close()
        counts = recorder.counts
        node.get_logger().info(f'wrote {sum(counts.values())} messages to {args.output}: '
                               f'{counts}')
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
