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
