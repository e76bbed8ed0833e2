"""Figures of the harmfulness probe: its AUROC and its cosine with the refusal direction by layer, and
where each prompt falls between what the model represents and what it does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.viz.palettes import ACCENT, MAIN, save


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def probe_figure(sites: pd.DataFrame, path: str | Path, title: str, score: str = "auroc_val_hard") -> Path:
    """Two panels over the layers: each position's mean-difference probe (fitted at every site) by the
    AUROC column `score` (the one the probe is selected by: on contrast groups held out of the fit, or
    on the val split's hard prompts), with the logistic probe's fitted sites as crosses and the selected
    site starred; and each position's cosine with the refusal direction."""
    plt = _plt()
    chosen = sites[sites["selected"].astype(bool)]
    rows = sites[sites["method"] == "mean_difference"]
    fitted = sites[(sites["method"] == "logistic") & sites[score].notna()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, rows["position"].nunique()))
    has_cosine = "cosine_refusal_direction" in sites and sites["cosine_refusal_direction"].notna().any()
    for colour, (position, by) in zip(colours, rows.groupby("position")):
        by = by.sort_values("layer")
        label = "instruction's last token" if position == rows["position"].min() else f"template {position}"
        axes[0].plot(by["layer"], by[score], color=colour, lw=1, marker="o", ms=2, label=label)
        if has_cosine:
            axes[1].plot(by["layer"], by["cosine_refusal_direction"], color=colour, lw=1, marker="o", ms=2)
    if len(fitted):
        axes[0].plot(fitted["layer"], fitted[score], "x", color=MAIN, ms=5, label="logistic (fitted sites)")
        if has_cosine:
            axes[1].plot(fitted["layer"], fitted["cosine_refusal_direction"], "x", color=MAIN, ms=5)
    if len(chosen):
        label = f"selected ({chosen['method'].iloc[0]})"
        axes[0].plot(chosen["layer"], chosen[score], marker="*", ms=13, color=ACCENT, ls="", label=label)
        if has_cosine:
            axes[1].plot(
                chosen["layer"], chosen["cosine_refusal_direction"], marker="*", ms=13, color=ACCENT, ls=""
            )
    if not has_cosine:
        axes[1].text(
            0.5,
            0.5,
            "no refusal direction to compare with",
            ha="center",
            va="center",
            transform=axes[1].transAxes,
            color="#666",
            fontsize=9,
        )
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8, label="chance (0.5)")
    axes[0].set_ylabel(
        "AUROC on a contrast group held out"
        if score == "auroc_heldout_kind"
        else "AUROC, harmful vs hard harmless (val)"
    )
    axes[0].set_title("how well each site reads harm (mean difference; crosses: logistic)", fontsize=9)
    axes[1].axhline(0, color="black", lw=0.5)
    axes[1].set_ylabel("cosine with the refusal direction")
    axes[1].set_title("how far each probe is from the refusal direction", fontsize=9)
    for ax in axes:
        ax.set_xlabel("layer (block input)")
    axes[0].legend(fontsize=6.5, loc="upper left")
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=130)


CELLS = {  # (refused, represented harmful) -> name
    (True, True): "misread",
    (True, False): "lexically over-refused",
    (False, True): "answered, represented harmful",
    (False, False): "answered, represented harmless",
}


def cell_of(refused: bool, harmful: bool) -> str:
    return CELLS[(bool(refused), bool(harmful))]


def cells_figure(frame: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Harmfulness logit against refusal margin, a point per prompt, safe and unsafe apart; the four
    quadrants named (refused above 0 on the x axis, represented harmful above 0 on the y axis)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    for label, colour, marker in (("safe", MAIN, "o"), ("unsafe", ACCENT, "^")):
        rows = frame[frame["label"] == label]
        if len(rows):
            ax.scatter(
                rows["margin"],
                rows["harmfulness"],
                s=14,
                alpha=0.65,
                color=colour,
                marker=marker,
                label=f"{label} ({len(rows)})",
                edgecolors="none",
            )
    ax.axvline(0, color="black", lw=0.6)
    ax.axhline(0, color="black", lw=0.6)
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    for (refused, harmful), name in CELLS.items():
        ax.text(
            x1 if refused else x0,
            y1 if harmful else y0,
            name,
            fontsize=7.5,
            color="#555",
            ha="right" if refused else "left",
            va="top" if harmful else "bottom",
        )
    ax.set_xlabel("refusal margin (> 0: refused)")
    ax.set_ylabel("harmfulness logit (> 0: represented harmful)")
    ax.legend(fontsize=7, loc="center left")
    ax.set_title(textwrap.fill(title, 72), fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=130)
