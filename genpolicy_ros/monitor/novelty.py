"""Camera-content checks of the runtime monitor: observation novelty and frozen frames.

The consistency score sees only what the policy outputs; a policy can be confidently wrong on
an image unlike its training data (another object colour, other light, an occluded view, a
camera that was bumped). So the monitor also looks at each camera frame itself:

* **Novelty**: three components, each a distance to the training frames (fitted once, on the
  policy's demonstrations) divided by its own 99th percentile there; the score is the largest:
  the policy encoder's features (spatial-softmax keypoints + last-layer channel means,
  Mahalanobis to their training mean with a shrunk covariance) - unlike training *to the
  policy*; a hue histogram - colours the nearly colour-blind encoder does not separate; and
  the arm's position: the keypoints read the TCP's xy (a ridge regression fitted on the
  demos) and forward kinematics of the measured joints gives it too - when the two disagree
  for ``arm_window_frames`` frames, the camera is not where it was in training.
  ``hold_consecutive_frames`` frames in a row above the calibrated threshold raise a hard
  fault (HOLD). The threshold is calibrated split-conformally on exactly that statistic (see
  :func:`run_statistic`).
* **Frozen frame**: the image content has not changed while a joint moved by more than
  ``frozen_motion_rad`` (the arm is in view, so a live camera must see it move): hard fault.

Torch is imported only when a novelty model is loaded.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.monitor.watchdogs import Fault, FaultKind

PathLike = Union[str, Path]
FEATURE_DEFINITION = (
    'novelty-v2: max over components of (distance / its 99th percentile on the fit frames); '
    'encoder: Mahalanobis / sqrt(D) of the policy encoder keypoints + last-layer channel means; '
    'colour: Mahalanobis / sqrt(D) of the sqrt chroma-weighted hue histogram (16 bins, chroma '
    '> 30); arm: |TCP xy read from the keypoints (ridge) - TCP xy from the joints| [m], mean '
    'of the last arm_window_frames frames')
HUE_BINS = 16
MIN_CHROMA = 30.0           # intensity levels; greys (the arm, shadows) carry no hue
COMPONENTS = ('encoder', 'colour', 'arm')
Q_HISTORY = 512             # joint states kept to pair with frames (2 s at 250 Hz)


@dataclass(frozen=True)
class NoveltyConfig:
    """Settings of the camera-content checks (``novelty.*`` in ``config/monitor.yaml``)."""

    model_file: str
    hold_consecutive_frames: int
    arm_window_frames: int
    frozen_max_block_diff: float
    frozen_motion_rad: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'NoveltyConfig':
        """Build from a parameter mapping; every key is required."""
        cfg = cls(**take(params, cls, 'novelty'))
        if cfg.hold_consecutive_frames < 1 or cfg.arm_window_frames < 1:
            raise ValueError('novelty.hold_consecutive_frames and novelty.arm_window_frames '
                             'must be >= 1')
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


@dataclass(frozen=True)
class Gaussian:
    """Mean and precision of nominal feature vectors; distances are Mahalanobis / sqrt(D)."""

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, feats: np.ndarray, shrinkage: float) -> 'Gaussian':
        """Fit mean and a covariance shrunk toward a scaled identity to (M, D) features."""
        if len(feats) <= feats.shape[1]:
            raise ValueError(f'{len(feats)} frames are too few to fit {feats.shape[1]} '
                             f'features')
        mean = feats.mean(axis=0)
        cov = np.cov(feats - mean, rowvar=False)
        # Shrunk: well conditioned, and directions never seen in training (where an OOD
        # frame moves) are not given an infinite weight.
        target = np.trace(cov) / cov.shape[0]
        cov = (1.0 - shrinkage) * cov + shrinkage * target * np.eye(cov.shape[0])
        return cls(mean, np.linalg.inv(cov))

    def distances(self, feats: np.ndarray) -> np.ndarray:
        """Return the (B,) normalised Mahalanobis distances of (B, D) features."""
        diff = np.asarray(feats, dtype=np.float64) - self.mean
        m2 = np.einsum('ij,jk,ik->i', diff, self.precision, diff)
        return np.sqrt(np.maximum(m2, 0.0) / self.mean.size)


class FeatureNoveltyModel:
    """What the training frames looked like, in three components (see FEATURE_DEFINITION).

    * ``encoder``: the policy encoder's features - unlike training to the policy itself;
    * ``colour``: a hue histogram - the encoder is nearly colour-blind (a blue cube);
    * ``arm``: where the keypoints put the TCP vs where the joint encoders put it - the
      camera has moved, or the picture is not of this arm (visual-proprioceptive mismatch).

    Each component's distance is divided by its 99th percentile on the fit frames, so the
    largest of them is one unitless score with one calibrated threshold.
    """

    def __init__(self, encoder, encoder_gauss: Gaussian, colour_gauss: Gaussian,
                 arm_weights: np.ndarray, scales: np.ndarray, checkpoint: str, n_fit: int,
                 shrinkage: float) -> None:
        self.encoder = encoder
        self.encoder_gauss = encoder_gauss
        self.colour_gauss = colour_gauss
        self.arm_weights = np.asarray(arm_weights, dtype=np.float64)
        self.scales = np.asarray(scales, dtype=np.float64)
        if self.scales.shape != (len(COMPONENTS),) or np.any(self.scales <= 0.0):
            raise ValueError(f'scales must be {len(COMPONENTS)} positive numbers')
        self.checkpoint = str(checkpoint)
        self.n_fit = int(n_fit)
        self.shrinkage = float(shrinkage)
        self._kinematics = None

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

    def tcp_xy(self, q: np.ndarray) -> np.ndarray:
        """Return the (B, 2) TCP xy [m] of joint positions (B, 7) by forward kinematics."""
        if self._kinematics is None:
            from genpolicy_ros.robot import FrankaModel
            self._kinematics = FrankaModel()
        q = np.atleast_2d(np.asarray(q, dtype=float))
        return np.stack([self._kinematics.ee_pose(qi)[0][:2] for qi in q])

    def raw_components(self, images: np.ndarray,
                       q: Optional[np.ndarray]) -> np.ndarray:
        """Return (B, 3) unscaled distances: encoder, colour, arm error [m] (nan without q)."""
        feats = encoder_features(self.encoder, images)
        out = np.full((len(feats), len(COMPONENTS)), np.nan)
        out[:, 0] = self.encoder_gauss.distances(feats)
        out[:, 1] = self.colour_gauss.distances(hue_histogram(images))
        if q is not None:
            read = _with_bias(feats[:, :self.n_keypoint_coords]) @ self.arm_weights
            out[:, 2] = np.linalg.norm(read - self.tcp_xy(q), axis=1)
        return out

    @property
    def n_keypoint_coords(self) -> int:
        """Return how many leading encoder features are keypoint coordinates."""
        return self.arm_weights.shape[0] - 1

    def distances(self, images: np.ndarray, q: Optional[np.ndarray] = None) -> np.ndarray:
        """Return the (B,) per-frame scores (max of scaled components, arm unsmoothed)."""
        return np.nanmax(self.raw_components(images, q) / self.scales, axis=1)

    def distance(self, image: np.ndarray, q: Optional[np.ndarray] = None) -> float:
        """Return the score of one uint8 frame (H, W, 3) seen at joint positions ``q``."""
        return float(self.distances(np.asarray(image)[None],
                                    None if q is None else np.asarray(q)[None])[0])

    @classmethod
    def fit(cls, checkpoint: str, images: np.ndarray, q: np.ndarray, shrinkage: float = 0.05,
            batch: int = 256, ridge: float = 1e-3) -> 'FeatureNoveltyModel':
        """Fit every component on nominal frames (M, H, W, 3) and their joint positions (M, 7)."""
        if not 0.0 <= shrinkage < 1.0:
            raise ValueError(f'shrinkage must be in [0, 1), got {shrinkage}')
        if len(q) != len(images):
            raise ValueError(f'{len(q)} joint positions for {len(images)} frames')
        encoder = cls.load_encoder(checkpoint)
        feats = np.concatenate([encoder_features(encoder, images[i:i + batch])
                                for i in range(0, len(images), batch)])
        hues = np.concatenate([hue_histogram(images[i:i + batch])
                               for i in range(0, len(images), batch)])
        n_kp = 2 * int(encoder.keypoints.proj.out_channels)
        probe = cls(encoder, Gaussian.fit(feats, shrinkage), Gaussian.fit(hues, shrinkage),
                    np.zeros((n_kp + 1, 2)), np.ones(len(COMPONENTS)), checkpoint, len(feats),
                    shrinkage)
        # Ridge regression keypoints -> TCP xy: where the camera sees the arm.
        design = _with_bias(feats[:, :n_kp])
        target = probe.tcp_xy(q)
        probe.arm_weights[:] = np.linalg.solve(design.T @ design + ridge * np.eye(n_kp + 1),
                                               design.T @ target)
        raw = np.column_stack([probe.encoder_gauss.distances(feats),
                               probe.colour_gauss.distances(hues),
                               np.linalg.norm(design @ probe.arm_weights - target, axis=1)])
        probe.scales = np.quantile(raw, 0.99, axis=0)
        return probe

    def save(self, path: PathLike) -> Path:
        """Write every component and the provenance as ``.npz``; return the path."""
        path = Path(path)
        f32 = np.float32
        np.savez_compressed(
            path, encoder_mean=self.encoder_gauss.mean.astype(f32),
            encoder_precision=self.encoder_gauss.precision.astype(f32),
            colour_mean=self.colour_gauss.mean.astype(f32),
            colour_precision=self.colour_gauss.precision.astype(f32),
            arm_weights=self.arm_weights, scales=self.scales,
            checkpoint=np.array(self.checkpoint), n_fit=np.array(self.n_fit),
            shrinkage=np.array(self.shrinkage), definition=np.array(FEATURE_DEFINITION))
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
            g = {name: Gaussian(data[f'{name}_mean'].astype(np.float64),
                                data[f'{name}_precision'].astype(np.float64))
                 for name in ('encoder', 'colour')}
            return cls(cls.load_encoder(checkpoint), g['encoder'], g['colour'],
                       data['arm_weights'], data['scales'], checkpoint, int(data['n_fit']),
                       float(data['shrinkage']))


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(x)), x])


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


def hue_histogram(images: np.ndarray, bins: int = HUE_BINS) -> np.ndarray:
    """Return (B, bins) sqrt of the chroma-weighted hue mass per pixel of RGB frames.

    Per pixel: chroma = max - min channel, hue = atan2(sqrt(3) (g - b), 2r - g - b). Pixels
    with chroma <= MIN_CHROMA are left out; the square root evens out the variance between
    large regions (the table) and small ones (a cube).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f'images must be (B, H, W, 3), got {x.shape}')
    chroma = x.max(axis=-1) - x.min(axis=-1)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)
    idx = np.clip(((hue + np.pi) / (2.0 * np.pi) * bins).astype(np.int64), 0, bins - 1)
    weight = np.where(chroma > MIN_CHROMA, chroma / 255.0, 0.0)
    offsets = (np.arange(len(x)) * bins)[:, None, None]
    mass = np.bincount((idx + offsets).ravel(), weights=weight.ravel(),
                       minlength=len(x) * bins).reshape(len(x), bins)
    return np.sqrt(mass / float(x.shape[1] * x.shape[2]))


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
        self.last_component = ''
        self.consecutive_above = 0
        self._arm_errors: List[float] = []
        self._small: Optional[np.ndarray] = None
        self._q_at_change: Optional[np.ndarray] = None
        self._q: Optional[np.ndarray] = None
        self._q_history: Deque[Tuple[float, np.ndarray]] = deque(maxlen=Q_HISTORY)
        self._frozen_motion = 0.0

    def on_joint_positions(self, q: np.ndarray, stamp: Optional[float] = None) -> None:
        """Register the newest measured joint positions [rad], measured at ``stamp`` [s]."""
        self._q = np.array(q, dtype=float)
        if stamp is not None:
            self._q_history.append((float(stamp), self._q))

    def joints_at(self, stamp: Optional[float]) -> Optional[np.ndarray]:
        """Return the registered joint positions measured nearest to ``stamp`` (else newest)."""
        if stamp is None or not self._q_history:
            return self._q
        stamps = np.fromiter((s for s, _ in self._q_history), dtype=float)
        return self._q_history[int(np.argmin(np.abs(stamps - float(stamp))))][1]

    def on_frame(self, image: np.ndarray, stamp: Optional[float] = None) -> Optional[float]:
        """Check one RGB frame (H, W, 3) uint8; return its novelty score (None: no model).

        The arm component pairs the frame with the joint positions measured nearest to the
        frame's ``stamp`` (capture time): in a live graph the frame arrives 100-200 ms after
        it was taken, and the arm has moved a few cm since.
        """
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
        q = self.joints_at(stamp)
        raw = self.model.raw_components(img[None], None if q is None else q[None])[0]
        if np.isfinite(raw[2]):
            # One frame's reading jitters with the arm's motion blur and the joint state's
            # lag; a moved camera shifts every frame's reading.
            self._arm_errors = (self._arm_errors + [float(raw[2])])[
                -self.config.arm_window_frames:]
            raw[2] = float(np.mean(self._arm_errors))
        scaled = raw / self.model.scales
        worst = int(np.nanargmax(scaled))
        d = float(scaled[worst])
        self.last_distance = d
        self.last_component = COMPONENTS[worst]
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
                                f'images ({_WHY[self.last_component]}, score '
                                f'{self.last_distance:.3g})',
                                float(self.last_distance), float(self.threshold)))
        if self._frozen_motion > self.config.frozen_motion_rad:
            faults.append(Fault(FaultKind.FROZEN_FRAME, 'camera',
                                f'image unchanged while a joint moved '
                                f'{self._frozen_motion:.3f} rad', self._frozen_motion,
                                self.config.frozen_motion_rad))
        return faults


_WHY = {'encoder': 'to the policy\'s encoder', 'colour': 'colours',
        'arm': 'the arm is not where the joints put it: camera moved?'}


def _downsample(image: np.ndarray, size: int = 24) -> np.ndarray:
    """Block-average a frame to about ``size`` x ``size`` (intensity levels, float)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f'image must be (H, W, C), got {img.shape}')
    fy, fx = max(1, img.shape[0] // size), max(1, img.shape[1] // size)
    h, w = img.shape[0] // fy * fy, img.shape[1] // fx * fx
    return img[:h, :w].reshape(h // fy, fy, w // fx, fx, -1).mean(axis=(1, 3))
