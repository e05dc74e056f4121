"""Consistency statistic: MMD^2 on overlapping steps, dispersion, overlap bookkeeping."""

from genpolicy_ros.monitor.consistency import (ConsistencyConfig, ConsistencyScorer, dispersion,
                                               match_overlap, median_heuristic_bandwidth,
                                               mmd2_rbf, OverlapStatus,
                                               pairwise_sq_dists)
from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

H = 16
TIMES = 0.1 * np.arange(H)  # chunk of 16 targets at 0.1 s spacing


def _config(**overrides):
    params = dict(mmd_weight=1.0, dispersion_weight=1.0, dispersion_reference_m=0.02,
                  unbiased=True, bandwidth_mode='median', fixed_bandwidth_m=0.05,
                  min_bandwidth_m=0.001, time_match_tolerance_s=0.04, min_overlap_steps=2)
    params.update(overrides)
    return ConsistencyConfig.from_dict(params)


def _trajectory(stamp, speed=np.array([0.05, 0.02, 0.0])):
    """Return a nominal mean path (H, 3) [m] along a fixed straight line in absolute time."""
    t = stamp + TIMES
    return np.array([0.5, 0.0, 0.1]) + t[:, None] * speed[None, :]


def _chunk(rng, stamp, n, spread_m=0.005, offset=0.0):
    return _trajectory(stamp)[None] + offset + spread_m * rng.normal(size=(n, H, 3))


def _naive_mmd2(x, y, sigma, unbiased):
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))  # noqa: E731
    n, m = len(x), len(y)
    if unbiased:
        kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    else:
        kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n)) / n ** 2
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize('unbiased', [True, False])
def test_vectorised_mmd_matches_the_textbook_double_sum(unbiased):
    """Vectorised mmd matches the textbook double sum."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.3
    assert mmd2_rbf(x, y, 1.3, unbiased) == pytest.approx(_naive_mmd2(x, y, 1.3, unbiased),
                                                          rel=1e-10, abs=1e-12)


def test_median_heuristic_is_the_median_pooled_distance_with_a_floor():
    """Median heuristic is the median pooled distance with a floor."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    expected = np.median(pdist(np.vstack([x, y])))
    assert median_heuristic_bandwidth(x, y, 1e-6) == pytest.approx(expected, rel=1e-9)
    same = np.zeros((4, 3))
    assert median_heuristic_bandwidth(same, same, 0.002) == 0.002


def test_identical_distributions_give_mmd_near_zero_and_shifted_ones_large():
    """Identical distributions give mmd near zero and shifted ones large."""
    rng = np.random.default_rng(3)
    same, shifted = [], []
    for _ in range(50):
        x, y = 0.01 * rng.normal(size=(2, 16, 24))
        same.append(mmd2_rbf(x, y, median_heuristic_bandwidth(x, y, 1e-3)))
        y_shift = y + 0.01  # one standard deviation in every coordinate
        shifted.append(mmd2_rbf(x, y_shift, median_heuristic_bandwidth(x, y_shift, 1e-3)))
    same, shifted = np.array(same), np.array(shifted)
    assert abs(same.mean()) < 0.01          # unbiased: zero in expectation
    assert np.max(np.abs(same)) < 0.08
    assert shifted.min() > 0.1
    assert shifted.mean() > 10 * np.max(np.abs(same))


