"""The HTML word heatmap: the standalone page (`heatmap_html`), the fragment other reports embed and
the notebook view, each with a legend naming both ends and one CSS colour bar per method (ticks at
-vmax, 0, +vmax; 0 to vmax for unsigned methods); each row's method in a label cell of its own.
`toolkit.viz.heatmaps` re-exports everything here."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.viz import report
from lexprobe.toolkit.viz.names import display_name
from lexprobe.toolkit.viz.palettes import (
    COMPLIANCE,
    REFUSAL,
    TOWARD_COMPLIANCE,
    TOWARD_REFUSAL,
    UNSIGNED,
    Scale,
    gradient_css,
    scales_for,
    tick_label,
)


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
CSS = f"""  /* the word heatmap; the page and its tables: toolkit.report.CSS */
.pair{{display:flex;gap:16px;margin:10px 0;flex-wrap:wrap}}
.card{{flex:1 1 520px;border:1px solid #ddd;border-radius:6px;padding:8px 12px;background:#fafafa}}
.card.unsafe{{background:#fbf8f3}}
.head{{font-size:13px;color:#555;margin-bottom:6px}}
.head b{{color:#222}}.ref{{color:{REFUSAL};font-weight:600}}.comp{{color:{COMPLIANCE};font-weight:600}}
.row{{display:grid;grid-template-columns:150px minmax(0,1fr);column-gap:10px;align-items:baseline;
margin:3px 0;line-height:1.9}}
.ml{{font-size:11px;line-height:1.6;color:#333;background:#e9ecf1;border-radius:3px;padding:0 6px;
text-align:right;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}}
.ws{{min-width:0;overflow-wrap:anywhere}}
.w{{padding:1px 2px;border-radius:3px;cursor:default}}
.legend span.sw{{padding:2px 8px;border-radius:3px;margin-right:4px;font-size:12px}}
.scales{{display:flex;flex-wrap:wrap;gap:10px 32px;margin:6px 0 14px}}
.cbar{{width:340px;font-size:11px;color:#444}}
.cbar .name{{font-size:12px;font-weight:600;color:#222}}
.cbar .strip{{height:12px;border:1px solid #bbb;border-radius:2px;margin:2px 0}}
.cbar .ticks,.cbar .ends{{display:flex;justify-content:space-between}}
.cbar .ends{{color:#666}}.cbar .how{{color:#777;font-size:10.5px}}
"""


def _row_html(result, row, method: str, scale: Scale) -> str:
    spans = []
    for text, score in _pieces(str(row.prompt), result.words(row.id, method)):
        if score is None:
            spans.append(html.escape(text))
            continue
        bg, fg = scale.colour(score)
        spans.append(
            f'<span class="w" style="background:{bg};color:{fg}" '
            f'title="{html.escape(text)}: {score:+.4f}">{html.escape(text)}</span>'
        )
    name = html.escape(display_name(method))
    label = f'<span class="ml" title="{html.escape(method)}">{name}</span>'
    return f'<div class="row" data-method="{html.escape(method)}">{label}<span class="ws">{"".join(spans)}</span></div>'


def _card(result, row, scales: dict[str, Scale]) -> str:
    cls = "card unsafe" if str(row.label) == "unsafe" else "card"
    verdict = f'<span class="{"ref" if row.refused else "comp"}">{_verdict(row)}</span>'
    head = (
        f'<div class="head"><b>#{html.escape(str(row.id))}</b> · {html.escape(str(row.type))} · '
        f"margin {row.margin:+.2f} · {verdict}</div>"
    )
    lines = [_row_html(result, row, m, scales[m]) for m in result.method_names]
    return f'<div class="{cls}">{head}{"".join(lines)}</div>'


def _colourbar_html(scale: Scale) -> str:
    """One method's colour bar: the name, a CSS gradient strip, ticks at its ends and centre."""
    ticks = "".join(f"<span>{tick_label(t, scale.signed)}</span>" for t in scale.ticks())
    left, right = scale.ends()
    how = f"{'±vmax' if scale.signed else 'vmax'} = {scale.rule} over the {scale.n} words here"
    if scale.clipped:
        how += f"; {scale.clipped} beyond it saturate"
    return (
        f'<div class="cbar" data-method="{html.escape(scale.method)}" data-vmax="{scale.vmax:.6g}" '
        f'data-signed="{str(scale.signed).lower()}"><div class="name">{html.escape(display_name(scale.method))}'
        f"{'' if scale.signed else ' (unsigned)'}</div>"
        f'<div class="strip" style="background:{gradient_css(scale)}"></div>'
        f'<div class="ticks">{ticks}</div><div class="ends"><span>← {html.escape(left)}</span>'
        f'<span>{html.escape(right)} →</span></div><div class="how">{html.escape(how)}</div></div>'
    )


def _legend(scales: dict[str, Scale]) -> str:
    """The two ends named, the unsigned scale when a method has one, and every method's colour bar."""
    ref = Scale("", True, 1.0).colour(1)
    comp = Scale("", True, 1.0).colour(-1)
    swatches = [
        f'<span class="sw" style="background:{ref[0]};color:{ref[1]}">{TOWARD_REFUSAL}</span>',
        f'<span class="sw" style="background:{comp[0]};color:{comp[1]}">{TOWARD_COMPLIANCE}</span>',
    ]
    if not all(s.signed for s in scales.values()):
        unsigned = Scale("", False, 1.0).colour(0.85)
        swatches.append(
            f'<span class="sw" style="background:{unsigned[0]};color:{unsigned[1]}">{UNSIGNED}</span>'
        )
    text = (
        " one colour scale per method over every prompt here (its colour bar below), so rows and prompts "
        "compare; methods have different units. Hover a word for its score. margin &gt; 0: greedy "
        "decoding refuses."
    )
    bars = "".join(_colourbar_html(s) for s in scales.values())
    return f'<p class="legend">{"".join(swatches)}{text}</p><div class="scales">{bars}</div>'


def heatmap_html_fragment(result, legend: bool = True) -> str:
    """The prompts, grouped by type, each safe prompt beside its paired contrast when both were run;
    after the legend and one colour bar per method (`legend=False`: the prompts only)."""
    prompts = result.prompts
    scales = scales_for(result)
    ids = set(prompts["id"])
    by_id = {r.id: r for r in prompts.itertuples()}
    parts = [_legend(scales)] if legend and scales else []
    for ptype, group in prompts.groupby("type", sort=False):
        cards = []
        for row in group.itertuples():
            paired = bool(row.pair_id) and row.pair_id in ids
            if paired and str(row.label) == "unsafe":  # shown beside its safe prompt
                continue
            pair = [_card(result, row, scales)]
            pair += [_card(result, by_id[row.pair_id], scales)] if paired else []
            cards.append(f'<div class="pair">{"".join(pair)}</div>')
        if cards:
            parts.append(f"<h2>{html.escape(str(ptype))}</h2>{''.join(cards)}")
    return "".join(parts)


def heatmap_html(result, path: str | Path) -> Path:
    """A self-contained HTML page: provenance, method agreement, faithfulness by type, then the legend,
    the colour bars and the heatmaps."""
    run = result.run
    meta = ", ".join(
        f"{k}: {html.escape(str(v))}"
        for k, v in (
            ("model", display_name(run.get("model_spec")) or None),
            ("system prompt", (run.get("system_prompt") or {}).get("name")),
            ("attributed margin", attributed_target(run)),
            ("dtype", run.get("dtype")),
        )
        if v is not None
    )
    sections = [f"<h1>Word attributions of the refusal margin</h1><p>{meta}</p>"]
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
    sections.append("<h2>Word heatmaps</h2>" + heatmap_html_fragment(result))
    path = Path(path)
    write_text_atomic(path, report.page("lexprobe attributions", sections, css=CSS))
    return path


def heatmap_notebook(result) -> str:
    """The notebook view: a self-styled block with the legend, colour bars and every prompt's heatmap;
    its stylesheet applies inside the block only (a notebook's own `.row` or `.card` stay as they are)."""
    return f'<div class="lexprobe-heatmap"><style>{scoped(CSS, ".lexprobe-heatmap")}</style>{heatmap_html_fragment(result)}</div>'


def scoped(css: str, scope: str) -> str:
    """`css` with every selector prefixed by `scope` (comments dropped)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)

    def prefix(match: re.Match) -> str:
        selectors = ",".join(f"{scope} {sel.strip()}" for sel in match.group(1).split(","))
        return selectors + "{"

    return re.sub(r"([^{}]+)\{", prefix, css)


def attributed_target(run: dict) -> str | None:
    """The margin an attribution run explained (run.json's settings; a top-level key before 0.3)."""
    return (run.get("settings") or {}).get("target") or run.get("target")
