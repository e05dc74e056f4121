"""Split-conformal calibration of the consistency-score threshold from nominal episodes.

Statistic: the **per-episode maximum** of the per-decision score. Decisions within an episode are
strongly correlated (each chunk is scored against the previous one), so they are not
exchangeable and a quantile of pooled per-decision scores would carry no guarantee; whole
episodes run from independent seeds are. With ``n`` nominal calibration episodes and
``k = ceil((n + 1)(1 - alpha))``, the threshold is the k-th smallest episode maximum (the
empirical quantile at level ``k / n``). For a new nominal episode exchangeable with the
calibration ones, P(its maximum score > threshold) <= alpha, i.e. at most an ``alpha`` fraction
of nominal episodes see even one decision above the threshold. The gate asks for several
consecutive decisions above it before HOLD, so its false-HOLD rate is at most that.

Finite-sample rule: ``k <= n`` requires ``n >= ceil(1 / alpha) - 1`` (19 episodes for
alpha = 0.05); with fewer episodes no finite threshold has the guarantee, and
:func:`conformal_threshold` raises :class:`InsufficientCalibrationData` instead of guessing.

The result is saved as ``config/monitor_calibration.yaml`` together with alpha, n, the policy
checkpoint and the exact score definition, because a threshold is meaningless for another policy
or another score; the monitor refuses a calibration whose definition differs from its own.
"""

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from genpolicy_ros.monitor.config_util import take
from genpolicy_ros.paths import config_path
import numpy as np
import yaml

CALIBRATION_KEY = 'monitor_calibration'
EPISODE_STATISTIC = 'per-episode maximum of the per-decision score'
# (n + 1)(1 - alpha) is often an integer that floating point lands just above (20 * 0.95).
_EPS = 1e-9


class InsufficientCalibrationData(ValueError):
    """Too few nominal episodes for a finite split-conformal threshold at this alpha."""


def min_episodes(alpha: float) -> int:
    """Return the smallest ``n`` with ``ceil((n + 1)(1 - alpha)) <= n``: ``ceil(1/alpha) - 1``."""
    _check_alpha(alpha)
    return math.ceil(1.0 / alpha - _EPS) - 1


def conformal_rank(n: int, alpha: float) -> int:
    """Return ``k = ceil((n + 1)(1 - alpha))``, the 1-based rank of the threshold score."""
    _check_alpha(alpha)
    return math.ceil((n + 1) * (1.0 - alpha) - _EPS)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f'alpha must be in (0, 1), got {alpha}')


def conformal_threshold(scores: Sequence[float], alpha: float) -> float:
    """Return the split-conformal threshold of exchangeable ``scores`` at miscoverage ``alpha``.

    That is the ``ceil((n + 1)(1 - alpha))``-th smallest score. Raises
    :class:`InsufficientCalibrationData` if ``n < ceil(1/alpha) - 1`` and ``ValueError`` on
    non-finite scores.
    """
    s = np.asarray(scores, dtype=float).ravel()
    n = s.size
    need = min_episodes(alpha)
    if n < need:
        raise InsufficientCalibrationData(
            f'split-conformal calibration at alpha={alpha} needs at least {need} nominal '
            f'episodes (n >= ceil(1/alpha) - 1), got {n}; record more nominal episodes or '
            f'raise alpha')
    if not np.all(np.isfinite(s)):
        raise ValueError('calibration scores contain NaN/Inf')
    k = conformal_rank(n, alpha)
    return float(np.sort(s)[k - 1])


