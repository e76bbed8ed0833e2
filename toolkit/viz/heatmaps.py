"""Word heatmaps of attribution results: self-contained HTML, PNG (matplotlib), terminal (rich); and
faithfulness figures. Reads `AttributionResult` objects only.

Colours: a diverging scale centred at 0, red = pushes toward refusal, blue = toward compliance; each
(prompt, method) row is scaled by its own largest |score|, and the score itself shows on hover.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from lexprobe.toolkit.viz import report  # noqa: E402

CMAP = plt.get_cmap("RdBu_r")


def colour(score: float, vmax: float) -> tuple[str, str]:
    """(background, text) hex colours of a score on the diverging scale [-vmax, vmax]."""
    x = 0.5 if vmax <= 0 else 0.5 + 0.5 * float(np.clip(score / vmax, -1, 1))
    rgba = CMAP(x)
    text = "#ffffff" if abs(x - 0.5) > 0.33 else "#111111"
    return mcolors.to_hex(rgba), text


def _vmax(scores) -> float:
    scores = np.asarray(scores, dtype=float)
    return float(np.abs(scores).max()) if len(scores) else 0.0


def _pieces(prompt: str, words: pd.DataFrame):
    """(text, score or None) pieces covering the whole prompt: words with scores, the gaps without."""
    pos = 0
    for w in words.itertuples():
        if w.char_start > pos:
            yield prompt[pos : w.char_start], None
        yield prompt[w.char_start : w.char_end], float(w.score)
        pos = w.char_end
    if pos < len(prompt):
        yield prompt[pos:], None


def _verdict(row) -> str:
    return "refused" if bool(row.refused) else "complied"


# ------------------------------------------------------------------------------------------ HTML
CSS = """  /* the word heatmap; the page and its tables: toolkit.report.CSS */
.pair{display:flex;gap:16px;margin:10px 0;flex-wrap:wrap}
.card{flex:1 1 520px;border:1px solid #ddd;border-radius:6px;padding:8px 12px;background:#fafafa}
.card.unsafe{background:#fff8f5}
.head{font-size:13px;color:#555;margin-bottom:6px}
.head b{color:#222}.ref{color:#b2182b;font-weight:600}.comp{color:#2166ac;font-weight:600}
.row{display:flex;align-items:baseline;gap:8px;margin:3px 0;line-height:1.9}
.m{font-size:11px;color:#777;width:150px;flex:none;text-align:right}
.w{padding:1px 2px;border-radius:3px;cursor:default}
.legend span{padding:2px 8px;border-radius:3px;margin-right:4px;font-size:12px}
"""


def _card(result, row) -> str:
    cls = "card unsafe" if str(row.label) == "unsafe" else "card"
    verdict = f'<span class="{"ref" if row.refused else "comp"}">{_verdict(row)}</span>'
    head = (
        f'<div class="head"><b>#{html.escape(str(row.id))}</b> · {html.escape(str(row.type))} · '
        f"margin {row.margin:+.2f} · {verdict}</div>"
    )
    lines = []
    for method in result.method_names:
        words = result.words(row.id, method)
        vmax = _vmax(words["score"])
        spans = []
        for text, score in _pieces(str(row.prompt), words):
            if score is None:
                spans.append(html.escape(text))
                continue
            bg, fg = colour(score, vmax)
            spans.append(
                f'<span class="w" style="background:{bg};color:{fg}" '
                f'title="{html.escape(text)}: {score:+.4f}">{html.escape(text)}</span>'
            )
        lines.append(f'<div class="row"><span class="m">{method}</span><span>{"".join(spans)}</span></div>')
    return f'<div class="{cls}">{head}{"".join(lines)}</div>'


def heatmap_html_fragment(result) -> str:
    """The prompts, grouped by type, each safe prompt beside its paired contrast when both were run."""
    prompts = result.prompts
    ids = set(prompts["id"])
    by_id = {r.id: r for r in prompts.itertuples()}
    parts = []
    for ptype, group in prompts.groupby("type", sort=False):
        cards = []
        for row in group.itertuples():
            paired = bool(row.pair_id) and row.pair_id in ids
            if paired and str(row.label) == "unsafe":  # shown beside its safe prompt
                continue
            pair = [_card(result, row)] + ([_card(result, by_id[row.pair_id])] if paired else [])
            cards.append(f'<div class="pair">{"".join(pair)}</div>')
        if cards:
            parts.append(f"<h2>{html.escape(str(ptype))}</h2>{''.join(cards)}")
    return "".join(parts)


def _legend() -> str:
    neg, _ = colour(-1, 1)
    pos, _ = colour(1, 1)
    return (
        f'<p class="legend"><span style="background:{pos};color:#fff">toward refusal</span>'
        f'<span style="background:{neg};color:#fff">toward compliance</span> '
        "each row scaled to its largest |score|; hover a word for its score. "
        "margin &gt; 0: greedy decoding refuses.</p>"
    )


def heatmap_html(result, path: str | Path) -> Path:
    """A self-contained HTML page: legend, method agreement, faithfulness by type, then the heatmaps."""
    run = result.run
    legend = _legend()
    meta = ", ".join(
        f"{k}: {html.escape(str(v))}"
        for k, v in (
            ("model", run.get("model_spec")),
            ("system prompt", (run.get("system_prompt") or {}).get("name")),
            ("attributed margin", run.get("target")),
            ("dtype", run.get("dtype")),
        )
        if v is not None
    )
    sections = [f"<h1>Word attributions of the refusal margin</h1><p>{meta}</p>", legend]
    if len(result.method_names) > 1:
        sections.append(
            "<h2>Rank agreement between methods</h2>" + report.table(result.agreement(), digits=3)
        )
    by_type = result.faithfulness_by_type()
    if len(by_type):
        cols = ["type", "method", "n", "top1_drop", "top1_drop_random", "comprehensiveness"]
        cols += ["comprehensiveness_random", "sufficiency", "sufficiency_random", "deletion_auc"]
        cols += ["deletion_auc_random", "no_better_than_random"]
        sections.append(
            "<h2>Faithfulness on the margin (vs a random ranking)</h2>"
            "<p>top-1 drop and comprehensiveness: higher is better; sufficiency and deletion AUC: lower "
            "is better. Flagged: the method's top word is no better than a random word on that type.</p>"
            + report.table(by_type[cols], digits=3, flag_column="no_better_than_random")
        )
    sections.append(heatmap_html_fragment(result))
    path = Path(path)
    path.write_text(report.page("lexprobe attributions", sections, css=CSS), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ PNG
def heatmap_png(result, path: str | Path, method: str | None = None, width_in: float = 13.0) -> Path:
    """One row per prompt (wrapped when long) for one method; legible for 25 prompts on one figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    method = method or result.method_names[0]
    font = FontProperties(family="DejaVu Sans", size=10)
    label_w, dpi, line_in, gap_in = 1.7, 130, 0.27, 0.1
    probe = plt.figure(dpi=dpi)
    renderer = FigureCanvasAgg(probe).get_renderer()

    def width(text: str) -> float:
        return renderer.get_text_width_height_descent(text or " ", font, ismath=False)[0]

    space = width("a a") - 2 * width("a")
    plt.close(probe)
    avail = (width_in - label_w - 0.2) * dpi

    layout = []  # per prompt: (row, lines of (text, score, x_px, vmax))
    for row in result.prompts.itertuples():
        words = result.words(row.id, method)
        vmax = _vmax(words["score"])
        lines, x, prev_end = [[]], 0.0, None
        for w in words.itertuples():
            if prev_end is not None:  # keep "wife's" together, "wife is" apart, as in the prompt
                x += space if w.char_start > prev_end else 3
            w_px = width(w.word) + 4
            if x + w_px > avail and lines[-1]:
                lines.append([])
                x = 0.0
            lines[-1].append((w.word, float(w.score), x, vmax))
            x += w_px
            prev_end = w.char_end
        layout.append((row, lines))
    n_lines = sum(len(lines) for _, lines in layout)
    fig = plt.figure(figsize=(width_in, n_lines * line_in + len(layout) * gap_in + 0.55), dpi=dpi)
    height_px = fig.get_figheight() * dpi
    fig.text(
        0.01,
        1 - 0.1 / fig.get_figheight(),
        f"{method}: red = toward refusal, blue = toward compliance (each row scaled to its max |score|)",
        fontsize=10,
        va="top",
    )
    y = height_px - 0.45 * dpi
    for row, lines in layout:
        label = f"#{row.id}  {row.margin:+.2f} {_verdict(row)}"
        colour_ = "#b2182b" if row.refused else "#2166ac"
        fig.text(0.01, (y - 0.5 * line_in * dpi) / height_px, label, fontsize=9, va="center", color=colour_)
        for line in lines:
            y -= 0.5 * line_in * dpi
            for text, score, x, vmax in line:
                bg, fg = colour(score, vmax)
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
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def faithfulness_png(result, path: str | Path) -> Path | None:
    """Three panels (comprehensiveness, sufficiency, deletion AUC): each method's mean next to the random
    ranking's, plus the mean deletion curves (margin vs share of words removed, most toward refusal first)."""
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
    for ax, (metric, title) in zip(axes, titles.items()):
        mine = [f[f["method"] == m][metric].mean() for m in methods]
        rand = [f[f["method"] == m][f"{metric}_random"].mean() for m in methods]
        ax.bar(x - 0.2, mine, 0.4, label="method", color="#b2182b")
        ax.bar(x + 0.2, rand, 0.4, label="random ranking", color="#999999")
        ax.set_xticks(x, methods, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="#444", lw=0.6)
    axes[0].legend(fontsize=8)
    ax = axes[3]
    grid = np.linspace(0, 1, 11)
    c = result.curves
    for name in [*methods, "random"]:
        sub = c[c["method"] == name]
        if not len(sub):
            continue
        ys = [np.interp(grid, g["fraction"], g["margin"]) for _, g in sub.groupby("id")]
        style = {"color": "#777", "ls": "--"} if name == "random" else {}
        ax.plot(grid, np.mean(ys, axis=0), label=name, **style)
    ax.set_xlabel("share of words removed (top-ranked first)", fontsize=9)
    ax.set_ylabel("mean margin", fontsize=9)
    ax.set_title("deletion curves", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ terminal
def print_terminal(result, console=None) -> None:
    """Each prompt's words coloured by each method's scores, with margin and verdict (rich)."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    for row in result.prompts.itertuples():
        style = "bold red" if row.refused else "bold blue"
        console.print(Text(f"#{row.id} {row.type}  margin {row.margin:+.3f}  {_verdict(row)}", style=style))
        width = max(len(m) for m in result.method_names)
        for method in result.method_names:
            words = result.words(row.id, method)
            vmax = _vmax(words["score"])
            line = Text(f"{method:>{width}}  ")
            for text, score in _pieces(str(row.prompt), words):
                if score is None:
                    line.append(text)
                else:
                    bg, fg = colour(score, vmax)
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


def heatmap_notebook(result) -> str:
    """The notebook view: a self-styled block with the legend and every prompt's heatmap."""
    return f"<div><style>{CSS}</style>{_legend()}{heatmap_html_fragment(result)}</div>"
