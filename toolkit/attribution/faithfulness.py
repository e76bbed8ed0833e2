"""Faithfulness of a word attribution, measured on the margin, each next to a random ranking.

Words are ranked by score (most toward refusal first); removing a word means the perturbation of
`PromptTarget.masked_text` (delete it, or put the replacement text in its place). With f the margin,
x the prompt and k over the ERASER-style bins (10%, 20%, 50% of the words, at least one word):

    comprehensiveness = mean_k [f(x) - f(x without its top k words)]   higher = more faithful
    sufficiency       = mean_k [f(x) - f(only its top k words)]        lower  = more faithful
    deletion AUC      = area under f(x without the top j words) over j/n in [0, 1]; lower = more faithful
    top-1 drop        = f(x) - f(x without the top word)

The random ranking's top-1 drop is exact (the mean leave-one-out drop over all words); its other
figures average `n_random` seeded random orders. A method "is no better than random" on a prompt type
when its mean top-1 drop does not exceed the random one (or, with 5+ prompts, a one-sided Wilcoxon
signed-rank test of the paired difference gives p > 0.05).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from lexprobe.toolkit.attribution.core import PromptTarget

FRACTIONS = (0.1, 0.2, 0.5)
METRICS = ("comprehensiveness", "sufficiency", "deletion_auc", "top1_drop")


def bins(n_words: int) -> list[int]:
    """The k's (numbers of top words) of the comprehensiveness / sufficiency average."""
    return sorted({min(n_words, max(1, math.ceil(f * n_words))) for f in FRACTIONS})


def rank(scores: np.ndarray) -> np.ndarray:
    """Word indices from most to least toward refusal (ties: earlier word first)."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=float)))


def _curve_masks(order: np.ndarray, n: int) -> np.ndarray:
    """[n + 1, n] keep-masks: row j drops the first j words of `order`."""
    keep = np.ones((n + 1, n), dtype=bool)
    for j in range(1, n + 1):
        keep[j:, order[j - 1]] = False
    return keep


def _only_masks(order: np.ndarray, n: int) -> np.ndarray:
    """[len(bins), n] keep-masks: row k keeps only the top k words of `order`, for each bin k."""
    ks = bins(n)
    only = np.zeros((len(ks), n), dtype=bool)
    for row, k in enumerate(ks):
        only[row, order[:k]] = True
    return only


def _measure(target: PromptTarget, order: np.ndarray) -> dict:
    n = len(target.words)
    f_x = target.margin
    curve = target.margins_of_masks(_curve_masks(order, n))  # [n + 1]
    kept = target.margins_of_masks(_only_masks(order, n))
    ks = bins(n)
    return {
        "comprehensiveness": float(np.mean([f_x - curve[k] for k in ks])),
        "sufficiency": float(np.mean(f_x - kept)),
        "deletion_auc": float(np.trapezoid(curve, dx=1.0 / n)),
        "top1_drop": float(f_x - curve[1]),
        "curve": curve,
    }


def _random_orders(n: int, n_random: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(max(n_random, 1))]


def texts_for(target: PromptTarget, orders: list[np.ndarray], leave_one_out: bool = False) -> list[str]:
    """Every text the figures of these rankings (and the leave-one-out texts) are computed from, so
    that a run can score those of many prompts together first (`core.score_texts`)."""
    n = len(target.words)
    masks = [m for order in orders for m in (_curve_masks(order, n), _only_masks(order, n))]
    if leave_one_out:
        masks.append(~np.eye(n, dtype=bool))
    return [target.text] + [target.masked_text(row) for row in np.concatenate(masks)]


def reference_texts(target: PromptTarget, n_random: int = 3, seed: int = 0) -> list[str]:
    """The texts `random_reference` scores."""
    return texts_for(target, _random_orders(len(target.words), n_random, seed), leave_one_out=True)


def ranking_texts(target: PromptTarget, scores: np.ndarray) -> list[str]:
    """The texts `evaluate` scores for an attribution."""
    return texts_for(target, [rank(scores)])


def random_reference(target: PromptTarget, n_random: int = 3, seed: int = 0) -> dict:
    """The random ranking's figures for one prompt (top-1 drop exact, the rest over `n_random` orders)."""
    n = len(target.words)
    runs = [_measure(target, order) for order in _random_orders(n, n_random, seed)]
    loo = target.margins_of_masks(~np.eye(n, dtype=bool))  # every leave-one-out text
    out = {m: float(np.mean([r[m] for r in runs])) for m in METRICS if m != "top1_drop"}
    out["top1_drop"] = float(target.margin - loo.mean())
    out["curve"] = np.mean([r["curve"] for r in runs], axis=0)
    return out


def evaluate(target: PromptTarget, scores: np.ndarray, reference: dict) -> tuple[dict, np.ndarray]:
    """One attribution's figures with the random ones beside them (`<metric>_random`), and its deletion
    curve [n + 1]."""
    mine = _measure(target, rank(scores))
    row = {m: mine[m] for m in METRICS}
    row.update({f"{m}_random": reference[m] for m in METRICS})
    return row, mine["curve"]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per prompt type and method: mean figures vs random, the share of prompts whose top word drops the
    margin more than a random word does, and the `no_better_than_random` flag."""
    rows = []
    for (ptype, method), g in frame.groupby(["type", "method"], sort=False):
        diff = (g["top1_drop"] - g["top1_drop_random"]).to_numpy()
        p = None
        if len(g) >= 5 and np.any(diff != 0):
            p = float(stats.wilcoxon(diff, alternative="greater").pvalue)
        row = {"type": ptype, "method": method, "n": len(g)}
        for m in METRICS:
            row[m] = g[m].mean()
            row[f"{m}_random"] = g[f"{m}_random"].mean()
        row["top1_beats_random_share"] = float((diff > 0).mean())
        row["top1_wilcoxon_p"] = p
        row["no_better_than_random"] = bool(diff.mean() <= 0 or (p is not None and p > 0.05))
        rows.append(row)
    return pd.DataFrame(rows)
