"""Word heatmaps of attribution results: self-contained HTML, PNG/SVG/PDF (matplotlib), terminal
(rich); and faithfulness figures. Reads `AttributionResult` objects only.

Colours (toolkit.viz.palettes): signed methods on the diverging PuOr scale centred at 0 (orange =
toward refusal, purple = toward compliance), unsigned ones (saliency) on the sequential Greys scale
from 0. One scale per method per figure: vmax is the 99th percentile of |score| over every word of
that method in the figure, so rows can be compared; each figure shows its colour bars, and the score
itself shows on hover.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from lexprobe.toolkit.viz.heatmap_html import (  # noqa: E402, F401  (re-exported)
    CSS,
    _pieces,
    _verdict,
    attributed_target,
    heatmap_html,
    heatmap_html_fragment,
    heatmap_notebook,
)
from lexprobe.toolkit.viz.names import display_name  # noqa: E402
from lexprobe.toolkit.viz.palettes import (  # noqa: E402
    CATEGORICAL,
    COMPLIANCE,
    DIVERGING,
    MAIN,
    NEUTRAL,
    REFUSAL,
    TOWARD_COMPLIANCE,
    TOWARD_REFUSAL,
    UNSIGNED,
    Scale,
    colourbar,
    save,
    scale_for,
    scales_for,
)

CMAP = DIVERGING  # the signed scale (palettes.SEQUENTIAL is the unsigned one)


def colour(score: float, vmax: float, signed: bool = True) -> tuple[str, str]:
    """(background, text) hex colours of a score on the diverging scale [-vmax, vmax], or with
    `signed=False` on the sequential scale [0, vmax]."""
    return Scale("", signed, float(vmax)).colour(score)


# ------------------------------------------------------------------------------------------ PNG/SVG/PDF
def heatmap_png(result, path: str | Path, method: str | None = None, width_in: float = 13.0) -> Path:
    """One row per prompt (wrapped when long) for one method, on one colour scale with its colour bar;
    legible for 25 prompts on one figure. Writes the format `path`'s suffix names (png, svg, pdf)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    method = method or result.method_names[0]
    scale = scale_for(result, method)
    font = FontProperties(family="DejaVu Sans", size=10)
    label_w, dpi, line_in, gap_in, head_in = 1.7, 130, 0.27, 0.1, 1.2
    probe = plt.figure(dpi=dpi)
    renderer = FigureCanvasAgg(probe).get_renderer()

    def width(text: str) -> float:
        return renderer.get_text_width_height_descent(text or " ", font, ismath=False)[0]

    space = width("a a") - 2 * width("a")
    plt.close(probe)
    avail = (width_in - label_w - 0.2) * dpi

    layout = []  # per prompt: (row, lines of (text, score, x_px))
    for row in result.prompts.itertuples():
        lines, x, prev_end = [[]], 0.0, None
        for w in result.words(row.id, method).itertuples():
            if prev_end is not None:  # keep "wife's" together, "wife is" apart, as in the prompt
                x += space if w.char_start > prev_end else 3
            w_px = width(w.word) + 4
            if x + w_px > avail and lines[-1]:
                lines.append([])
                x = 0.0
            lines[-1].append((w.word, float(w.score), x))
            x += w_px
            prev_end = w.char_end
        layout.append((row, lines))
    n_lines = sum(len(lines) for _, lines in layout)
    fig = plt.figure(figsize=(width_in, n_lines * line_in + len(layout) * gap_in + head_in), dpi=dpi)
    fig_h = fig.get_figheight()
    height_px = fig_h * dpi
    fig.text(0.01, 1 - 0.12 / fig_h, f"Word attributions: {display_name(method)}", fontsize=12, va="top")
    sub = [display_name(result.run.get("model_spec"))]
    target = attributed_target(result.run)
    sub += [f"attributed margin: {target}"] if target else []
    sub += ["row label: prompt id, decision margin, greedy behaviour"]
    fig.text(0.01, 1 - 0.42 / fig_h, " · ".join(s for s in sub if s), fontsize=9, va="top", color="#444")
    bar_w = min(5.0, width_in * 0.42)
    cax = fig.add_axes([1 - (bar_w + 0.25) / width_in, 1 - 0.52 / fig_h, bar_w / width_in, 0.13 / fig_h])
    bar = colourbar(fig, cax, scale, fontsize=8)
    bar.set_label(textwrap.fill(scale.label(), 90), fontsize=7.5)
    y = height_px - head_in * dpi
    for row, lines in layout:
        label = f"#{row.id}  {row.margin:+.2f} {_verdict(row)}"
        colour_ = REFUSAL if row.refused else COMPLIANCE
        fig.text(0.01, (y - 0.5 * line_in * dpi) / height_px, label, fontsize=9, va="center", color=colour_)
        for line in lines:
            y -= 0.5 * line_in * dpi
            for text, score, x in line:
                bg, fg = scale.colour(score)
                fig.text(
                    (label_w * dpi + x) / (width_in * dpi),
                    y / height_px,
                    text,
                    fontproperties=font,
                    color=fg,
                    va="center",
                    bbox={"facecolor": bg, "edgecolor": "none", "boxstyle": "round,pad=0.15"},
                )
            y -= 0.5 * line_in * dpi
        y -= gap_in * dpi
    return save(fig, path, dpi=dpi)


