"""Consistency score of a generative policy's sampled action chunks (STAC-style).

After Agia et al., "Unpacking Failure Modes of Generative Policies: Runtime Monitoring of
Consistency and Progress" (CoRL 2024, STAC): a policy in distribution predicts, for the same
future instants, similar action distributions from one decision to the next; out of
distribution its consecutive predictions stop continuing each other and its samples spread.

Per decision the policy delivers ``N`` sampled chunks ``(N, H, D)`` stamped with the observation
time ``t`` and ``times_from_start`` ``(H,)``, so sample step ``h`` targets the absolute instant
``t + times_from_start[h]``. Two terms are computed:

* **Temporal consistency**, squared Maximum Mean Discrepancy (MMD^2) between the previous chunk's
  samples and the new chunk's samples restricted to the steps both predict (matched in absolute
  time, e.g. previous steps 8..15 against new steps 0..7). Each sample's overlapping segment is
  one vector of ``L * D`` numbers, so whole partial trajectories are compared, not single points.
  Kernel ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``; ``sigma`` by the median heuristic (median
  Euclidean distance between distinct samples of the pooled set, floored), or fixed. The
  **unbiased** U-statistic estimator (Gretton et al. 2012, eq. 3) is the default: it is ~0 in
  expectation for identical distributions and can be slightly negative; the score clips it at 0
  (negative values are sampling noise around zero). ``unbiased: false`` selects the biased
  V-statistic (always >= 0, biased upwards by ~2/N).
* **Dispersion**, the spread of the samples of the new chunk: for every step the root of the
  trace of the sample covariance (ddof=1) in metres, i.e. the RMS distance of the samples from
  their mean, averaged over the ``H`` steps.

Score per decision (dimensionless)::

    score = mmd_weight * max(MMD^2, 0) + dispersion_weight * dispersion_m / dispersion_reference_m

MMD^2 is already dimensionless (in [0, 2] with an RBF kernel); the dispersion is normalised by a
reference spread. The first chunk (no predecessor) and a chunk that shares fewer than
``min_overlap_steps`` instants with its predecessor have no temporal term: their score is the
dispersion term alone and :class:`OverlapStatus` says so, so a gap is never mistaken for
consistency. The threshold on the score is calibrated (see ``calibration.py``), so only the
relative weighting of the two terms is a design choice.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Optional, Tuple

from genpolicy_ros.monitor.config_util import take
import numpy as np


class OverlapStatus(Enum):
    """How a chunk related to its predecessor; the value is a sentence for operators."""

    OVERLAP = 'Compared with the previous chunk on the instants both predict'
    FIRST_CHUNK = 'First chunk: no previous chunk to compare with, dispersion only'
    NO_OVERLAP = 'Too few instants shared with the previous chunk: dispersion only'


@dataclass(frozen=True)
class ConsistencyConfig:
    """Settings of the consistency score (``consistency.*`` in ``config/monitor.yaml``)."""

    mmd_weight: float
    dispersion_weight: float
    dispersion_reference_m: float
    unbiased: bool
    bandwidth_mode: str
    fixed_bandwidth_m: float
    min_bandwidth_m: float
    time_match_tolerance_s: float
    min_overlap_steps: int

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'ConsistencyConfig':
        """Build from the ``consistency`` parameter mapping; every key is required."""
        cfg = cls(**take(params, cls, 'consistency'))
        if cfg.mmd_weight < 0.0 or cfg.dispersion_weight < 0.0:
            raise ValueError('consistency weights must be >= 0')
        if cfg.mmd_weight == 0.0 and cfg.dispersion_weight == 0.0:
            raise ValueError('at least one consistency weight must be > 0')
        if cfg.dispersion_reference_m <= 0.0:
            raise ValueError('consistency.dispersion_reference_m must be > 0')
        if cfg.bandwidth_mode not in ('median', 'fixed'):
            raise ValueError(
                f"consistency.bandwidth_mode must be 'median' or 'fixed', got "
                f'{cfg.bandwidth_mode!r}')
        if cfg.fixed_bandwidth_m <= 0.0 or cfg.min_bandwidth_m <= 0.0:
            raise ValueError('consistency bandwidths must be > 0 m')
        if cfg.time_match_tolerance_s <= 0.0:
            raise ValueError('consistency.time_match_tolerance_s must be > 0')
        if cfg.min_overlap_steps < 1:
            raise ValueError('consistency.min_overlap_steps must be >= 1')
        return cfg

    def definition(self) -> str:
        """Return a one-line description of the score; a calibration is valid only for it."""
        mmd = 'unbiased' if self.unbiased else 'biased'
        if self.bandwidth_mode == 'median':
            bw = f'median-heuristic bandwidth (floor {self.min_bandwidth_m:g} m)'
        else:
            bw = f'fixed bandwidth {self.fixed_bandwidth_m:g} m'
        return (f'stac-v1: {self.mmd_weight:g}*max(0, {mmd} MMD^2, RBF, {bw}, overlap matched '
                f'within {self.time_match_tolerance_s:g} s, >= {self.min_overlap_steps} steps) '
                f'+ {self.dispersion_weight:g}*dispersion_m/{self.dispersion_reference_m:g}')


@dataclass(frozen=True)
class ConsistencyScore:
    """Result of scoring one decision: the score and the values that produced it."""

    score: float
    mmd2: Optional[float]          # raw estimate (may be < 0 if unbiased); None without overlap
    dispersion_m: float
    bandwidth_m: Optional[float]   # None without overlap
    overlap_steps: int
    status: OverlapStatus
    stamp: float


def pairwise_sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the ``(n, m)`` squared Euclidean distances between rows of ``x`` and ``y``."""
    d2 = (np.sum(x * x, axis=1)[:, None] + np.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T))
    return np.maximum(d2, 0.0)  # cancellation can make exact zeros slightly negative


