"""Split-conformal threshold: order statistic, finite-sample rule, coverage, file round trip."""

from genpolicy_ros.monitor.calibration import (calibrate, Calibration, conformal_rank,
                                               conformal_threshold, EPISODE_STATISTIC,
                                               episode_maxima, InsufficientCalibrationData,
                                               load_calibration, min_episodes,
                                               save_calibration)
import numpy as np
import pytest
import yaml


@pytest.mark.parametrize('alpha,n', [(0.05, 19), (0.1, 9), (0.2, 4), (0.01, 99), (0.3, 3)])
def test_minimum_number_of_episodes_is_ceil_one_over_alpha_minus_one(alpha, n):
    """Minimum number of episodes is ceil one over alpha minus one."""
    assert min_episodes(alpha) == n
    assert conformal_rank(n, alpha) <= n          # enough: a finite order statistic exists
    assert conformal_rank(n - 1, alpha) > n - 1   # one fewer: it does not


@pytest.mark.parametrize('scores,alpha,expected', [
    (list(range(1, 20)), 0.05, 19.0),   # n=19: k=ceil(20*0.95)=19 -> the maximum
    (list(range(1, 21)), 0.05, 20.0),   # n=20: k=ceil(19.95)=20
    (list(range(1, 41)), 0.05, 39.0),   # n=40: k=ceil(38.95)=39
    (list(range(1, 11)), 0.2, 9.0),     # n=10: k=ceil(8.8)=9
    (list(range(1, 100)), 0.1, 90.0),   # n=99: k=ceil(90)=90 (exact product, no rounding up)
])
def test_threshold_is_the_kth_smallest_score(scores, alpha, expected):
    """Threshold is the kth smallest score."""
    shuffled = np.random.default_rng(0).permutation(np.array(scores, dtype=float))
    assert conformal_threshold(shuffled, alpha) == expected


def test_too_few_episodes_raise_a_clear_error():
    """Too few episodes raise a clear error."""
    with pytest.raises(InsufficientCalibrationData, match=r'at least 19 nominal episodes.*got 18'):
        conformal_threshold(np.arange(18.0), 0.05)
    with pytest.raises(ValueError, match='alpha'):
        conformal_threshold(np.arange(30.0), 0.0)
    with pytest.raises(ValueError, match='NaN'):
        conformal_threshold(np.r_[np.arange(19.0), np.nan], 0.05)


def test_false_alarm_rate_of_a_new_episode_is_at_most_alpha():
    """False alarm rate of a new episode is at most alpha."""
    # Continuous exchangeable scores: P(new > threshold) = 1 - k/(n+1), here exactly 0.05.
    rng = np.random.default_rng(1)
    trials, n, alpha = 20000, 39, 0.05
    cal = rng.gamma(2.0, size=(trials, n))
    k = conformal_rank(n, alpha)
    thresholds = np.sort(cal, axis=1)[:, k - 1]
    assert thresholds[0] == conformal_threshold(cal[0], alpha)
    false_alarm = np.mean(rng.gamma(2.0, size=trials) > thresholds)
    assert false_alarm == pytest.approx(1 - k / (n + 1), abs=0.01)
    assert false_alarm <= alpha + 0.01


def test_calibrate_uses_the_maximum_of_each_episode():
    """Calibrate uses the maximum of each episode."""
    episodes = [[0.1, 0.5 + i, 0.2] for i in range(19)]
    # alpha 0.1 in all: each of the two channels at 0.05, which 19 episodes allow
    cal = calibrate(episodes, 0.1, 'push_flow_v1.pt', 'def-x', 2.0 - np.arange(19) / 10,
                    'nov-x', 'novelty.npz', date='2026-11-26T08:00:00+00:00')
    np.testing.assert_array_equal(episode_maxima(episodes), 0.5 + np.arange(19))
    assert cal.threshold == 18.5 and cal.n_episodes == 19 and cal.alpha == 0.1
    assert cal.channel_alpha == 0.05 and cal.novelty_threshold == 2.0
    assert cal.novelty_definition == 'nov-x' and cal.novelty_model_file == 'novelty.npz'
    assert cal.episode_statistic == EPISODE_STATISTIC
    with pytest.raises(ValueError, match='episode 1'):
        episode_maxima([[1.0], []])


def test_save_and_load_round_trip(tmp_path):
    """Save and load round trip."""
    cal = calibrate([[float(i)] for i in range(40)], 0.05, 'push_flow_v1.pt', 'stac-v1: test',
                    np.linspace(0.5, 1.5, 40), 'nov-v1: test', 'novelty.npz')
    path = save_calibration(cal, tmp_path / 'monitor_calibration.yaml')
    assert load_calibration(path) == cal
    text = path.read_text()
    assert text.startswith('#') and 'push_flow_v1.pt' in text
    assert isinstance(cal.date, str) and cal.date.endswith('+00:00')


def test_loader_rejects_missing_or_inconsistent_files(tmp_path):
    """Loader rejects missing or inconsistent files."""
    with pytest.raises(FileNotFoundError, match='calibration'):
        load_calibration(tmp_path / 'none.yaml')
    good = calibrate([[float(i)] for i in range(19)], 0.1, 'ckpt.pt', 'stac-v1: test',
                     np.ones(19), 'nov-v1: test', 'novelty.npz')
    data = {'monitor_calibration': dict(good.__dict__, n_episodes=10)}
    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InsufficientCalibrationData):
        load_calibration(bad)
    data['monitor_calibration'] = dict(good.__dict__, threshold='high')
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(TypeError, match='threshold'):
        load_calibration(bad)
    bad.write_text(yaml.safe_dump({'threshold': 1.0}))
    with pytest.raises(ValueError, match='monitor_calibration'):
        load_calibration(bad)


def test_calibration_dataclass_requires_every_field():
    """Calibration dataclass requires every field."""
    with pytest.raises(ValueError, match='missing'):
        Calibration.from_dict({'threshold': 1.0, 'alpha': 0.05})