def test_biased_estimator_is_nonnegative_and_symmetric():
    """Biased estimator is nonnegative and symmetric."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    assert mmd2_rbf(x, y, 1.0, unbiased=False) >= 0.0
    assert mmd2_rbf(x, y, 1.0) == pytest.approx(mmd2_rbf(y, x, 1.0))


def test_dispersion_grows_with_spread_and_matches_the_gaussian_value():
    """Dispersion grows with spread and matches the gaussian value."""
    rng = np.random.default_rng(5)
    base = _trajectory(0.0)[None]
    values = [dispersion(base + s * rng.normal(size=(400, H, 3))) for s in (0.001, 0.01, 0.05)]
    assert values[0] < values[1] < values[2]
    # RMS distance from the mean of an isotropic 3-D Gaussian with std s is sqrt(3) s.
    assert values[1] == pytest.approx(np.sqrt(3) * 0.01, rel=0.05)
    assert dispersion(np.repeat(base, 4, axis=0)) == 0.0


def test_overlap_is_matched_in_absolute_time_even_with_stamp_jitter():
    """Overlap is matched in absolute time even with stamp jitter."""
    prev = 10.0 + TIMES
    i_prev, i_new = match_overlap(prev, 10.813 + TIMES, 0.04)
    np.testing.assert_array_equal(i_prev, np.arange(8, 16))
    np.testing.assert_array_equal(i_new, np.arange(0, 8))
    i_prev, i_new = match_overlap(prev, 10.85 + TIMES, 0.04)  # half a step off: no match
    assert i_prev.size == 0


@settings(max_examples=50, deadline=None)
@given(offset=st.floats(-2.0, 2.0), spacing=st.floats(0.05, 0.2))
def test_overlap_pairs_are_one_to_one_and_within_tolerance(offset, spacing):
    """Overlap pairs are one to one and within tolerance."""
    prev = spacing * np.arange(H)
    new = offset + spacing * np.arange(H)
    i_prev, i_new = match_overlap(prev, new, 0.2 * spacing)
    assert np.all(np.abs(prev[i_prev] - new[i_new]) <= 0.2 * spacing + 1e-12)
    assert np.all(np.diff(i_prev) > 0) and np.all(np.diff(i_new) > 0)


def test_first_chunk_and_non_overlapping_chunk_use_dispersion_only():
    """First chunk and non overlapping chunk use dispersion only."""
    rng = np.random.default_rng(6)
    scorer = ConsistencyScorer(_config())
    first = scorer.score(0.0, TIMES, _chunk(rng, 0.0, 16))
    assert first.status is OverlapStatus.FIRST_CHUNK and first.mmd2 is None
    assert first.score == pytest.approx(first.dispersion_m / 0.02)
    late = scorer.score(5.0, TIMES, _chunk(rng, 5.0, 16))  # 5 s later: nothing shared
    assert late.status is OverlapStatus.NO_OVERLAP and late.overlap_steps == 0
    assert late.score == pytest.approx(late.dispersion_m / 0.02)
    assert late.bandwidth_m is None


def test_consistent_continuation_scores_low_and_a_changed_mind_scores_high():
    """Consistent continuation scores low and a changed mind scores high."""
    rng = np.random.default_rng(7)
    cfg = _config(dispersion_weight=0.0)  # isolate the temporal term
    scorer = ConsistencyScorer(cfg)
    scorer.score(0.0, TIMES, _chunk(rng, 0.0, 32))
    ok = scorer.score(0.8, TIMES, _chunk(rng, 0.8, 32))
    assert ok.status is OverlapStatus.OVERLAP and ok.overlap_steps == 8
    assert ok.score < 0.05
    bad = scorer.score(1.6, TIMES, _chunk(rng, 1.6, 32, offset=np.array([0.0, 0.03, 0.0])))
    assert bad.score > 0.5 and bad.mmd2 > 0.5
    assert bad.bandwidth_m > 0.001


def test_score_combines_terms_with_their_weights():
    """Score combines terms with their weights."""
    rng = np.random.default_rng(8)
    scorer = ConsistencyScorer(_config(mmd_weight=2.0, dispersion_weight=0.5))
    scorer.score(0.0, TIMES, _chunk(rng, 0.0, 16))
    r = scorer.score(0.8, TIMES, _chunk(rng, 0.8, 16, offset=0.02))
    assert r.score == pytest.approx(2.0 * max(r.mmd2, 0.0) + 0.5 * r.dispersion_m / 0.02)


def test_fixed_bandwidth_mode_uses_the_configured_sigma():
    """Fixed bandwidth mode uses the configured sigma."""
    rng = np.random.default_rng(9)
    scorer = ConsistencyScorer(_config(bandwidth_mode='fixed', fixed_bandwidth_m=0.07))
    scorer.score(0.0, TIMES, _chunk(rng, 0.0, 8))
    assert scorer.score(0.8, TIMES, _chunk(rng, 0.8, 8)).bandwidth_m == 0.07


def test_two_dimensional_actions_are_supported():
    """Two dimensional actions are supported."""
    rng = np.random.default_rng(10)
    scorer = ConsistencyScorer(_config())
    scorer.score(0.0, TIMES, _chunk(rng, 0.0, 8)[..., :2])
    r = scorer.score(0.8, TIMES, _chunk(rng, 0.8, 8)[..., :2])
    assert r.status is OverlapStatus.OVERLAP and np.isfinite(r.score)


@pytest.mark.parametrize('times,samples,match', [
    (TIMES, np.zeros((1, H, 3)), 'at least 2 samples'),
    (TIMES, np.zeros((4, H)), 'shape'),
    (TIMES[:-1], np.zeros((4, H, 3)), 'times_from_start'),
    (TIMES[::-1], np.zeros((4, H, 3)), 'increasing'),
    (TIMES, np.full((4, H, 3), np.nan), 'NaN'),
])
def test_malformed_chunks_are_rejected_and_not_remembered(times, samples, match):
    """Malformed chunks are rejected and not remembered."""
    scorer = ConsistencyScorer(_config())
    with pytest.raises(ValueError, match=match):
        scorer.score(0.0, times, samples)
    first = scorer.score(0.0, TIMES, np.random.default_rng(0).normal(size=(4, H, 3)))
    assert first.status is OverlapStatus.FIRST_CHUNK


def test_config_rejects_bad_values():
    """Config rejects bad values."""
    with pytest.raises(ValueError, match='bandwidth_mode'):
        _config(bandwidth_mode='silverman')
    with pytest.raises(ValueError, match='weight'):
        _config(mmd_weight=0.0, dispersion_weight=0.0)
    with pytest.raises(TypeError):
        _config(min_overlap_steps=2.0)


def test_distance_helper_matches_scipy():
    """Distance helper matches scipy."""
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(5, 6)), rng.normal(size=(3, 6))
    np.testing.assert_allclose(pairwise_sq_dists(x, y), cdist(x, y) ** 2, atol=1e-12)
