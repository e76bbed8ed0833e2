"""Figures of the model's internals: the refusal direction's candidates by layer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.viz.palettes import ACCENT, DIVERGING, MAIN, save


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
        ax.axvspan(
            n_layers - sel["last_layers_excluded"] - 0.5,
            n_layers - 0.5,
            color="grey",
            alpha=0.12,
            label="last layers, never selected",
        )
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


FAMILIES = {  # mitigation -> (label, marker)
    "none": ("as it is", "o"),
    "refusal_direction": ("refusal direction ablated", "s"),
    "conditional": ("ablated where the probe reads harmless", "P"),
    "false_refusal": ("false-refusal vector ablated", "D"),
    "instruction": ("note naming the trigger", "^"),
}


def _family(row) -> str:
    name = row["mitigation"]
    if name == "conditional" and row.get("gate"):
        return f"conditional ({row['gate']} gate)"
    if name == "false_refusal" and "coefficient" in row and row["coefficient"] == row["coefficient"]:
        return f"false_refusal (orthogonalised x{row['coefficient']:g})"
    return name


def tradeoff_figure(table: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Refusal rate on safe prompts (over-refusal) against refusal rate on unsafe prompts, a point per
    setting with its 95% CIs, each family joined in order of strength; the frontier (no setting beats it
    on both rates) dashed, the chosen setting starred, and the goal (safe refusal halved, unsafe down by
    at most 5 points) shaded. The ideal corner is top left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    t = table.assign(family=[_family(r) for r in table.to_dict("records")])
    base = t[t["mitigation"] == "none"]
    if len(base):
        s0, u0 = 100 * base["safe_refusal_rate"].iloc[0], 100 * base["unsafe_refusal_rate"].iloc[0]
        ax.fill_between(
            [0, s0 / 2],
            u0 - 5,
            100,
            color="#2a9d8f",
            alpha=0.12,
            label="goal: safe halved, unsafe -5 pts at most",
        )
    for k, (name, rows) in enumerate(t.groupby("family", sort=False)):
        label, marker = FAMILIES.get(rows["mitigation"].iloc[0], (name, "o"))
        label = (
            name.replace(rows["mitigation"].iloc[0], label) if name != rows["mitigation"].iloc[0] else label
        )
        rows = rows.sort_values("strength")
        x, y = 100 * rows["safe_refusal_rate"], 100 * rows["unsafe_refusal_rate"]
        colour = colours[k % len(colours)]
        if "safe_ci_low" in rows:
            ax.errorbar(
                x,
                y,
                xerr=[x - 100 * rows["safe_ci_low"], 100 * rows["safe_ci_high"] - x],
                yerr=[y - 100 * rows["unsafe_ci_low"], 100 * rows["unsafe_ci_high"] - y],
                fmt="none",
                ecolor=colour,
                alpha=0.35,
                lw=0.8,
            )
        ax.plot(x, y, marker=marker, color=colour, label=label, lw=1)
        if rows["mitigation"].iloc[0] not in ("none", "instruction"):
            for xi, yi, s in zip(x, y, rows["strength"]):
                ax.annotate(f"{s:g}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if "frontier" in t and t["frontier"].any():
        f = t[t["frontier"].astype(bool)].sort_values("safe_refusal_rate")
        ax.plot(
            100 * f["safe_refusal_rate"],
            100 * f["unsafe_refusal_rate"],
            ls="--",
            color="grey",
            lw=1,
            label="frontier",
        )
    if "chosen" in t and t["chosen"].any():
        c = t[t["chosen"].astype(bool)]
        ax.plot(
            100 * c["safe_refusal_rate"],
            100 * c["unsafe_refusal_rate"],
            marker="*",
            ms=16,
            ls="",
            color="gold",
            markeredgecolor="black",
            label="chosen on the selection split",
        )
    ax.set_xlabel("refused, safe prompts (%)")
    ax.set_ylabel("refused, unsafe prompts (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0, top=100)
    ax.legend(fontsize=6.5, loc="lower right")
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=130)


def patching_figure(sites: pd.DataFrame, pair, path: str | Path) -> Path:
    """Layer x token heatmap of the share of the margin change each patched site carries (0: none,
    1: all of it), for one pair; the swapped token's label in bold, the readout's tree left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sites[sites["kind"] != "readout"]
    grid = shown.pivot(index="layer", columns="site", values="share").sort_index()
    labels = shown.drop_duplicates("site").set_index("site").loc[grid.columns]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.42 * grid.shape[1] + 2), 0.22 * grid.shape[0] + 2.2))
    limit = max(1.0, float(np.nanmax(np.abs(grid.to_numpy(float)), initial=0)))
    image = ax.imshow(
        grid.to_numpy(float), aspect="auto", cmap=DIVERGING, vmin=-limit, vmax=limit, origin="lower"
    )
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xticklabels([repr(t)[1:-1] for t in labels["token"]], rotation=70, fontsize=7)
    for tick, (a, b) in zip(ax.get_xticklabels(), zip(labels["token"], labels["variant_token"])):
        if a != b:
            tick.set_fontweight("bold")
            tick.set_color(ACCENT)
    ax.set_ylabel("layer (block input)")
    fig.colorbar(image, ax=ax, label="share of the margin change carried")
    title = (
        f"Patching '{pair['variant']}' into '{pair['prompt']}': margin {pair['margin_prompt']:+.2f} -> "
        f"{pair['margin_variant']:+.2f}"
    )
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=130)


def projection_figure(curves: pd.DataFrame, pairs: pd.DataFrame, path: str | Path) -> Path:
    """Projection on the refusal direction by layer: the prompt, its variant and its unsafe contrast,
    a panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(pairs))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False, sharey=True)
    styles = {"prompt": (MAIN, "-"), "variant": (ACCENT, "--"), "contrast": ("black", ":")}
    for ax, (_, pair) in zip(axes[0], pairs.iterrows()):
        for role, rows in curves[curves["pair"] == pair["pair"]].groupby("text", sort=False):
            colour, style = styles.get(role, ("grey", "-"))
            ax.plot(rows["layer"], rows["projection"], color=colour, ls=style, label=role)
        ax.set_title(textwrap.fill(f"{pair['prompt']} -> {pair['variant']}", 50), fontsize=7)
        ax.set_xlabel("layer (block input)")
    axes[0][0].set_ylabel("projection on the refusal direction")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path, dpi=130)
