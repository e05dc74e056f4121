"""Camera node for a real bring-up: an OpenCV (V4L2) camera as the sim's camera topics.

Publishes ``/camera/color/image_raw`` (rgb8) and ``/camera/color/camera_info`` with sensor-data
QoS, stamped at capture, and ``/diagnostics`` (rate, failures, a frozen feed). A capture thread
waits on the device (OpenCV releases the GIL while it does); a missing or failing device is
reported and reopened every ``reopen_period_s``. With another camera driver (e.g.
realsense2_camera) this node is not started and the policy's topics are remapped instead.
"""

import threading
import time
from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from genpolicy_ros.drivers.v4l2_camera import CameraConfig, FrameProcessor, OpenCvCamera
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes import diagnostics as diag
from genpolicy_ros.nodes.params import declare_from_yaml
from genpolicy_ros.nodes.runner import run_node

NODE_NAME = 'camera_node'
LOG_THROTTLE_S = 5.0


class CameraNode(Node):
    """Publish an OpenCV camera on the stack's camera topics."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_from_yaml(self, 'camera.yaml', NODE_NAME)
        node_params = params.pop('node')
        self.config = CameraConfig.from_dict(params)
        self.processor = FrameProcessor(self.config)
        self.camera = OpenCvCamera(self.config)
        self.pub_img = self.create_publisher(Image, '/camera/color/image_raw',
                                             qos_profile_sensor_data)
        self.pub_info = self.create_publisher(CameraInfo, '/camera/color/camera_info',
                                              qos_profile_sensor_data)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._lock = threading.Lock()
        self.stats: Dict[str, int] = dict(frames=0, read_failures=0, bad_frames=0, opens=0)
        self._error = ''
        self._frame_times: list = []
        self._stop = threading.Event()
        self.create_timer(1.0 / float(node_params['diagnostics_rate_hz']),
                          self._publish_diagnostics)
        self._thread = threading.Thread(target=self._capture_loop, name='camera-capture',
                                        daemon=True)
        self._thread.start()

    def _set_error(self, text: str, counter: Optional[str] = None) -> None:
        with self._lock:
            self._error = text
            if counter:
                self.stats[counter] += 1
        self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)

    def _capture_loop(self) -> None:
        period = 1.0 / self.config.fps
        next_frame = time.monotonic()
        while not self._stop.is_set():
            if not self.camera.is_open:
                try:
                    self.camera.open()
                    with self._lock:
                        self.stats['opens'] += 1
                        self._error = ''
                except RuntimeError as exc:
                    self._set_error(str(exc))
                    self._stop.wait(self.config.reopen_period_s)
                    continue
            try:
                raw = self.camera.read()
                stamp = self.get_clock().now().to_msg()
                frame = self.processor.process(raw)
            except RuntimeError as exc:  # device gone or end of a file: reopen
                self.camera.close()
                self._set_error(str(exc), 'read_failures')
                self._stop.wait(self.config.reopen_period_s)
                continue
            except ValueError as exc:
                self._set_error(f'bad frame dropped: {exc}', 'bad_frames')
                continue
            height, width = frame.rgb.shape[:2]
            self.pub_img.publish(cv.numpy_to_image(frame.rgb, stamp, self.config.frame_id))
            info = cv.make_camera_info(width, height, frame.k, frame.p, stamp,
                                       self.config.frame_id)
            info.d = [float(x) for x in frame.d]
            self.pub_info.publish(info)
            with self._lock:
                self.stats['frames'] += 1
                self._error = ''
                self._frame_times = (self._frame_times + [time.monotonic()])[-60:]
            # Never faster than fps (a device paces itself; a file would not).
            next_frame = max(next_frame + period, time.monotonic() - period)
            self._stop.wait(max(0.0, next_frame - time.monotonic()))

    def _publish_diagnostics(self) -> None:
        with self._lock:
            stats, error, times = dict(self.stats), self._error, list(self._frame_times)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and \
            times[-1] > times[0] else 0.0
        problems = [error] if error else []
        if self.processor.frozen:
            problems.append(f'frozen: {self.processor.identical_run} identical frames in a row')
        level = diag.ERROR if error else (diag.WARN if problems else diag.OK)
        values = dict(device=self.config.device, rate_hz=rate, **stats)
        self.pub_diag.publish(diag.array(self.get_clock().now().to_msg(), [
            diag.status(NODE_NAME, 'camera', level, '; '.join(problems) or 'streaming',
                        values)]))

    def destroy_node(self) -> None:
        """Stop the capture thread and release the device."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.camera.close()
        super().destroy_node()


def main(args=None) -> None:
    """Run the node (``ros2 run genpolicy_ros camera_node --ros-args -p device:=/dev/video2``)."""
    run_node(CameraNode, args)
