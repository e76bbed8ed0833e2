"""The HTML page of `lexprobe diagnose`: verdict, provenance, the tables and figures of its three steps,
assembled with `toolkit.report` (one self-contained file) and `toolkit.viz`'s word heatmap."""

from __future__ import annotations

import json
from pathlib import Path

from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.viz import report
from lexprobe.toolkit.viz.heatmaps import CSS as HEATMAP_CSS
from lexprobe.toolkit.viz.report import esc


def _section(title: str, *parts: str) -> str:
    return f"<h2>{esc(title)}</h2>" + "".join(parts)


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def write_report(result, attributions, figures: dict[str, Path], path: Path) -> Path:
    s, t, f = result.summary, result.tables, figures
    prov = s["provenance"]
    m = s["margins"]
    cfg = prov["config"]
    selection = ", ".join(m["types"])
    body = [
        f"<h1>Why does {esc(prov['model'])} refuse these prompts?</h1>",
        _note(
            f"lexprobe diagnose · suite {cfg['suite']['suite']} · types {selection} · {m['n']} prompts · "
            f"{s['wall_seconds']:.0f} s"
        ),
        '<div class="verdict">' + "".join(f"<p>{esc(x)}</p>" for x in s["verdict"]) + "</div>",
    ]
    prov_items = {k: v for k, v in prov.items() if k != "config"}
    body.append(
        "<details><summary>Provenance</summary>"
        + report.definitions(prov_items | {"config": _config_line(cfg)})
        + "</details>"
    )

    body.append(
        _section(
            "1. Refusal margins",
            _note(
                "margin = log P(best refusal opening) − log P(best compliance opening) at the first "
                "assistant token; > 0 means greedy decoding opens with a refusal."
            ),
            report.table(t["margins_by_type"]),
        )
    )
    if "cells" in t:
        body += [
            "<h3>What the model represents against what it does</h3>",
            _note(
                "harmfulness = the harmfulness probe's logit (> 0: represented as harmful; fitted on calibration "
                "prompts, never on this suite). Cells: misread = refused and represented harmful; lexically "
                "over-refused = refused yet represented harmless; lexical_over_refusal_index = the share of "
                "refused prompts represented harmless. Shares with 95% bootstrap CIs."
            ),
            report.table(t["cells"]),
            report.figure(
                f.get("cells"), "each prompt's harmfulness against its margin, safe and unsafe apart"
            ),
        ]
    if "contrast_by_type" in t:
        body += [
            "<h3>Safe prompts vs their unsafe contrasts</h3>",
            _note("gap = margin(unsafe twin) − margin(safe prompt); AUROC of the margin separating them."),
            report.table(t["contrast_by_type"]),
            report.figure(f.get("contrast_margins"), "each line a pair; black the mean; red dashed 0"),
        ]

    if s.get("attribution"):
        a = s["attribution"]
        parts = [
            _note(
                f"The top-scored word of each of the {a['n_refused']} refused prompts, per method, "
                "counted by lemma; trigger = the trigger-lexicon entry (word or phrase) the top word belongs to."
            ),
            report.table(t.get("top_words"), empty="no refused prompt among the selection"),
        ]
        if "faithfulness_by_type" in t:
            parts += [
                "<h3>Faithfulness</h3>",
                _note(
                    "top1_drop: margin drop when the top word is removed (higher = better), beside a "
                    "random word's; flagged when no better than random."
                ),
                report.table(t["faithfulness_by_type"]),
            ]
        parts.append(report.figure(f.get("heatmap"), f"word attributions ({a['methods'][0]})"))
        if attributions is not None and len(attributions.prompts):
            from lexprobe.toolkit.viz.heatmaps import heatmap_html_fragment

            parts.append(
                "<details><summary>Word heatmap, every method (hover a word for its score)</summary>"
                + heatmap_html_fragment(attributions)
                + "</details>"
            )
        body.append(_section("2. Attribution: which words push toward refusal", *parts))

    if s.get("perturb"):
        p = s["perturb"]
        parts = [
            _note(
                "delta = margin(variant) − margin(original); negative = the swap lowered refusal. "
                f"flipped = the two margins lie on either side of the refusal threshold {p['threshold']:+.2f}."
            ),
            "<h3>Pooled</h3>",
            report.table(t["pooled"]),
            "<h3>Per trigger</h3>",
            report.table(t["triggers"], empty="no trigger word of the lexicon in these prompts"),
            report.figure(
                f.get("forest"),
                "per-trigger margin change with 95% CI; pooled effects as vermillion diamonds",
            ),
            f"<h3>The {len(t['word_swaps'])} word swaps that lower the margin most</h3>",
            report.table(t["word_swaps"]),
            report.figure(f.get("paired_margins"), "margins before and after swapping, per prompt"),
        ]
        if "attribution_agreement" in t:
            parts += [
                "<h3>Attribution vs substitution effect</h3>",
                report.table(t["attribution_agreement"]),
            ]
        body.append(_section("3. Substitution: which word swaps lower the margin", *parts))

    if s.get("mechanism") or s.get("mechanism_skipped"):
        parts = []
        if s.get("mechanism_skipped"):
            parts.append(_note(f"Not examined: {s['mechanism_skipped']}"))
        if "mechanism" in t:
            parts += [
                _note(
                    "Activation patching: the residual stream entering a block at one token, taken from the "
                    "variant's pass into the prompt's; share = how much of the margin change that site carries "
                    "(1: all of it). Projection: the residual at the refusal direction's template position on "
                    "the unit refusal direction, by layer."
                ),
                report.table(t["mechanism"].drop(columns=["contrast"], errors="ignore")),
                *[report.figure(v, "share of the margin change carried by each (layer, token) site")
                  for k, v in f.items() if k.startswith("patching_")],
                report.figure(f.get("projections"), "projection on the refusal direction by layer"),
            ]  # fmt: skip
        body.append(_section("4. Mechanism: where the trigger acts inside the model", *parts))
    if "tradeoff" in t:
        body.append(
            _section(
                "5. What would change it, at what cost",
                _note(
                    "Each fix scored on the selected prompts and their unsafe contrasts, with 95% bootstrap CIs; "
                    "refused = margin > 0. refusal_direction: that share of the refusal direction ablated "
                    "everywhere; conditional: the same, only where the harmfulness probe reads the prompt as "
                    "harmless; false_refusal: a false-refusal vector (harmless prompts lexprobe made that the model "
                    "refuses; coefficient = the share of its refusal-direction component removed) ablated; "
                    "instruction: a note naming the prompt's trigger words as harmless. chosen: the rule's pick on "
                    "the calibration selection split (mitigate/chosen.json)."
                ),
                report.table(t["tradeoff"]),
                report.figure(f.get("tradeoff"), "refusal rate on safe against unsafe prompts, per fix"),
            )
        )

    steps = ", ".join(f"{k}/" for k, v in s["steps"].items() if v)
    body.append(
        _note(f"Each step's own tables and run.json are in the subdirectories beside this report: {steps}.")
    )
    write_text_atomic(path, report.page("lexprobe diagnose", body, css=HEATMAP_CSS))
    return path


def _config_line(cfg: dict) -> str:
    return json.dumps(cfg, default=str)
