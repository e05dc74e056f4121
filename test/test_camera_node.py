"""The OpenCV camera: its pure core on synthetic frames, and the node on a real video source.

No V4L2 device exists on CI machines; OpenCV reads a video file through the same
``VideoCapture`` path, so the node test plays a generated clip.
"""

import cv2
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from genpolicy_ros.drivers.v4l2_camera import CameraConfig, FrameProcessor, intrinsics
from genpolicy_ros.nodes import conversions as cv
from genpolicy_ros.nodes.camera_node import CameraNode
from genpolicy_ros.nodes.params import load_node_params
from genpolicy_ros.config_io import unflatten
from ros_harness import ros_graph, wait_for


def _config(**changes) -> CameraConfig:
    params = unflatten(load_node_params('camera.yaml', 'camera_node'))
    params.pop('node')
    params.update(changes)
    return CameraConfig.from_dict(params)


def _bgr(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_bgr_frame_becomes_rgb_with_centred_intrinsics():
    proc = FrameProcessor(_config())
    bgr = _bgr()
    frame = proc.process(bgr)
    assert frame.rgb.shape == (48, 64, 3) and frame.rgb.dtype == np.uint8
    assert np.array_equal(frame.rgb, bgr[..., ::-1])
    k = frame.k
    assert k[0, 2] == pytest.approx(31.5) and k[1, 2] == pytest.approx(23.5)
    assert k[0, 0] == pytest.approx(32.0 / np.tan(np.radians(69.0) / 2.0))
    assert k[0, 0] == k[1, 1] and np.allclose(frame.p[:, :3], k)


def test_resize_to_policy_input_scales_calibrated_intrinsics():
    k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    proc = FrameProcessor(_config(output_width_px=96, output_height_px=96, camera_matrix=k))
    frame = proc.process(_bgr(480, 640))
    assert frame.rgb.shape == (96, 96, 3)
    assert frame.k[0, 0] == pytest.approx(500.0 * 96 / 640)
    assert frame.k[1, 1] == pytest.approx(500.0 * 96 / 480)
    assert frame.k[0, 2] == pytest.approx(320.0 * 96 / 640)
    assert np.allclose(intrinsics(640, 480, _config(camera_matrix=k)),
                       np.reshape(k, (3, 3)))


def test_grey_frames_are_accepted_and_bad_ones_refused():
    proc = FrameProcessor(_config())
    assert proc.process(np.full((10, 12), 7, np.uint8)).rgb.shape == (10, 12, 3)
    for bad in (np.zeros((10, 12, 3), np.float32), np.zeros((10, 12, 4), np.uint8),
                np.zeros((0, 12, 3), np.uint8), None):
        with pytest.raises(ValueError):
            proc.process(bad)


def test_identical_frames_are_reported_as_frozen():
    proc = FrameProcessor(_config(max_identical_frames=5))
    same = _bgr()
    for _ in range(5):
        proc.process(same)
    assert not proc.frozen
    proc.process(same)
    assert proc.frozen and proc.identical_run == 5
    proc.process(_bgr(seed=1))
    assert not proc.frozen


def test_config_refuses_half_an_output_size():
    with pytest.raises(ValueError):
        _config(output_width_px=96)
    with pytest.raises(ValueError):
        _config(api='gstreamer')


def test_node_publishes_a_video_source(tmp_path):
    clip = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*'MJPG'), 30, (64, 48))
    assert writer.isOpened()
    for i in range(30):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 8 * i  # red ramp (BGR)
        writer.write(frame)
    writer.release()
    overrides = [rclpy.parameter.Parameter('device', value=str(clip)),
                 rclpy.parameter.Parameter('api', value='any'),
                 rclpy.parameter.Parameter('fourcc', value=''),
                 rclpy.parameter.Parameter('output_width_px', value=32),
                 rclpy.parameter.Parameter('output_height_px', value=24)]
    with ros_graph(lambda ctx: CameraNode(context=ctx, parameter_overrides=overrides)) \
            as (_, probe, nodes):
        probe.watch(Image, '/camera/color/image_raw', qos_profile_sensor_data)
        probe.watch(CameraInfo, '/camera/color/camera_info', qos_profile_sensor_data)
        probe.watch(DiagnosticArray, '/diagnostics', 10)
        assert wait_for(lambda: probe.count('/camera/color/image_raw') >= 5, 20.0), \
            nodes[0].stats
        img = cv.image_to_numpy(probe.last('/camera/color/image_raw'))
        assert img.shape == (24, 32, 3)
        assert img[..., 0].mean() > img[..., 2].mean()  # red stays red: BGR -> RGB
        info = probe.last('/camera/color/camera_info')
        assert (info.width, info.height) == (32, 24) and info.k[8] == 1.0
        assert info.header.frame_id == 'camera_color_optical_frame'
        assert wait_for(lambda: any(st.name == 'camera_node: camera'
                                    for arr in probe.messages['/diagnostics']
                                    for st in arr.status), 5.0)
