"""Figures of minimal-pair studies (matplotlib, PNG): forest plots of effects, paired-margin plots, and
dose-response curves. Each takes a result frame and a path; nothing here computes statistics."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def forest_plot(
    table: pd.DataFrame,
    path: str | Path,
    label: str = "trigger",
    mean: str = "mean_delta",
    low: str = "ci_low",
    high: str = "ci_high",
    n: str = "n",
    title: str = "",
    xlabel: str = "mean margin change (variant - original)",
    highlight: pd.DataFrame | None = None,
) -> Path:
    """One row per effect: the mean with its CI (a dot alone where the CI is undefined, n < 2), sorted by
    the mean; `highlight` rows (pooled effects, same columns) are drawn below in another colour."""
    plt = _pyplot()
    rows = table.sort_values(mean, ascending=False).reset_index(drop=True)
    extra = highlight.reset_index(drop=True) if highlight is not None else rows.iloc[0:0]
    total = len(rows) + len(extra)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * total + 1.2)))
    for k, frame, colour in ((0, rows, "tab:blue"), (len(rows), extra, "tab:red")):
        for i, r in frame.iterrows():
            y = total - 1 - (k + i)
            if not (np.isnan(r[low]) or np.isnan(r[high])):
                ax.plot([r[low], r[high]], [y, y], color=colour, lw=1.5)
            ax.plot([r[mean]], [y], "o", color=colour, ms=4)
    labels = [f"{r[label]} (n={r[n]})" for _, r in rows.iterrows()]
    labels += [f"{r[label]} (n={r[n]})" for _, r in extra.iterrows()]
    ax.set_yticks(range(total))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def paired_plot(
    frame: pd.DataFrame,
    path: str | Path,
    columns: list[tuple[str, str]],
    group: str = "type",
    threshold: float = 0.0,
    title: str = "",
    ylabel: str = "refusal margin",
) -> Path:
    """Per group (a panel each): one line per row through its margins in `columns` ([(column, tick
    label)]), the group mean in black, the refusal threshold dashed."""
    plt = _pyplot()
    groups = list(dict.fromkeys(frame[group]))
    cols = min(4, max(1, len(groups)))
    nrows = int(np.ceil(len(groups) / cols)) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False, sharey=True)
    xs = np.arange(len(columns))
    for ax, name in zip(axes.flat, groups):
        g = frame[frame[group] == name]
        values = g[[c for c, _ in columns]].to_numpy(dtype=float)
        for row in values:
            ax.plot(xs, row, color="tab:blue", alpha=0.35, lw=0.8, marker="o", ms=2)
        ax.plot(xs, np.nanmean(values, axis=0), color="black", lw=2, marker="o", ms=4)
        ax.axhline(threshold, color="tab:red", lw=0.8, ls="--")
        ax.set_xticks(xs)
        ax.set_xticklabels([t for _, t in columns], fontsize=8)
        ax.set_title(f"{name} (n={len(g)})", fontsize=9)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(textwrap.fill(title, 45 * cols), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def dose_plot(
    frame: pd.DataFrame, summary: pd.DataFrame, path: str | Path, threshold: float = 0.0, title: str = ""
) -> Path:
    """Margin against the number of trigger words: one thin line per carrier, the mean with its CI."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for _, g in frame.groupby("carrier"):
        m = g.groupby("dose")["margin"].mean()
        ax.plot(m.index, m.values, color="tab:blue", alpha=0.3, lw=0.8)
    ax.errorbar(
        summary["dose"],
        summary["mean_margin"],
        yerr=[summary["mean_margin"] - summary["ci_low"], summary["ci_high"] - summary["mean_margin"]],
        color="black",
        marker="o",
        capsize=3,
    )
    ax.axhline(threshold, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("trigger words among the listed words")
    ax.set_ylabel("refusal margin")
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    _pyplot().close(fig)
    return path