def faithfulness_png(result, path: str | Path) -> Path | None:
    """Three panels (comprehensiveness, sufficiency, deletion AUC): each method's mean next to the random
    ranking's, plus the mean deletion curves (margin vs share of words removed, most toward refusal first).
    Writes the format `path`'s suffix names (png, svg, pdf)."""
    f = result.faithfulness
    if not len(f):
        return None
    methods = list(dict.fromkeys(f["method"]))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    x = np.arange(len(methods))
    titles = {
        "comprehensiveness": "comprehensiveness (higher = better)",
        "sufficiency": "sufficiency (lower = better)",
        "deletion_auc": "deletion AUC (lower = better)",
    }
    names = [display_name(m) for m in methods]
    for ax, (metric, title) in zip(axes, titles.items()):
        mine = [f[f["method"] == m][metric].mean() for m in methods]
        rand = [f[f["method"] == m][f"{metric}_random"].mean() for m in methods]
        ax.bar(x - 0.2, mine, 0.4, label="method's ranking", color=MAIN)
        ax.bar(x + 0.2, rand, 0.4, label="random ranking", color=NEUTRAL)
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        unit = "area under the margin curve" if metric == "deletion_auc" else "margin drop"
        ax.set_ylabel(f"{unit}, mean of {f['id'].nunique()} prompts", fontsize=8)
        ax.axhline(0, color="#444", lw=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", ncol=2, fontsize=8, frameon=False)
    ax = axes[3]
    grid = np.linspace(0, 1, 11)
    c = result.curves
    for k, name in enumerate([*methods, "random"]):
        sub = c[c["method"] == name] if len(c) else c
        if not len(sub):
            continue
        ys = [np.interp(grid, g["fraction"], g["margin"]) for _, g in sub.groupby("id")]
        style = (
            {"color": "#777", "ls": "--"}
            if name == "random"
            else {"color": CATEGORICAL[k % len(CATEGORICAL)]}
        )
        label = "random ranking" if name == "random" else display_name(name)
        ax.plot(grid, np.mean(ys, axis=0), label=label, **style)
    ax.set_xlabel("share of words removed (top-ranked first)", fontsize=9)
    ax.set_ylabel("mean margin", fontsize=9)
    ax.set_title("deletion curves", fontsize=10)
    ax.legend(fontsize=7)
    model = display_name(result.run.get("model_spec"))
    title = "Faithfulness of the word attributions on the refusal margin"
    fig.suptitle(f"{title} ({model})" if model else title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save(fig, path, dpi=120)


# ------------------------------------------------------------------------------------------ terminal
def print_terminal(result, console=None) -> None:
    """Each prompt's words coloured by each method's scores (one scale per method over the prompts
    printed, stated first), with margin and verdict (rich)."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    scales = scales_for(result)
    width = max((len(m) for m in result.method_names), default=0)
    for method, s in scales.items():
        ends = f"{TOWARD_COMPLIANCE} ← 0 → {TOWARD_REFUSAL}" if s.signed else f"0 → {UNSIGNED}"
        span = f"±{s.vmax:.3g}" if s.signed else f"0 to {s.vmax:.3g}"
        line = Text(f"{method:>{width}}  ")
        for x in np.linspace(s.vmin, s.vmax, 9):
            line.append("  ", style=f"on {s.colour(x)[0]}")
        line.append(f" {span}: {ends} ({s.rule}, {s.n} words)", style="dim")
        console.print(line)
    for row in result.prompts.itertuples():
        style = f"bold {REFUSAL}" if row.refused else f"bold {COMPLIANCE}"
        console.print(Text(f"#{row.id} {row.type}  margin {row.margin:+.3f}  {_verdict(row)}", style=style))
        for method in result.method_names:
            line = Text(f"{method:>{width}}  ")
            for text, score in _pieces(str(row.prompt), result.words(row.id, method)):
                if score is None:
                    line.append(text)
                else:
                    bg, fg = scales[method].colour(score)
                    line.append(text, style=f"{fg} on {bg}")
            console.print(line)
        top = result.words(row.id, result.method_names[0]).sort_values("score", ascending=False).head(5)
        listing = ", ".join(f"{w.word} {w.score:+.3f}" for w in top.itertuples())
        console.print(Text(f"{'top':>{width}}  {listing}", style="dim"))


# ------------------------------------------------------------------------------------------ files
FORMATS = ("html", "png", "svg", "pdf")


def write_heatmaps(
    result, out: Path, methods=None, formats=("html", "png"), overwrite: bool = False
) -> list[Path]:
    """heatmap.html (every method) and, per method, heatmap[_<method>].<png|svg|pdf> (the first method
    unsuffixed) in `out`; a file already there is an error unless `overwrite`."""
    from lexprobe.toolkit.errors import OutputError

    out = Path(out)
    methods = list(methods or result.method_names)
    targets = []
    if "html" in formats:
        targets.append(("html", None, out / "heatmap.html"))
    for fmt in (f for f in formats if f != "html"):
        for k, method in enumerate(methods):
            targets.append((fmt, method, out / (f"heatmap.{fmt}" if k == 0 else f"heatmap_{method}.{fmt}")))
    taken = [str(p) for _, _, p in targets if p.exists()]
    if taken and not overwrite:
        raise OutputError(f"{taken[0]} already exists: pass --overwrite to replace it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    for fmt, method, path in targets:
        if fmt == "html":
            heatmap_html(result, path)
        else:
            heatmap_png(result, path, method)
    return [p for _, _, p in targets]
