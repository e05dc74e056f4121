"""Camera-content checks of the runtime monitor: observation novelty and frozen frames.

The consistency score sees only what the policy outputs; a policy can be confidently wrong on
an image unlike its training data (another object colour, other light, an occluded view). So
the monitor also looks at each camera frame itself:

* **Novelty**: the frame is encoded with the policy's own image encoder (the checkpoint's conv
  stack) into its spatial-softmax keypoints plus the mean activation of each last-layer channel;
  the Mahalanobis distance of that vector to the features of the training demonstrations
  (mean and Ledoit-Wolf-style shrunk covariance, fitted once) measures how unlike the training
  data the frame is, to the policy. ``hold_consecutive_frames`` frames in a row above the
  calibrated threshold raise a hard fault (HOLD). The threshold is calibrated split-conformally
  on exactly that statistic (see :func:`run_statistic`).
* **Frozen frame**: the image content has not changed while a joint moved by more than
  ``frozen_motion_rad`` (the arm is in view, so a live camera must see it move): hard fault.

Torch is imported only when a novelty model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np

from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.monitor.watchdogs import Fault, FaultKind

PathLike = Union[str, Path]
FEATURE_DEFINITION = ('novelty-v1: Mahalanobis distance / sqrt(D) of [spatial-softmax '
                      'keypoints, channel means of the last conv layer] of the policy encoder')


@dataclass(frozen=True)
class NoveltyConfig:
    """Settings of the camera-content checks (``novelty.*`` in ``config/monitor.yaml``)."""

    model_file: str
    hold_consecutive_frames: int
    frozen_max_block_diff: float
    frozen_motion_rad: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'NoveltyConfig':
        """Build from a parameter mapping; every key is required."""
        cfg = cls(**take(params, cls, 'novelty'))
        if cfg.hold_consecutive_frames < 1:
            raise ValueError('novelty.hold_consecutive_frames must be >= 1')
        if cfg.frozen_max_block_diff < 0.0 or cfg.frozen_motion_rad <= 0.0:
            raise ValueError('novelty.frozen_max_block_diff must be >= 0 and '
                             'novelty.frozen_motion_rad > 0')
        return cfg


def run_statistic(distances: Sequence[float], k: int) -> float:
    """Return the largest value that ``k`` consecutive distances all exceed in this episode.

    That is ``max_t min(d[t], ..., d[t+k-1])``: the fault fires (``k`` frames in a row above
    the threshold) exactly when this statistic exceeds the threshold, so calibrating the
    threshold on it carries the conformal guarantee over to the fault. Fewer than ``k``
    frames give ``-inf`` (the fault cannot fire).
    """
    d = np.asarray(distances, dtype=float).ravel()
    if d.size < k:
        return float('-inf')
    windows = np.lib.stride_tricks.sliding_window_view(d, k)
    return float(windows.min(axis=1).max())


class FeatureNoveltyModel:
    """The policy encoder's features and their training distribution (mean, precision)."""

    def __init__(self, encoder, mean: np.ndarray, precision: np.ndarray, checkpoint: str,
                 n_fit: int, shrinkage: float) -> None:
        self.encoder = encoder
        self.mean = np.asarray(mean, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)
        d = self.mean.size
        if self.precision.shape != (d, d):
            raise ValueError(f'precision must be ({d}, {d}), got {self.precision.shape}')
        self.checkpoint = str(checkpoint)
        self.n_fit = int(n_fit)
        self.shrinkage = float(shrinkage)

    @property
    def image_size_px(self) -> int:
        """Return the square frame size the encoder was trained on."""
        return int(self.encoder.image_size_px)

    @staticmethod
    def load_encoder(checkpoint: str):
        """Return the image encoder (eval mode) of a policy checkpoint (name or path)."""
        from genpolicy_ros.policy.checkpoint import load_for_inference
        from genpolicy_ros.policy.policy import resolve_checkpoint
        net, _, _ = load_for_inference(resolve_checkpoint(checkpoint))
        encoder = net.obs_encoder.image
        encoder.image_size_px = int(net.cfg.image_size_px)
        return encoder

    def features(self, images: np.ndarray) -> np.ndarray:
        """Return the (B, D) feature vectors of uint8 frames (B, H, W, 3)."""
        return encoder_features(self.encoder, images)

    def distances(self, images: np.ndarray) -> np.ndarray:
        """Return the (B,) normalised Mahalanobis distances of uint8 frames (B, H, W, 3)."""
        diff = self.features(images) - self.mean
        m2 = np.einsum('ij,jk,ik->i', diff, self.precision, diff)
        return np.sqrt(np.maximum(m2, 0.0) / self.mean.size)

    def distance(self, image: np.ndarray) -> float:
        """Return the normalised Mahalanobis distance of one uint8 frame (H, W, 3)."""
        return float(self.distances(np.asarray(image)[None])[0])

    @classmethod
    def fit(cls, checkpoint: str, images: np.ndarray, shrinkage: float = 0.05,
            batch: int = 256) -> 'FeatureNoveltyModel':
        """Fit mean and shrunk covariance of the features of nominal frames (M, H, W, 3)."""
        if not 0.0 <= shrinkage < 1.0:
            raise ValueError(f'shrinkage must be in [0, 1), got {shrinkage}')
        encoder = cls.load_encoder(checkpoint)
        feats = np.concatenate([encoder_features(encoder, images[i:i + batch])
                                for i in range(0, len(images), batch)])
        if len(feats) <= feats.shape[1]:
            raise ValueError(f'{len(feats)} frames are too few to fit {feats.shape[1]} '
                             f'features')
        mean = feats.mean(axis=0)
        cov = np.cov(feats - mean, rowvar=False)
        # Shrink toward a scaled identity: well conditioned, and directions never seen in
        # training (where an OOD frame moves) are not given an infinite weight.
        target = np.trace(cov) / cov.shape[0]
        cov = (1.0 - shrinkage) * cov + shrinkage * target * np.eye(cov.shape[0])
        return cls(encoder, mean, np.linalg.inv(cov), checkpoint, len(feats), shrinkage)

    def save(self, path: PathLike) -> Path:
        """Write mean, precision and provenance as ``.npz``; return the path."""
        path = Path(path)
        np.savez_compressed(path, mean=self.mean.astype(np.float32),
                            precision=self.precision.astype(np.float32),
                            checkpoint=np.array(self.checkpoint), n_fit=np.array(self.n_fit),
                            shrinkage=np.array(self.shrinkage),
                            definition=np.array(FEATURE_DEFINITION))
        return path

    @classmethod
    def load(cls, path: PathLike) -> 'FeatureNoveltyModel':
        """Read a model written by :meth:`save` and load its policy's encoder."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'no novelty model at {path}: run genpolicy-calibrate')
        with np.load(path) as data:
            definition = str(data['definition'])
            if definition != FEATURE_DEFINITION:
                raise ValueError(f'{path}: made for {definition!r}, this monitor computes '
                                 f'{FEATURE_DEFINITION!r}; recalibrate')
            checkpoint = str(data['checkpoint'])
            return cls(cls.load_encoder(checkpoint), data['mean'], data['precision'],
                       checkpoint, int(data['n_fit']), float(data['shrinkage']))


def encoder_features(encoder, images: np.ndarray) -> np.ndarray:
    """Keypoints and last-layer channel means of ``encoder`` for uint8 frames (B, H, W, 3)."""
    import torch
    from genpolicy_ros.policy.network import images_to_tensor
    arr = np.ascontiguousarray(images, dtype=np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f'images must be (B, H, W, 3) uint8, got {arr.shape}')
    with torch.no_grad():
        fmap = encoder.conv(images_to_tensor(torch.from_numpy(arr)))
        keypoints = encoder.keypoints(fmap)
        channel_means = fmap.mean(dim=(2, 3))
    return torch.cat([keypoints, channel_means], dim=1).double().numpy()


class CameraContentChecks:
    """Novelty and frozen-frame faults from the frames and joint positions the monitor sees.

    ``model`` None disables the novelty check (frozen frames are still checked); ``threshold``
    None means "not calibrated" (distances are recorded, no fault is raised).
    """

    def __init__(self, config: NoveltyConfig, model: Optional[FeatureNoveltyModel],
                 threshold: Optional[float]) -> None:
        self.config = config
        self.model = model
        self.threshold = threshold
        self.last_distance: Optional[float] = None
        self.consecutive_above = 0
        self._run: List[float] = []
        self._small: Optional[np.ndarray] = None
        self._q_at_change: Optional[np.ndarray] = None
        self._q: Optional[np.ndarray] = None
        self._frozen_motion = 0.0

    def on_joint_positions(self, q: np.ndarray) -> None:
        """Register the newest measured joint positions [rad]."""
        self._q = np.array(q, dtype=float)

    def on_frame(self, image: np.ndarray) -> Optional[float]:
        """Check one RGB frame (H, W, 3) uint8; return its novelty distance (None: no model)."""
        img = np.asarray(image)
        small = _downsample(img)
        # Max over blocks, not the mean: a moving arm changes a few blocks a lot and the
        # rest of the view not at all.
        if self._small is None or float(np.abs(small - self._small).max()) > \
                self.config.frozen_max_block_diff:
            self._small = small
            self._q_at_change = None if self._q is None else self._q.copy()
            self._frozen_motion = 0.0
        elif self._q is not None:
            if self._q_at_change is None:
                self._q_at_change = self._q.copy()
            self._frozen_motion = float(np.max(np.abs(self._q - self._q_at_change)))
        if self.model is None or img.shape[:2] != (self.model.image_size_px,) * 2:
            return None  # the policy refuses such frames too (its node reports them)
        d = self.model.distance(img)
        self.last_distance = d
        above = self.threshold is not None and d > self.threshold
        self.consecutive_above = self.consecutive_above + 1 if above else 0
        return d

    def active_faults(self) -> List[Fault]:
        """Return the camera-content faults that hold now."""
        faults: List[Fault] = []
        k = self.config.hold_consecutive_frames
        if self.threshold is not None and self.consecutive_above >= k:
            faults.append(Fault(FaultKind.NOVEL_OBSERVATION, 'camera',
                                f'{self.consecutive_above} frames in a row unlike the training '
                                f'images (distance {self.last_distance:.3g})',
                                float(self.last_distance), float(self.threshold)))
        if self._frozen_motion > self.config.frozen_motion_rad:
            faults.append(Fault(FaultKind.FROZEN_FRAME, 'camera',
                                f'image unchanged while a joint moved '
                                f'{self._frozen_motion:.3f} rad', self._frozen_motion,
                                self.config.frozen_motion_rad))
        return faults


def _downsample(image: np.ndarray, size: int = 24) -> np.ndarray:
    """Block-average a frame to about ``size`` x ``size`` (intensity levels, float)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f'image must be (H, W, C), got {img.shape}')
    fy, fx = max(1, img.shape[0] // size), max(1, img.shape[1] // size)
    h, w = img.shape[0] // fy * fy, img.shape[1] // fx * fx
    return img[:h, :w].reshape(h // fy, fy, w // fx, fx, -1).mean(axis=(1, 3))