def episode_maxima(episode_scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Return the maximum per-decision score of each episode; empty episodes are an error."""
    out = []
    for i, ep in enumerate(episode_scores):
        e = np.asarray(ep, dtype=float).ravel()
        if e.size == 0:
            raise ValueError(f'episode {i} has no scored decision')
        out.append(float(e.max()))
    return np.asarray(out)


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds with everything needed to judge whether they still apply.

    Two alarm channels share the false-positive budget ``alpha`` (Bonferroni): the
    consistency score (``threshold``) and the camera-novelty distance (``novelty_threshold``,
    statistic: :func:`genpolicy_ros.monitor.novelty.run_statistic`) are each calibrated at
    ``alpha / 2``, so a nominal episode raises either alarm with probability <= ``alpha``.
    """

    threshold: float
    alpha: float
    n_episodes: int
    policy_checkpoint: str
    date: str
    score_definition: str
    episode_statistic: str
    novelty_threshold: float
    novelty_definition: str
    novelty_model_file: str

    @property
    def channel_alpha(self) -> float:
        """Return the miscoverage level each of the two channels is calibrated at."""
        return self.alpha / 2.0

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> 'Calibration':
        """Build from the mapping stored in the calibration file; validates every field."""
        cal = cls(**take(params, cls, CALIBRATION_KEY))
        if not (math.isfinite(cal.threshold) and math.isfinite(cal.novelty_threshold)):
            raise ValueError(f'calibration thresholds must be finite, got {cal.threshold}, '
                             f'{cal.novelty_threshold}')
        if cal.n_episodes < min_episodes(cal.channel_alpha):
            raise InsufficientCalibrationData(
                f'calibration file claims n={cal.n_episodes} episodes, fewer than the '
                f'{min_episodes(cal.channel_alpha)} that alpha={cal.alpha} (two channels at '
                f'alpha/2) requires')
        if cal.episode_statistic != EPISODE_STATISTIC:
            raise ValueError(f'unknown calibration statistic {cal.episode_statistic!r}')
        return cal


def calibrate(episode_scores: Sequence[Sequence[float]], alpha: float,
              policy_checkpoint: str, score_definition: str,
              novelty_statistics: Sequence[float], novelty_definition: str,
              novelty_model_file: str, date: Optional[str] = None) -> Calibration:
    """Return the calibration from ``n`` nominal episodes.

    ``episode_scores[i]`` lists the consistency scores of episode ``i``'s decisions;
    ``novelty_statistics[i]`` is the novelty run statistic of its camera frames. Each channel
    gets ``alpha / 2``. ``date`` defaults to now (UTC, ISO 8601).
    """
    maxima = episode_maxima(episode_scores)
    novelty = np.asarray(novelty_statistics, dtype=float).ravel()
    if novelty.size != maxima.size:
        raise ValueError(f'{novelty.size} novelty statistics for {maxima.size} episodes')
    threshold = conformal_threshold(maxima, alpha / 2.0)
    novelty_threshold = conformal_threshold(novelty, alpha / 2.0)
    if date is None:
        date = datetime.now(timezone.utc).isoformat(timespec='seconds')
    return Calibration(threshold=threshold, alpha=float(alpha), n_episodes=int(maxima.size),
                       policy_checkpoint=str(policy_checkpoint), date=str(date),
                       score_definition=str(score_definition),
                       episode_statistic=EPISODE_STATISTIC,
                       novelty_threshold=novelty_threshold,
                       novelty_definition=str(novelty_definition),
                       novelty_model_file=str(novelty_model_file))


def default_calibration_path(file_name: str = 'monitor_calibration.yaml') -> Path:
    """Return ``config/<file_name>``."""
    return config_path(file_name)


def save_calibration(cal: Calibration, path: Union[str, Path, None] = None) -> Path:
    """Write ``cal`` as YAML (default ``config/monitor_calibration.yaml``); return the path."""
    path = Path(path) if path is not None else default_calibration_path()
    header = ('# Split-conformal thresholds of the runtime monitor (consistency score, camera '
              'novelty).\n'
              '# Generated by genpolicy_ros.monitor.calibration from nominal episodes; do not '
              'edit by hand.\n')
    body = yaml.safe_dump({CALIBRATION_KEY: asdict(cal)}, sort_keys=False, width=1000)
    path.write_text(header + body)
    return path


def load_calibration(path: Union[str, Path, None] = None) -> Calibration:
    """Read a calibration file; ``FileNotFoundError`` if it does not exist (not calibrated)."""
    path = Path(path) if path is not None else default_calibration_path()
    if not path.is_file():
        raise FileNotFoundError(
            f'no monitor calibration at {path}: run the calibration on nominal episodes of the '
            f'policy first')
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or CALIBRATION_KEY not in data:
        raise ValueError(f'{path} has no top-level {CALIBRATION_KEY!r} mapping')
    return Calibration.from_dict(data[CALIBRATION_KEY])
