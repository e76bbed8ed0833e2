"""Figures of the model's internals: the refusal direction's candidates by layer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.viz.palettes import ACCENT, MAIN, save


def direction_figure(candidates: pd.DataFrame, details: dict, path: str | Path, title: str) -> Path:
    """Three panels over the layers, each layer's best-bypass candidate on the screening prompts: the
    refused harmful prompts' margin with it ablated, the answered harmless prompts' margin with it added,
    and the KL ablation costs on those; baselines dashed, the selected candidate's screening figures
    starred, the excluded last layers shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = candidates.dropna(subset=["kl_screen"])  # each layer's best, measured whole on the screen
    best = frame.sort_values("layer")
    chosen = candidates[candidates["selected"].astype(bool)]
    base, sel = details["baseline"], details["selection"]
    n_layers = int(details["n_layers"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    panels = [
        ("bypass_screen", "refused harmful prompts' margin, ablated", base["screen_harmful_margin"], "as is"),
        (
            "induce_screen",
            "answered harmless prompts' margin, added",
            base["screen_harmless_margin"],
            "as is",
        ),
        ("kl_screen", "KL on answered harmless prompts, ablated", sel["kl_bound"], "bound"),
    ]
    for ax, (column, label, line, line_label) in zip(axes, panels):
        ax.plot(best["layer"], best[column], marker="o", ms=3, color=MAIN, label="best position of the layer")
        ax.axhline(line, color="grey", ls="--", lw=1, label=line_label)
        if column != "kl_screen":
            ax.axhline(0, color="black", lw=0.5)
        ax.axvspan(n_layers - sel["last_layers_excluded"] - 0.5, n_layers - 0.5, color="grey", alpha=0.12)
        if len(chosen):
            ax.plot(chosen["layer"], chosen[column], marker="*", ms=12, color=ACCENT, ls="", label="selected")
        ax.set_xlabel("layer (block input)")
        ax.set_title(label, fontsize=9)
        if (
            column == "kl_screen"
            and np.nanmax(best[column].to_numpy(float), initial=0) > 10 * sel["kl_bound"]
        ):
            ax.set_yscale("symlog", linthresh=sel["kl_bound"])
    axes[0].set_ylabel("refusal margin")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=130)
