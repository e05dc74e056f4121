"""OpenCV camera (V4L2) for a real bring-up: capture, convert, describe (no rclpy).

:class:`FrameProcessor` is the pure part: an OpenCV BGR frame becomes the RGB image the stack
uses (optionally resized to the policy's input size) with matching pinhole intrinsics, and a
camera that keeps delivering the very same frame is noticed. :class:`OpenCvCamera` wraps
``cv2.VideoCapture`` (V4L2 device, or any source OpenCV reads, e.g. a video file).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from genpolicy_ros.config_io import build_config


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """Settings of ``config/camera.yaml`` (see the comments there)."""

    device: str
    api: str
    width_px: int
    height_px: int
    fps: float
    fourcc: str
    output_width_px: int
    output_height_px: int
    frame_id: str
    camera_matrix: List[float]
    distortion: List[float]
    horizontal_fov_deg: float
    max_identical_frames: int
    reopen_period_s: float

    def __post_init__(self) -> None:
        if self.api not in ('v4l2', 'any'):
            raise ValueError(f'camera api must be v4l2 or any, got {self.api!r}')
        if len(self.camera_matrix) != 9 or len(self.distortion) != 5:
            raise ValueError('camera_matrix needs 9 values and distortion 5')
        if (self.output_width_px > 0) != (self.output_height_px > 0):
            raise ValueError('set both output_width_px and output_height_px, or neither')
        if len(self.fourcc) not in (0, 4):
            raise ValueError(f'fourcc must be 4 characters or empty, got {self.fourcc!r}')
        if self.fps <= 0.0 or not 0.0 < self.horizontal_fov_deg < 180.0:
            raise ValueError('fps must be > 0 and horizontal_fov_deg in (0, 180)')

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'CameraConfig':
        """Build from a parameter dict; unknown or missing keys raise ValueError."""
        return build_config(cls, params)


@dataclasses.dataclass
class Frame:
    """One published image: RGB pixels and the intrinsics that describe them."""

    rgb: np.ndarray   # (H, W, 3) uint8
    k: np.ndarray     # (3, 3)
    p: np.ndarray     # (3, 4)
    d: np.ndarray     # (5,) plumb_bob


def intrinsics(width: int, height: int, config: CameraConfig,
               captured: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Return K for an image of ``width`` x ``height`` pixels.

    A calibrated ``camera_matrix`` belongs to the captured size ``captured = (w, h)`` and is
    scaled to the output size; otherwise K comes from the horizontal field of view with square
    pixels and the principal point at the image centre.
    """
    k = np.asarray(config.camera_matrix, dtype=float).reshape(3, 3)
    if np.any(k != 0.0):
        cw, ch = captured if captured is not None else (width, height)
        k = k.copy()
        k[0, :] *= width / cw
        k[1, :] *= height / ch
        return k
    fx = (width / 2.0) / math.tan(math.radians(config.horizontal_fov_deg) / 2.0)
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0],
                     [0.0, 0.0, 1.0]])


class FrameProcessor:
    """BGR capture -> RGB :class:`Frame`; counts identical consecutive frames (frozen feed)."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.identical_run = 0
        self._last: Optional[np.ndarray] = None

    @property
    def frozen(self) -> bool:
        """Return whether the last ``max_identical_frames`` frames were all the same."""
        return self.identical_run >= self.config.max_identical_frames

    def process(self, frame: np.ndarray) -> Frame:
        """Convert one OpenCV frame (BGR, or grey) into a :class:`Frame`; ValueError if bad."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f'expected a uint8 image, got {getattr(frame, "dtype", frame)!r}')
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f'expected an (H, W, 3) image, got shape {frame.shape}')
        if self._last is not None and self._last.shape == frame.shape and \
                np.array_equal(self._last, frame):
            self.identical_run += 1
        else:
            self.identical_run = 0
        self._last = frame.copy()
        captured = (frame.shape[1], frame.shape[0])
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        cfg = self.config
        if cfg.output_width_px > 0 and captured != (cfg.output_width_px, cfg.output_height_px):
            rgb = cv2.resize(rgb, (cfg.output_width_px, cfg.output_height_px),
                             interpolation=cv2.INTER_AREA)
        height, width = rgb.shape[:2]
        k = intrinsics(width, height, cfg, captured)
        p = np.hstack([k, np.zeros((3, 1))])
        return Frame(rgb=np.ascontiguousarray(rgb), k=k, p=p,
                     d=np.asarray(cfg.distortion, dtype=float))


class OpenCvCamera:
    """``cv2.VideoCapture`` on the configured device with the requested format."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self._cap: Optional[Any] = None

    @property
    def is_open(self) -> bool:
        """Return whether the device is open."""
        return self._cap is not None and self._cap.isOpened()

    def open(self) -> None:
        """Open the device; raise RuntimeError (with the device name) if it cannot be."""
        cfg = self.config
        if cfg.api == 'v4l2' and not os.path.exists(cfg.device):
            raise RuntimeError(f'camera {cfg.device!r} does not exist')
        api = cv2.CAP_V4L2 if cfg.api == 'v4l2' else cv2.CAP_ANY
        cap = cv2.VideoCapture(cfg.device, api)
        if not cap.isOpened():
            cap.release()
            raise RuntimeError(f'cannot open camera {cfg.device!r} ({cfg.api})')
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        if cfg.width_px > 0 and cfg.height_px > 0:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width_px)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height_px)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cap = cap

    def read(self) -> np.ndarray:
        """Return the next frame (blocks until the device delivers); RuntimeError on failure."""
        if self._cap is None:
            raise RuntimeError('camera is not open')
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise RuntimeError(f'camera {self.config.device!r} delivered no frame')
        return frame

    def close(self) -> None:
        """Release the device."""
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