def median_heuristic_bandwidth(x: np.ndarray, y: np.ndarray, floor: float) -> float:
    """Return the median distance between distinct rows of the pooled ``[x; y]``, >= ``floor``.

    The floor keeps the kernel defined when all samples coincide (a deterministic policy).
    """
    z = np.concatenate([x, y], axis=0)
    d2 = pairwise_sq_dists(z, z)
    iu = np.triu_indices(z.shape[0], k=1)
    return max(float(np.sqrt(np.median(d2[iu]))), floor)


def mmd2_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float, unbiased: bool = True) -> float:
    """Return the squared MMD between samples ``x (n, d)`` and ``y (m, d)`` with an RBF kernel.

    ``unbiased=True`` is the U-statistic (diagonal terms excluded; needs n, m >= 2), otherwise the
    biased V-statistic. ``bandwidth`` is the kernel's sigma in the units of the data.
    """
    n, m = x.shape[0], y.shape[0]
    if bandwidth <= 0.0:
        raise ValueError(f'bandwidth must be > 0, got {bandwidth}')
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    kxx = np.exp(-gamma * pairwise_sq_dists(x, x))
    kyy = np.exp(-gamma * pairwise_sq_dists(y, y))
    kxy = np.exp(-gamma * pairwise_sq_dists(x, y))
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError('the unbiased MMD estimator needs at least 2 samples per side')
        # The diagonal of an RBF Gram matrix is exactly 1.
        exx = (kxx.sum() - n) / (n * (n - 1))
        eyy = (kyy.sum() - m) / (m * (m - 1))
    else:
        exx = kxx.mean()
        eyy = kyy.mean()
    return float(exx + eyy - 2.0 * kxy.mean())


def dispersion(samples: np.ndarray) -> float:
    """Return the mean over steps of the RMS spread of ``samples (N, H, D)`` about their mean.

    Per step this is ``sqrt(trace(cov))`` with ddof=1, in the units of the samples (metres).
    """
    dev = samples - samples.mean(axis=0, keepdims=True)
    per_step = np.sqrt(np.sum(dev * dev, axis=(0, 2)) / (samples.shape[0] - 1))
    return float(per_step.mean())


def match_overlap(prev_abs_times: np.ndarray, new_abs_times: np.ndarray,
                  tolerance_s: float) -> Tuple[np.ndarray, np.ndarray]:
    """Return index arrays ``(i_prev, i_new)`` of steps that target the same absolute instant.

    Each new step takes the nearest previous step; pairs further apart than ``tolerance_s`` are
    dropped, as are repeated previous steps, so the result is one-to-one and ordered.
    """
    diff = np.abs(prev_abs_times[:, None] - new_abs_times[None, :])
    nearest = np.argmin(diff, axis=0)
    ok = diff[nearest, np.arange(new_abs_times.size)] <= tolerance_s
    i_new = np.nonzero(ok)[0]
    i_prev = nearest[ok]
    if i_prev.size > 1:
        keep = np.concatenate([[True], np.diff(i_prev) > 0])
        i_prev, i_new = i_prev[keep], i_new[keep]
    return i_prev, i_new


