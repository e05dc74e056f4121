"""Camera-content checks of the runtime monitor: observation novelty and frozen frames.

The consistency score sees only what the policy outputs; a policy can be confidently wrong on
an image unlike its training data (another object colour, other light, an occluded view, a
camera that was bumped) or in a world that changed behind its back. So the monitor also looks
at each camera frame itself:

* **Novelty**: four components, each a distance divided by its own 99th percentile on the
  policy's demonstrations (fitted once); the score is the largest:
  the policy encoder's features (spatial-softmax keypoints + last-layer channel means,
  Mahalanobis to their training mean with a shrunk covariance) - unlike training *to the
  policy*; a hue histogram - colours the nearly colour-blind encoder does not separate;
  the arm's position: ridge regressions on quadratic keypoint features read where the image
  shows the TCP and the cube; forward kinematics of the measured joints gives the TCP too -
  when the two disagree for ``arm_window_frames`` frames, the camera is not where it was in
  training; and the cube's motion: the cube read from the image moved further between two
  frames than the TCP did while it is out of the TCP's reach - something other than the arm
  moved it (kept for ``cube_window_frames`` frames).
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
from typing import Any, Deque, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.monitor.watchdogs import Fault, FaultKind

PathLike = Union[str, Path]
FEATURE_DEFINITION = (
    'novelty-v3: max over components of (distance / its 99th percentile on the fit frames); '
    'encoder: Mahalanobis / sqrt(D) of the policy encoder keypoints + last-layer channel means; '
    'colour: Mahalanobis / sqrt(D) of the sqrt chroma-weighted hue histogram (16 bins, chroma '
    '> 30); arm: |TCP xy read from quadratic keypoint features (ridge) - TCP xy from the '
    'joints| [m], mean of the last arm_window_frames frames; cube: max(0, |step of the median '
    'of 3 cube xy readings| - |TCP xy step|) [m] while the cube is beyond '
    'cube_contact_radius_m of the TCP (scale: ungated), max of the last cube_window_frames '
    'frames')
HUE_BINS = 16
MIN_CHROMA = 30.0           # intensity levels; greys (the arm, shadows) carry no hue
COMPONENTS = ('encoder', 'colour', 'arm', 'cube')
# Floors of the component scales: a tiny fit must not make 1 mm of reading noise a fault.
MIN_SCALES = np.array([1e-6, 1e-6, 1e-3, 1e-3])
CUBE_MEDIAN_FRAMES = 3      # cube readings a median is taken over (outvotes one bad reading)
Q_HISTORY = 512             # joint states kept to pair with frames (2 s at 250 Hz)


@dataclass(frozen=True)
class NoveltyConfig:
    """Settings of the camera-content checks (``novelty.*`` in ``config/monitor.yaml``)."""

    model_file: str
    hold_consecutive_frames: int
    arm_window_frames: int
    cube_window_frames: int
    cube_contact_radius_m: float
    frozen_max_block_diff: float
    frozen_motion_rad: float

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'NoveltyConfig':
        """Build from a parameter mapping; every key is required."""
        cfg = cls(**take(params, cls, 'novelty'))
        if min(cfg.hold_consecutive_frames, cfg.arm_window_frames,
               cfg.cube_window_frames) < 1:
            raise ValueError('novelty.hold_consecutive_frames, novelty.arm_window_frames and '
                             'novelty.cube_window_frames must be >= 1')
        if cfg.cube_contact_radius_m < 0.0:
            raise ValueError('novelty.cube_contact_radius_m must be >= 0')
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
    """What the training frames looked like, in four components (see FEATURE_DEFINITION).

    * ``encoder``: the policy encoder's features - unlike training to the policy itself;
    * ``colour``: a hue histogram - the encoder is nearly colour-blind (a blue cube);
    * ``arm``: where the keypoints put the TCP vs where the joint encoders put it - the
      camera has moved, or the picture is not of this arm (visual-proprioceptive mismatch);
    * ``cube``: the cube read from the keypoints moved further than the TCP did - something
      other than the arm moved it (the only thing that pushes it in this task is the arm).

    Per frame, :meth:`readings` gives the two image distances and the TCP / cube positions the
    image shows; :class:`SceneTrack` turns a stream of readings into the arm and cube
    components. Each component is divided by its 99th percentile on the fit frames, so the
    largest is one unitless score with one calibrated threshold.
    """

    def __init__(self, encoder, encoder_gauss: Gaussian, colour_gauss: Gaussian,
                 arm_weights: np.ndarray, cube_weights: np.ndarray, scales: np.ndarray,
                 checkpoint: str, n_fit: int, shrinkage: float) -> None:
        self.encoder = encoder
        self.encoder_gauss = encoder_gauss
        self.colour_gauss = colour_gauss
        self.arm_weights = np.asarray(arm_weights, dtype=np.float64)
        self.cube_weights = np.asarray(cube_weights, dtype=np.float64)
        if self.arm_weights.shape != self.cube_weights.shape:
            raise ValueError('arm and cube read-out weights must have one shape')
        self.scales = np.asarray(scales, dtype=np.float64)
        if self.scales.shape != (len(COMPONENTS),) or np.any(self.scales <= 0.0):
            raise ValueError(f'scales must be {len(COMPONENTS)} positive numbers')
        self.checkpoint = str(checkpoint)
        self.n_fit = int(n_fit)
        self.shrinkage = float(shrinkage)
        self._kinematics = None
        self.ridge = float('nan')  # the read-outs' ridge strength (set by fit)

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

    @staticmethod
    def n_keypoint_coords(encoder) -> int:
        """Return how many leading encoder features are keypoint coordinates."""
        return 2 * int(encoder.keypoints.proj.out_channels)

    def tcp_xy(self, q: np.ndarray) -> np.ndarray:
        """Return the (B, 2) TCP xy [m] of joint positions (B, 7) by forward kinematics."""
        if self._kinematics is None:
            from genpolicy_ros.robot import FrankaModel
            self._kinematics = FrankaModel()
        q = np.atleast_2d(np.asarray(q, dtype=float))
        return np.stack([self._kinematics.ee_pose(qi)[0][:2] for qi in q])

    def readings(self, images: np.ndarray, q: Optional[np.ndarray]) -> FrameReadings:
        """Return what each frame (B, H, W, 3) shows, seen at joint positions ``q`` (B, 7)."""
        feats = encoder_features(self.encoder, images)
        design = read_out_design(feats[:, :self.n_keypoint_coords(self.encoder)])
        tcp_fk = (np.full((len(feats), 2), np.nan) if q is None else self.tcp_xy(q))
        return FrameReadings(self.encoder_gauss.distances(feats),
                             self.colour_gauss.distances(hue_histogram(images)),
                             design @ self.arm_weights, tcp_fk, design @ self.cube_weights)

    def raw_components(self, images: np.ndarray, q: Optional[np.ndarray]) -> np.ndarray:
        """Return (B, 4) unscaled per-frame distances of unrelated frames.

        Encoder, colour, arm error [m] (nan without ``q``); the cube column is nan - cube
        motion needs consecutive frames (:class:`SceneTrack`).
        """
        r = self.readings(images, q)
        out = np.full((len(r.encoder), len(COMPONENTS)), np.nan)
        out[:, 0], out[:, 1] = r.encoder, r.colour
        out[:, 2] = np.linalg.norm(r.tcp_read - r.tcp_fk, axis=1)
        return out

    def distances(self, images: np.ndarray, q: Optional[np.ndarray] = None) -> np.ndarray:
        """Return the (B,) per-frame scores of unrelated frames (max of scaled components)."""
        return np.nanmax(self.raw_components(images, q) / self.scales, axis=1)

    def distance(self, image: np.ndarray, q: Optional[np.ndarray] = None) -> float:
        """Return the score of one uint8 frame (H, W, 3) seen at joint positions ``q``."""
        return float(self.distances(np.asarray(image)[None],
                                    None if q is None else np.asarray(q)[None])[0])

    @classmethod
    def fit(cls, checkpoint: str, episodes: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray]],
            shrinkage: float = 0.05, batch: int = 256,
            ridges: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> 'FeatureNoveltyModel':
        """Fit every component on nominal episodes.

        ``episodes`` yields ``(frames (T, H, W, 3) uint8, joint positions (T, 7), cube xy
        (T, 2) [m])`` of consecutive frames (one per decision, as recorded in the demos); it is
        read once, so a generator keeps only one episode's images in memory. The read-outs'
        ridge strength is chosen among ``ridges`` by two-fold cross-validation over episodes.
        """
        if not 0.0 <= shrinkage < 1.0:
            raise ValueError(f'shrinkage must be in [0, 1), got {shrinkage}')
        encoder = cls.load_encoder(checkpoint)
        n_kp = cls.n_keypoint_coords(encoder)
        probe = cls(encoder, None, None, np.zeros((1, 2)), np.zeros((1, 2)),
                    np.ones(len(COMPONENTS)), checkpoint, 0, shrinkage)
        feats, hues, tcp, cube, lengths = [], [], [], [], []
        for images, q, cube_xy in episodes:
            if not len(q) == len(images) == len(cube_xy):
                raise ValueError(f'{len(images)} frames, {len(q)} joint positions and '
                                 f'{len(cube_xy)} cube positions in one episode')
            for i in range(0, len(images), batch):
                feats.append(encoder_features(encoder, images[i:i + batch]))
                hues.append(hue_histogram(images[i:i + batch]))
            tcp.append(probe.tcp_xy(q))
            cube.append(np.asarray(cube_xy, dtype=float)[:, :2])
            lengths.append(len(images))
        if len(lengths) < 2:
            raise ValueError(f'{len(lengths)} episode(s): the novelty model needs at least 2 '
                             f'(its position read-outs are scaled on held-out episodes)')
        feats, hues = np.concatenate(feats), np.concatenate(hues)
        tcp, cube = np.concatenate(tcp), np.concatenate(cube)
        probe.encoder_gauss = Gaussian.fit(feats, shrinkage)
        probe.colour_gauss = Gaussian.fit(hues, shrinkage)
        # Ridge regressions from quadratic keypoint features to where the camera sees the TCP
        # and the cube (linear keypoints read the TCP to 2 cm at the 99th percentile, these to
        # 1 cm). Two folds by episode give out-of-sample readings for the scales (with ~2000
        # features a small fit would read its own frames perfectly); the model keeps the
        # weights fitted on all. Normal equations are accumulated in blocks: 60000 frames x
        # 2000 features would not fit in memory.
        starts = np.cumsum([0] + lengths)
        fold = np.repeat(np.arange(len(lengths)) % 2, lengths)
        targets = np.column_stack([tcp, cube])
        n_design = read_out_design(feats[:1, :n_kp]).shape[1]
        gram = np.zeros((2, n_design, n_design))
        rhs = np.zeros((2, n_design, 4))
        for i in range(0, len(feats), 4096):
            design = read_out_design(feats[i:i + 4096, :n_kp])
            for f in (0, 1):
                rows = fold[i:i + 4096] == f
                gram[f] += design[rows].T @ design[rows]
                rhs[f] += design[rows].T @ targets[i:i + 4096][rows]
        # Held-out readings of every frame for every ridge strength (weights fitted on the
        # other fold), one more pass over the design; the strength with the smallest held-out
        # reading error is kept (a small fit needs a strong one, 60000 frames almost none).
        held_out = [[np.linalg.solve(gram[1 - f] + lam * np.eye(n_design), rhs[1 - f])
                     for f in (0, 1)] for lam in ridges]
        reads = np.empty((len(ridges), len(feats), 4))
        for i in range(0, len(feats), 4096):
            design = read_out_design(feats[i:i + 4096, :n_kp])
            for f in (0, 1):
                rows = np.flatnonzero(fold[i:i + 4096] == f) + i
                for r, w in enumerate(held_out):
                    reads[r, rows] = design[rows - i] @ w[f]
        diff = reads - targets
        errors = (np.linalg.norm(diff[..., :2], axis=2).sum(axis=1)
                  + np.linalg.norm(diff[..., 2:], axis=2).sum(axis=1))
        best = int(np.argmin(errors))
        lam = float(ridges[best])
        weights = np.linalg.solve(gram.sum(axis=0) + lam * np.eye(n_design), rhs.sum(axis=0))
        probe.arm_weights, probe.cube_weights = weights[:, :2], weights[:, 2:]
        probe.ridge = lam
        arm_err, cube_jump = [], []
        for e, n in enumerate(lengths):
            rows = slice(starts[e], starts[e] + n)
            track = SceneTrack(1, 1)  # ungated: the scale is the reading's own step noise
            for read, tf in zip(reads[best, rows], tcp[rows]):
                a, c = track.push(read[:2], tf, read[2:])
                arm_err.append(a)
                cube_jump.append(c)
        raw = np.column_stack([probe.encoder_gauss.distances(feats),
                               probe.colour_gauss.distances(hues), arm_err, cube_jump])
        probe.scales = np.maximum(np.quantile(raw, 0.99, axis=0), MIN_SCALES)
        probe.n_fit = len(feats)
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
            arm_weights=self.arm_weights, cube_weights=self.cube_weights, scales=self.scales,
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
                       data['arm_weights'], data['cube_weights'], data['scales'], checkpoint,
                       int(data['n_fit']), float(data['shrinkage']))


@dataclass(frozen=True)
class FrameReadings:
    """What frames show (B rows): image distances and positions read from the keypoints."""

    encoder: np.ndarray      # (B,) Mahalanobis / sqrt(D) of the encoder features
    colour: np.ndarray       # (B,) Mahalanobis / sqrt(D) of the hue histogram
    tcp_read: np.ndarray     # (B, 2) TCP xy the image shows [m]
    tcp_fk: np.ndarray       # (B, 2) TCP xy of the measured joints [m] (nan: none)
    cube_read: np.ndarray    # (B, 2) cube xy the image shows [m]


class SceneTrack:
    """The arm and cube components over a stream of consecutive frames (pure, per stream).

    * arm: ``|TCP read - TCP from the joints|``, mean of the last ``arm_window`` frames (one
      frame jitters with motion blur and joint-state lag; a moved camera shifts them all);
    * cube: how much further the cube moved than the TCP from one frame to the next,
      ``max(0, |m_t - m_t-1| - |tcp_t - tcp_t-1|)`` with ``m`` the median of the last
      ``CUBE_MEDIAN_FRAMES`` cube readings (one bad reading is outvoted), counted only when
      the cube is now more than ``contact_radius_m`` from the TCP: within it the arm may be
      pushing the cube, and the fingers hide it (the reading then snaps toward the TCP for a
      few frames). The component is its maximum over the last ``cube_window`` frames, so a
      jump stays visible long enough for the frames-in-a-row rule.
    """

    def __init__(self, arm_window: int, cube_window: int, contact_radius_m: float = 0.0) -> None:
        if arm_window < 1 or cube_window < 1:
            raise ValueError('windows must be >= 1 frame')
        self.arm_window = int(arm_window)
        self.cube_window = int(cube_window)
        self.contact_radius_m = float(contact_radius_m)
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new episode, or after a gap)."""
        self._arm: Deque[float] = deque(maxlen=self.arm_window)
        self._cube_reads: Deque[np.ndarray] = deque(maxlen=CUBE_MEDIAN_FRAMES)
        self._jumps: Deque[float] = deque(maxlen=self.cube_window)
        self._last: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (median cube, tcp fk)

    def push(self, tcp_read: np.ndarray, tcp_fk: np.ndarray,
             cube_read: np.ndarray) -> Tuple[float, float]:
        """Add one frame's readings; return ``(arm [m], cube [m])`` (nan: no joints yet)."""
        tcp_fk = np.asarray(tcp_fk, dtype=float)
        if not np.all(np.isfinite(tcp_fk)):
            return float('nan'), float('nan')
        self._arm.append(float(np.linalg.norm(np.asarray(tcp_read) - tcp_fk)))
        self._cube_reads.append(np.asarray(cube_read, dtype=float))
        median = np.median(np.stack(self._cube_reads), axis=0)
        if self._last is not None:
            moved = float(np.linalg.norm(median - self._last[0]))
            pushed = float(np.linalg.norm(tcp_fk - self._last[1]))
            apart = float(np.linalg.norm(median - tcp_fk)) > self.contact_radius_m
            self._jumps.append(max(0.0, moved - pushed) if apart else 0.0)
        self._last = (median, tcp_fk)
        cube = max(self._jumps) if self._jumps else 0.0
        return float(np.mean(self._arm)), float(cube)


