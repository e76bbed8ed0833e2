"""Figures of the model's internals: the refusal direction's candidates by layer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.viz.palettes import ACCENT, MAIN, save


def direction_figure(candidates: pd.DataFrame, details: dict, path: str | Path, title: str) -> Path:
    """Three panels over the layers, each layer's best-bypass candidate: the harmful val margin with it
    ablated, the harmless val margin with it added, and the KL ablation costs on harmless prompts; the
    baselines dashed, the selected layer marked, the excluded last layers shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = candidates.dropna(subset=["bypass"])
    best = frame.loc[frame.groupby("layer")["bypass"].idxmin()].sort_values("layer")
    chosen = candidates[candidates["selected"].astype(bool)]
    base, sel = details["baseline"], details["selection"]
    n_layers = int(details["n_layers"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    panels = [
        ("bypass", "harmful val margin, ablated", base["harmful_margin"], "as is"),
        ("induce", "harmless val margin, added at its layer", base["harmless_margin"], "as is"),
        ("kl", "KL on harmless val, ablated", sel["kl_bound"], "bound"),
    ]
    for ax, (column, label, line, line_label) in zip(axes, panels):
        ax.plot(best["layer"], best[column], marker="o", ms=3, color=MAIN, label="best position of the layer")
        ax.axhline(line, color="grey", ls="--", lw=1, label=line_label)
        if column != "kl":
            ax.axhline(0, color="black", lw=0.5)
        ax.axvspan(n_layers - sel["last_layers_excluded"] - 0.5, n_layers - 0.5, color="grey", alpha=0.12)
        if len(chosen):
            ax.plot(chosen["layer"], chosen[column], marker="*", ms=12, color=ACCENT, ls="", label="selected")
        ax.set_xlabel("layer (block input)")
        ax.set_title(label, fontsize=9)
        if column == "kl" and np.nanmax(best["kl"].to_numpy(float), initial=0) > 10 * sel["kl_bound"]:
            ax.set_yscale("symlog", linthresh=sel["kl_bound"])
    axes[0].set_ylabel("refusal margin")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=130)