class ConsistencyScorer:
    """Score each decision against the previous one; keeps the previous chunk's samples."""

    def __init__(self, config: ConsistencyConfig):
        self.config = config
        self._prev_abs_times: Optional[np.ndarray] = None
        self._prev_samples: Optional[np.ndarray] = None

    @property
    def sample_dim(self) -> Optional[int]:
        """Return the action dimension D of the remembered chunk, or None."""
        return None if self._prev_samples is None else int(self._prev_samples.shape[2])

    def reset(self) -> None:
        """Forget the previous chunk (new episode): the next chunk is scored as a first chunk."""
        self._prev_abs_times = None
        self._prev_samples = None

    @staticmethod
    def validate(stamp: float, times_from_start: np.ndarray,
                 samples: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``(times, samples)`` as float arrays, or raise ``ValueError`` saying what is bad.

        Requires ``samples (N >= 2, H, D)``, ``times_from_start (H,)`` strictly increasing, and
        everything finite.
        """
        times = np.asarray(times_from_start, dtype=float)
        s = np.asarray(samples, dtype=float)
        if s.ndim != 3:
            raise ValueError(f'samples must have shape (N, H, D), got {s.shape}')
        if s.shape[0] < 2:
            raise ValueError(f'need at least 2 samples per chunk, got {s.shape[0]}')
        if times.shape != (s.shape[1],):
            raise ValueError(f'times_from_start must have shape ({s.shape[1]},), '
                             f'got {times.shape}')
        if not np.isfinite(stamp) or not np.all(np.isfinite(times)) \
                or not np.all(np.isfinite(s)):
            raise ValueError('chunk stamp, times or samples contain NaN/Inf')
        if times.size > 1 and np.any(np.diff(times) <= 0.0):
            raise ValueError('times_from_start must be strictly increasing')
        return times, s

    def score(self, stamp: float, times_from_start: np.ndarray,
              samples: np.ndarray) -> ConsistencyScore:
        """Score a new chunk and remember it as the predecessor of the next one.

        ``stamp`` is the observation time [s], ``times_from_start`` ``(H,)`` [s] and
        ``samples`` ``(N, H, D)`` [m]. Raises ``ValueError`` on malformed input (nothing is
        remembered then).
        """
        cfg = self.config
        times, s = self.validate(stamp, times_from_start, samples)
        abs_times = float(stamp) + times
        disp = dispersion(s)
        mmd2: Optional[float] = None
        bandwidth: Optional[float] = None
        overlap = 0
        if self._prev_samples is None:
            status = OverlapStatus.FIRST_CHUNK
        elif self._prev_samples.shape[2] != s.shape[2]:
            raise ValueError(f'sample dimension changed from {self._prev_samples.shape[2]} '
                             f'to {s.shape[2]}')
        else:
            i_prev, i_new = match_overlap(self._prev_abs_times, abs_times,
                                          cfg.time_match_tolerance_s)
            overlap = int(i_new.size)
            if overlap < cfg.min_overlap_steps:
                status = OverlapStatus.NO_OVERLAP
            else:
                status = OverlapStatus.OVERLAP
                x = self._prev_samples[:, i_prev, :].reshape(self._prev_samples.shape[0], -1)
                y = s[:, i_new, :].reshape(s.shape[0], -1)
                if cfg.bandwidth_mode == 'median':
                    bandwidth = median_heuristic_bandwidth(x, y, cfg.min_bandwidth_m)
                else:
                    bandwidth = cfg.fixed_bandwidth_m
                mmd2 = mmd2_rbf(x, y, bandwidth, cfg.unbiased)
        value = cfg.dispersion_weight * disp / cfg.dispersion_reference_m
        if mmd2 is not None:
            value += cfg.mmd_weight * max(mmd2, 0.0)
        self._prev_abs_times = abs_times
        self._prev_samples = s.copy()
        return ConsistencyScore(score=float(value), mmd2=mmd2, dispersion_m=disp,
                                bandwidth_m=bandwidth, overlap_steps=overlap, status=status,
                                stamp=float(stamp))
