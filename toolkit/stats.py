"""Statistics lexprobe reports: thin wrappers over scipy.stats."""

from __future__ import annotations

import numpy as np
from scipy import stats


def auroc(labels, scores) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half.

    Computed as the Mann-Whitney U statistic of the positives over n_pos * n_neg.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


def bootstrap_ci(statistic, *samples, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0):
    """Percentile bootstrap CI of `statistic(*samples)`, resampling the samples' rows together."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        try:
            values.append(statistic(*(a[idx] for a in arrays)))
        except ValueError:  # a resample without both classes, say
            continue
    lo, hi = np.percentile(values, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------- paired statistics
def paired_differences(x, y=None) -> np.ndarray:
    """x - y (or x itself), as float, with NaNs dropped pairwise."""
    d = np.asarray(x, dtype=float) if y is None else np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    return d[~np.isnan(d)]


def wilcoxon(x, y=None) -> tuple[float, float]:
    """Paired Wilcoxon signed-rank test of x - y (or of x) against 0: (statistic, two-sided p).

    scipy.stats.wilcoxon with its defaults (zero differences dropped, exact p for small samples);
    (nan, nan) when no difference is non-zero.
    """
    d = paired_differences(x, y)
    if not np.any(d != 0):
        return float("nan"), float("nan")
    res = stats.wilcoxon(d)
    return float(res.statistic), float(res.pvalue)


def mean_ci(x, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap); (nan, nan) for fewer than 2 values."""
    d = paired_differences(x)
    if len(d) < 2:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = stats.bootstrap(
        (d,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def cohens_dz(x, y=None) -> float:
    """Standardised mean difference of paired samples: mean(d) / sd(d) (ddof 1); nan if undefined."""
    d = paired_differences(x, y)
    if len(d) < 2 or np.std(d, ddof=1) == 0:
        return float("nan")
    return float(np.mean(d) / np.std(d, ddof=1))


def rank_biserial(x, y=None) -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-), the effect size that goes with the
    signed-rank test: ranks of |d| over the non-zero differences. In [-1, 1]; nan with no non-zero d."""
    d = paired_differences(x, y)
    d = d[d != 0]
    if not len(d):
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def bh_qvalues(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (scipy.stats.false_discovery_control); NaNs stay NaN and
    do not count as tests."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p (scipy.stats.spearmanr), NaN pairs dropped;
    (nan, nan) for fewer than 3 pairs or a constant variable."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan"), float("nan")
    res = stats.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def paired_summary(x, y=None, seed: int = 0) -> dict:
    """n, mean difference, its 95% bootstrap CI, Wilcoxon p and the two effect sizes, in one dict."""
    d = paired_differences(x, y)
    lo, hi = mean_ci(d, seed=seed)
    return {
        "n": len(d),
        "mean": float(np.mean(d)) if len(d) else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "p": wilcoxon(d)[1],
        "dz": cohens_dz(d),
        "rank_biserial": rank_biserial(d),
    }