def read_out_design(keypoints: np.ndarray) -> np.ndarray:
    """Return the (B, 1 + K + K(K+1)/2) design of the position read-outs: 1, k, k_i k_j."""
    k = np.asarray(keypoints, dtype=np.float64)
    i, j = np.triu_indices(k.shape[1])
    return np.column_stack([np.ones(len(k)), k, k[:, i] * k[:, j]])


def encoder_features(encoder, images: np.ndarray) -> np.ndarray:
    """Keypoints and last-layer channel means of ``encoder`` for uint8 frames (B, H, W, 3)."""
    import torch
    from genpolicy_ros.policy.network import images_to_tensor
    # Writable as well as contiguous: torch.from_numpy warns on read-only arrays (frames
    # decoded from a ROS message buffer are read-only); copies only when needed.
    arr = np.require(images, dtype=np.uint8, requirements=['C', 'W'])
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
        self.track = SceneTrack(config.arm_window_frames, config.cube_window_frames,
                                config.cube_contact_radius_m)
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

    def read(self, image: np.ndarray, q: Optional[np.ndarray]) -> Optional[FrameReadings]:
        """Return what the model reads in a frame seen at joint positions ``q``.

        None without a model or for a frame of another size. The expensive part of
        :meth:`on_frame`, and it changes no state: a node runs it outside the lock its control
        loop takes.
        """
        img = np.asarray(image)
        if self.model is None or img.shape[:2] != (self.model.image_size_px,) * 2:
            return None
        return self.model.readings(img[None], None if q is None else np.asarray(q)[None])

    def on_frame(self, image: np.ndarray, stamp: Optional[float] = None,
                 readings: Optional[FrameReadings] = None) -> Optional[float]:
        """Check one RGB frame (H, W, 3) uint8; return its novelty score (None: no model).

        The arm component pairs the frame with the joint positions measured nearest to the
        frame's ``stamp`` (capture time): in a live graph the frame arrives 100-200 ms after
        it was taken, and the arm has moved a few cm since. ``readings``: :meth:`read` of this
        frame at :meth:`joints_at` its stamp, if the caller computed it already.
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
        r = readings if readings is not None else self.read(img, self.joints_at(stamp))
        arm, cube = self.track.push(r.tcp_read[0], r.tcp_fk[0], r.cube_read[0])
        raw = np.array([r.encoder[0], r.colour[0], arm, cube])
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
        'arm': 'the arm is not where the joints put it: camera moved?',
        'cube': 'the cube moved without the arm pushing it'}


def _downsample(image: np.ndarray, size: int = 24) -> np.ndarray:
    """Block-average a frame to about ``size`` x ``size`` (intensity levels, float)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f'image must be (H, W, C), got {img.shape}')
    fy, fx = max(1, img.shape[0] // size), max(1, img.shape[1] // size)
    h, w = img.shape[0] // fy * fy, img.shape[1] // fx * fx
    return img[:h, :w].reshape(h // fy, fy, w // fx, fx, -1).mean(axis=(1, 3))
