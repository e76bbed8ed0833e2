"""toolkit.stats against scipy on known inputs, and Benjamini-Hochberg against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from lexprobe.toolkit import stats

X = np.array([1.2, -0.4, 2.5, 0.9, 1.7, -1.1, 0.3, 2.2, 1.4, 0.8])
Y = np.array([0.2, 0.1, 1.0, 1.1, 0.4, -0.5, 0.0, 1.0, 0.9, 0.7])


def test_wilcoxon_matches_scipy():
    stat, p = stats.wilcoxon(X, Y)
    ref = sps.wilcoxon(X - Y)
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert stats.wilcoxon(X)[1] == pytest.approx(sps.wilcoxon(X).pvalue)
    assert np.isnan(stats.wilcoxon([0.0, 0.0])[1])


def test_mean_ci_matches_scipy_bootstrap():
    lo, hi = stats.mean_ci(X, seed=3)
    ref = sps.bootstrap(
        (X,), np.mean, n_resamples=2000, method="percentile", random_state=np.random.default_rng(3)
    )
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert lo < X.mean() < hi
    assert all(np.isnan(stats.mean_ci([1.0])))
    assert stats.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_effect_sizes_by_hand():
    d = np.array([1.0, -2.0, 3.0, 4.0])
    # ranks of |d|: 1, 2, 3, 4; R+ = 1 + 3 + 4 = 8, R- = 2 -> (8 - 2) / 10
    assert stats.rank_biserial(d) == pytest.approx(0.6)
    assert stats.cohens_dz(d) == pytest.approx(d.mean() / d.std(ddof=1))
    assert stats.cohens_dz(X, Y) == pytest.approx((X - Y).mean() / (X - Y).std(ddof=1))
    assert np.isnan(stats.cohens_dz([1.0]))


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 -> p * m / rank = 0.04, 0.06, 0.0533, 0.2; running min from the top
    expected = [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2]
    assert stats.bh_qvalues(p) == pytest.approx(expected)
    q = stats.bh_qvalues([0.01, np.nan, 0.04])
    assert np.isnan(q[1]) and q[[0, 2]] == pytest.approx([0.02, 0.04])


def test_spearman_matches_scipy():
    rho, p = stats.spearman(X, Y)
    ref = sps.spearmanr(X, Y)
    assert rho == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert np.isnan(stats.spearman([1, 2], [2, 1])[0])
    assert np.isnan(stats.spearman([1, 1, 1], [1, 2, 3])[0])
    rho_nan, _ = stats.spearman([1, 2, np.nan, 4, 5], [2, 1, 9, 4, 3])
    assert rho_nan == pytest.approx(sps.spearmanr([1, 2, 4, 5], [2, 1, 4, 3]).statistic)


def test_paired_summary_collects_the_pieces():
    s = stats.paired_summary(X, Y)
    assert s["n"] == 10 and s["mean"] == pytest.approx((X - Y).mean())
    assert s["p"] == pytest.approx(sps.wilcoxon(X - Y).pvalue)
    assert s["ci_low"] < s["mean"] < s["ci_high"]
