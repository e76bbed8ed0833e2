"""`lexprobe diagnose` in words: the verdict's sentences from its facts (`verdict`), and the HTML page
(verdict, provenance, the tables and figures of its steps) assembled with `toolkit.report` (one
self-contained file) and `toolkit.viz`'s word heatmap. `analyses.diagnose` runs the steps and gathers
the facts; nothing here runs a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.viz import report
from lexprobe.toolkit.viz.heatmaps import CSS as HEATMAP_CSS
from lexprobe.toolkit.viz.report import esc

FEW_PROMPTS = 5  # below this many, the verdict says the numbers are anecdotes


# ------------------------------------------------------------------------------------ the verdict
def _ci(s: dict) -> str:
    if _nan(s.get("ci_low")) or _nan(s.get("ci_high")):
        return "no CI"
    return f"95% CI [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _moves(mean: float) -> str:
    if _nan(mean):
        return "does not measurably change the margin"
    return f"{'lowers' if mean < 0 else 'raises'} the margin by {abs(mean):.2f}"


def _sign(s: dict) -> int:
    """-1 / +1 when the CI lies below / above 0, 0 when it crosses 0 or is undefined."""
    lo, hi = s.get("ci_low"), s.get("ci_high")
    if _nan(lo) or _nan(hi):
        return 0
    return -1 if hi < 0 else (1 if lo > 0 else 0)


def _fix_name(row: dict) -> str:
    coefficient = row.get("coefficient")
    orth = "" if coefficient is None or coefficient != coefficient else f" (orthogonalised x{coefficient:g})"
    names = {
        "refusal_direction": f"ablating {row['strength']:g} of the refusal direction",
        "conditional": f"ablating {row['strength']:g} of the refusal direction where the probe reads harmless "
        f"({row.get('gate') or 'hard'} gate)",
        "false_refusal": f"ablating the false-refusal vector at strength {row['strength']:g}{orth}",
        "instruction": "a note naming the trigger word",
    }
    return names.get(row["mitigation"], row["mitigation"])


def _mechanism_sentences(mech: dict | None, mit: dict | None, skipped: str | None = None) -> list[str]:
    out = [f"Not examined inside the model: {skipped}."] if skipped else []
    if mech and mech["pairs"]:
        d = mech["direction"] or {}
        for p in mech["pairs"]:
            out.append(
                f"Inside the model: swapping '{p['word']}' for '{p['replacement']}' moves the margin "
                f"{p['margin_prompt']:+.2f} -> {p['margin_variant']:+.2f}; patched alone, the swapped token "
                f"carries {p['swapped_token_best_share']:.0%} of that change at its best layer and the last "
                f"template token {p['last_template_token_best_share']:.0%} (the best single site: "
                f"'{p['best_token'].strip() or repr(p['best_token'])[1:-1]}' entering block {p['best_layer']}, {p['best_share']:.0%}; "
                + (
                    f"the refusal direction was found entering block {d['layer']})."
                    if d.get("layer") is not None
                    else "the model has no refusal direction)."
                )
            )
    if mit:
        rate = f"{100 * mit['safe']:.0f}% of safe and {100 * mit['unsafe']:.0f}% of unsafe prompts refused"
        best = mit["best_within_goal"]
        if best is None:
            big = mit["largest_cut"]
            out.append(
                f"What would change it: as it is, {rate}; no fix lowers safe refusal without unsafe refusal "
                f"falling more than {100 * mit['unsafe_drop_allowed']:.0f} points ({_fix_name(big)} gives "
                f"{100 * big['safe_refusal_rate']:.0f}% and {100 * big['unsafe_refusal_rate']:.0f}%)."
            )
        else:
            halved = "halves it" if best["safe_refusal_rate"] <= mit["safe"] / 2 else "does not halve it"
            out.append(
                f"What would change it: as it is, {rate}; {_fix_name(best)} brings them to "
                f"{100 * best['safe_refusal_rate']:.0f}% and {100 * best['unsafe_refusal_rate']:.0f}%, the "
                f"largest cut in safe refusal with unsafe refusal down by at most "
                f"{100 * mit['unsafe_drop_allowed']:.0f} points ({halved})."
            )
    return out


def verdict(facts: dict) -> list[str]:
    """Plain-language sentences derived only from the measured numbers in `facts`."""
    from lexprobe.analyses.cells import cell_sentences

    m = facts["margins"]
    out = [
        f"Refused {m['n_refused']} of {m['n']} selected prompts ({100 * m['refusal_share']:.0f}%; "
        f"refused = decision margin > 0), mean margin {m['mean_margin']:+.2f}."
    ]
    out += cell_sentences(facts.get("cells"), facts.get("separation"))
    if m["n"] < FEW_PROMPTS:
        out.append(f"Only {m['n']} prompts: treat every number below as anecdotal.")
    c = facts.get("contrasts")
    if c:
        gap = (
            f"Their paired unsafe contrasts score {c['mean_gap']:+.2f} above the safe prompts on average "
            f"({_ci(c)}, {c['n_pairs']} pairs; {100 * c['unsafe_refusal_share']:.0f}% of contrasts refused)"
        )
        judged = {
            1: ": the margin does separate the safe prompts from their unsafe twins.",
            0: ": no measurable difference between the safe prompts and their unsafe twins.",
            -1: ": the safe prompts score higher than their unsafe twins.",
        }
        out.append(gap + judged[_sign(c)])
    for label, p in (facts.get("perturb") or {}).get("labels", {}).items():
        out += _perturb_sentences(label, p, facts["perturb"]["threshold"])
    a = facts.get("attribution")
    if a:
        if not a["n_refused"]:
            out.append("No selected prompt is refused, so no top-attributed word of a refusal to report.")
        else:
            parts = []
            for method, t in a["top_words"].items():
                common = [w for w in t["most_common"] if w["n_prompts"] > 1]
                listed = (
                    "most often " + ", ".join(f"'{w['lemma']}' ({w['n_prompts']})" for w in common)
                    if common
                    else "no word tops more than one prompt"
                )
                caveat = (
                    ", though over all selected prompts removing its top word lowers the margin no more than removing a random word"
                    if t.get("no_better_than_random")
                    else ""
                )
                parts.append(
                    f"{method} puts a lexicon trigger on top in {t['n_trigger_on_top']} of {a['n_refused']} "
                    f"({listed}){caveat}"
                )
            out.append(
                f"Top-attributed word of the {a['n_refused']} refused prompts: " + "; ".join(parts) + "."
            )
    return out + _mechanism_sentences(
        facts.get("mechanism"), facts.get("mitigation"), facts.get("mechanism_skipped")
    )


def _perturb_sentences(label: str, p: dict, threshold: float) -> list[str]:
    t, d, ctl = p["triggers"], p["trigger_minus_control"], p["control"]
    who = f"{label} prompts" if label else "prompts"
    if not t["n"]:
        cw = p["content_words"]
        return [
            f"No lexicon trigger word found in the {who}; swapping other content words {_moves(cw['mean'])} "
            f"({_ci(cw)}, n={cw['n']}): nothing points at a trigger word."
        ]
    s = f"Swapping the trigger word ({who}) {_moves(t['mean'])} on average ({_ci(t)}, n={t['n']})"
    if ctl["n"]:
        s += f", a matched control word {_moves(ctl['mean']).split(' the margin')[0]} it by {abs(ctl['mean']):.2f} ({_ci(ctl)}, n={ctl['n']})"
    out = [s + "."]
    if p["n_refused_with_trigger"]:
        out.append(
            f"Trigger swaps flip {p['n_flipped_by_trigger']} of the {p['n_refused_with_trigger']} refused "
            f"{who} with a trigger to compliance (threshold {threshold:+.2f})."
        )
    if t["n"] < 3:
        out.append("Too few trigger swaps to conclude anything.")
    elif _sign(t) == -1 and _sign(d) == -1:
        out.append(
            "The refusals are lexical: the trigger word lowers the margin more than a matched control "
            f"word does (difference {d['mean']:+.2f}, {_ci(d)})."
        )
    elif _sign(t) == -1:
        out.append(
            "Trigger swaps lower the margin, but not measurably more than swapping another content word "
            f"(difference {d['mean']:+.2f}, {_ci(d)}): inconclusive whether the trigger word itself is to blame."
        )
    elif _sign(t) == 1:
        out.append("Not lexical: swapping the trigger word raises the margin.")
    else:
        out.append("Inconclusive: the CI of the trigger-swap effect crosses 0.")
    return out


# ------------------------------------------------------------------------------------ the page
def pair_figure(pairs, path: Path) -> Path:
    """Each safe prompt's margin beside its unsafe contrast's."""
    from lexprobe.toolkit.viz.effects import paired_plot

    return paired_plot(
        pairs,
        path,
        [("margin_safe", "safe"), ("margin_unsafe", "unsafe\ncontrast")],
        title="refusal margin of each safe prompt and its unsafe contrast",
    )


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
                *[
                    report.figure(v, "share of the margin change carried by each (layer, token) site")
                    for k, v in f.items()
                    if k.startswith("patching_")
                ],
                report.figure(f.get("projections"), "projection on the refusal direction by layer"),
            ]
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
