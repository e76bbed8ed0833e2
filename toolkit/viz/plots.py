"""Figures of behaviour and margins (matplotlib, Agg backend; PNG, SVG or PDF by the path's suffix):
stacked label bars, reliability. Colours: toolkit.viz.palettes (refusal dark orange, partial refusal
light orange, compliance purple: colour-blind safe, no red/green pair)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lexprobe.toolkit.viz.names import display_name, type_name  # noqa: E402
from lexprobe.toolkit.viz.palettes import BEHAVIOUR, COMPLIANCE, MAIN, REFUSAL, save  # noqa: E402

COLOURS = {k: BEHAVIOUR[k] for k in ("full_compliance", "full_refusal", "partial_refusal")}


def stacked_bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    """XSTest-style figure: for each model a panel of horizontal stacked bars, one per prompt type,
    safe types first, then the unsafe contrasts."""
    models = list(dict.fromkeys(table["model"]))
    n_rows = table.groupby("model").size().max()
    fig, axes = plt.subplots(
        1, len(models), figsize=(6.5 * len(models), 0.32 * n_rows + 1.6), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models):
        t = table[table["model"] == model]
        t = pd.concat([t[t["label"] == "safe"], t[t["label"] != "safe"]])
        y = np.arange(len(t))[::-1]
        left = np.zeros(len(t))
        for label, colour in COLOURS.items():
            ax.barh(
                y,
                t[label],
                left=left,
                color=colour,
                label=label.replace("_", " "),
                height=0.8,
                edgecolor="white",
                linewidth=0.5,
            )
            left += t[label].to_numpy()
        ax.set_yticks(y, [f"{type_name(ty)} (n={n})" for ty, n in zip(t["type"], t["n"])], fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of responses")
        ax.set_title(display_name(model), fontsize=10)
    axes[0][0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11, y=1.0)
    fig.tight_layout()
    return save(fig, path, dpi=130, bbox_inches="tight")


def reliability_plot(
    margin: np.ndarray, refused: np.ndarray, threshold: float, slope: float, path: Path, title: str
):
    """Left: observed refusal rate in margin deciles against p_refuse = sigmoid(margin) and the
    logistic fit. Right: margin distributions of refused and answered prompts, with the threshold."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    edges = np.unique(np.quantile(margin, np.linspace(0, 1, 11)))
    bins = np.clip(np.digitize(margin, edges[1:-1]), 0, len(edges) - 2)
    centres = [margin[bins == b].mean() for b in range(len(edges) - 1) if (bins == b).any()]
    rates = [refused[bins == b].mean() for b in range(len(edges) - 1) if (bins == b).any()]
    counts = [(bins == b).sum() for b in range(len(edges) - 1) if (bins == b).any()]
    xs = np.linspace(margin.min(), margin.max(), 200)
    n, n_refused = len(margin), int(refused.astype(bool).sum())
    ax1.plot(xs, 1 / (1 + np.exp(-xs)), color="grey", ls="--", label="p_refuse = sigmoid(margin)")
    ax1.plot(xs, 1 / (1 + np.exp(-slope * (xs - threshold))), color="black", label="logistic fit")
    ax1.scatter(
        centres,
        rates,
        s=[12 + 2 * c for c in counts],
        color=MAIN,
        zorder=3,
        label=f"observed, deciles of {n} prompts (area: count)",
    )
    ax1.axvline(threshold, color="#555555", lw=0.8, ls=":", label=f"threshold {threshold:.2f}")
    ax1.set_xlabel("refusal margin")
    ax1.set_ylabel(f"share refused (n = {n})")
    ax1.set_ylim(-0.03, 1.03)
    below = dict(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    ax1.legend(**below)  # under the axes: the curves and points fill the panel
    ax1.set_title("reliability", fontsize=10)
    bins2 = np.linspace(margin.min(), margin.max(), 40)
    ax2.hist(
        margin[~refused.astype(bool)],
        bins=bins2,
        alpha=0.6,
        color=COMPLIANCE,
        label=f"answered (n = {n - n_refused})",
    )
    ax2.hist(
        margin[refused.astype(bool)],
        bins=bins2,
        alpha=0.6,
        color=REFUSAL,
        label=f"refused, full or partial (n = {n_refused})",
    )
    ax2.axvline(threshold, color="black", lw=1, label=f"threshold {threshold:.2f}")
    ax2.set_xlabel("refusal margin")
    ax2.set_ylabel("prompts per bin")
    ax2.legend(**below)
    ax2.set_title("margin by behaviour", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path, dpi=130)
