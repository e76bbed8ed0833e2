"""Figures of minimal-pair studies (matplotlib; PNG, SVG or PDF by the path's suffix): forest plots of effects, paired-margin plots, and
dose-response curves. Each takes a result frame and a path; nothing here computes statistics."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.viz.names import type_name
from lexprobe.toolkit.viz.palettes import ACCENT, MAIN, save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def forest_rows(
    table: pd.DataFrame,
    highlight: pd.DataFrame | None = None,
    mean: str = "mean_delta",
    n: str = "n",
    min_n: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(rows drawn sorted by `mean`, highlight rows drawn, number of rows of `table` left out) of a
    forest plot: only effects with n >= `min_n` are drawn (the rest stay in the caller's tables)."""

    def kept(frame):
        counts = (
            pd.to_numeric(frame[n], errors="coerce") if n in frame.columns else pd.Series(np.nan, frame.index)
        )
        return frame[counts >= min_n]

    rows = kept(table).sort_values(mean, ascending=False).reset_index(drop=True)
    extra = kept(highlight).reset_index(drop=True) if highlight is not None else rows.iloc[0:0]
    return rows, extra, len(table) - len(rows)


def forest_figure(
    table: pd.DataFrame,
    label: str = "trigger",
    mean: str = "mean_delta",
    low: str = "ci_low",
    high: str = "ci_high",
    n: str = "n",
    title: str = "",
    xlabel: str = "mean margin change (variant - original)",
    highlight: pd.DataFrame | None = None,
    min_n: int = 3,
    source: str = "the table",
):
    """The matplotlib Figure of `forest_plot` (not saved): its y tick labels are the rows drawn."""
    plt = _pyplot()
    rows, extra, left_out = forest_rows(table, highlight, mean, n, min_n)
    total = len(rows) + len(extra)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * total + 1.4)))
    for k, frame, colour in ((0, rows, MAIN), (len(rows), extra, ACCENT)):
        for i, r in frame.iterrows():
            y = total - 1 - (k + i)
            if not (pd.isna(r[low]) or pd.isna(r[high])):
                ax.plot([r[low], r[high]], [y, y], color=colour, lw=1.5)
            ax.plot([r[mean]], [y], "o" if k == 0 else "D", color=colour, ms=4)
    labels = [f"{r[label]} (n={r[n]})" for _, r in rows.iterrows()]
    labels += [f"{r[label]} (n={r[n]}, pooled)" for _, r in extra.iterrows()]
    ax.set_yticks(range(total))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    if total == 0:
        ax.set_yticks([])
        ax.set_xticks([])
        ax.text(
            0.5,
            0.5,
            f"no {label} with n >= {min_n} (all {label}s are in {source})",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="#444",
        )
    else:
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
    note = f"showing {len(rows)} of {len(table)} {label}s (n >= {min_n})"
    if left_out:
        note += f"; {left_out} with n < {min_n} left out, all are in {source}"
    if len(extra):
        note += "; pooled effects in vermillion (diamonds)"
    ax.set_title("\n".join(textwrap.fill(t, 60) for t in (title, note) if t), fontsize=9)
    fig.tight_layout()
    return fig


def forest_plot(table: pd.DataFrame, path: str | Path, **options) -> Path:
    """One row per effect with n >= `min_n`: the mean with its CI (a dot alone where the CI is
    undefined), sorted by the mean; `highlight` rows (pooled effects, same columns) are drawn below in
    another colour. The title says how many were left out (they stay in `source`, the table's name);
    with none left, a note says so. `options` are `forest_figure`'s. Writes the format `path`'s
    suffix names (png, svg, pdf)."""
    return _save(forest_figure(table, **options), path)


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
        for k, row in enumerate(values):
            one = {"label": "one prompt"} if k == 0 else {}
            ax.plot(xs, row, color=MAIN, alpha=0.35, lw=0.8, marker="o", ms=2, **one)
        with warnings.catch_warnings():  # a column with no value (no content word swapped) has no mean
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0)
        ax.plot(xs, mean, color="black", lw=2, marker="o", ms=4, label="mean")
        ax.axhline(threshold, color=ACCENT, lw=0.8, ls="--", label="refusal threshold")
        ax.set_xticks(xs)
        ax.set_xticklabels([t for _, t in columns], fontsize=8)
        ax.set_title(f"{type_name(name)} (n={len(g)})", fontsize=9)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(textwrap.fill(title, 45 * cols), fontsize=9)
    fig.tight_layout()
    if groups:  # below the panels, where it covers no line
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.45 / fig.get_figheight())
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    return _save(fig, path)


def dose_plot(
    frame: pd.DataFrame, summary: pd.DataFrame, path: str | Path, threshold: float = 0.0, title: str = ""
) -> Path:
    """Margin against the number of trigger words: one thin line per carrier, the mean with its CI."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    first = True
    for _, g in frame.groupby("carrier"):
        m = g.groupby("dose")["margin"].mean()
        ax.plot(m.index, m.values, color=MAIN, alpha=0.3, lw=0.8, label="one carrier" if first else None)
        first = False
    ax.errorbar(
        summary["dose"],
        summary["mean_margin"],
        yerr=[summary["mean_margin"] - summary["ci_low"], summary["ci_high"] - summary["mean_margin"]],
        color="black",
        marker="o",
        capsize=3,
        label="mean, 95% CI",
    )
    ax.axhline(threshold, color=ACCENT, lw=0.8, ls="--", label="refusal threshold")
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("trigger words among the listed words")
    ax.set_ylabel("refusal margin")
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    return save(fig, path, dpi=130)
