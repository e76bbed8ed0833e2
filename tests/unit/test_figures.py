"""Figures a paper can use: one colour scale per method per figure (with colour bars), unsigned methods
on a sequential scale, colour-blind-safe colours, png/svg/pdf from the path's suffix, forest plots of
effects with n >= 3 only, and human names in titles."""

from __future__ import annotations

import colorsys
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors

from lexprobe.cli import main
from lexprobe.toolkit.attribution.result import AttributionResult
from lexprobe.toolkit.viz import effects, heatmaps, palettes, plots
from lexprobe.toolkit.viz.names import display_name, type_name

FAST = ["--steps", "4", "--max-steps", "8", "--samples", "4", "--random-orders", "1"]
MAGIC = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}


# ------------------------------------------------------------------------------------------ helpers
def _result(rows: dict, signed: dict | None = None) -> AttributionResult:
    """An AttributionResult from {(prompt id, method): [(word, score), ...]}; `signed`: {method: bool}
    recorded in the methods table (methods left out record nothing)."""
    attributions, prompts, methods = [], {}, []
    for (pid, method), words in rows.items():
        text = " ".join(w for w, _ in words)
        prompts[pid] = {
            "id": pid, "type": "homonyms", "label": "safe", "prompt": text, "margin": -1.0,
            "margin_sampled": -1.0, "margin_smooth": -1.0, "refused": False, "pair_id": "",
        }  # fmt: skip
        pos = 0
        for k, (word, score) in enumerate(words):
            attributions.append(
                {"id": pid, "word_index": k, "word": word, "char_start": pos,
                 "char_end": pos + len(word), "score": score, "method": method}
            )  # fmt: skip
            pos += len(word) + 1
        record = {"id": pid, "method": method, "seconds": 0.0}
        if signed and method in signed:
            record["signed"] = signed[method]
        methods.append(record)
    return AttributionResult(
        pd.DataFrame(attributions), pd.DataFrame(list(prompts.values())), pd.DataFrame(methods)
    )


def _spans(page: str, method: str) -> list[tuple[str, float, str]]:
    """(word, score, background) of every word span in the rows of `method`."""
    out = []
    for row in re.findall(rf'<div class="row" data-method="{method}">(.*?)</span></div>', page):
        for bg, word, score in re.findall(
            r'background:(#[0-9a-f]{6});[^"]*" title="([^:]+): ([-+0-9.]+)"', row
        ):
            out.append((word, float(score), bg))
    return out


def _captured(monkeypatch, module):
    """Run a figure function of `module` keeping its Figure (its `save` is replaced)."""
    figs = []

    def keep(fig, path, **kwargs):
        figs.append(fig)
        return path

    monkeypatch.setattr(module, "save", keep)
    return figs


def _is_green(colour) -> bool:
    h, s, v = colorsys.rgb_to_hsv(*mcolors.to_rgb(colour))
    return 75 <= 360 * h <= 165 and s > 0.2 and v > 0.15


def _is_red(colour) -> bool:
    h, s, v = colorsys.rgb_to_hsv(*mcolors.to_rgb(colour))
    return (360 * h <= 20 or 360 * h >= 340) and s > 0.5 and v > 0.3


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory, tiny_readout_file):
    """A real attribution run on tiny-random: two prompts, integrated gradients and saliency."""
    out = tmp_path_factory.mktemp("figures") / "att"
    args = ["attribute", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--out", str(out)]
    args += [*FAST, "--suite", "xstest", "--ids", "1", "2", "--method", "integrated_gradients,saliency"]
    assert main(args) == 0
    return AttributionResult.load(out)


# ------------------------------------------------------------------------------------------ scales
def test_one_scale_per_method_so_equal_scores_get_equal_colours_across_rows(monkeypatch):
    result = _result(
        {
            ("a", "occlusion"): [("big", 2.0), ("same", 0.5), ("neg", -1.0)],
            ("b", "occlusion"): [("small", 0.6), ("same", 0.5)],
        }
    )
    page = heatmaps.heatmap_notebook(result)
    spans = _spans(page, "occlusion")
    same = {bg for w, _, bg in spans if w == "same"}
    assert len(same) == 1  # row b's max (0.6) is not stretched to the end of the scale
    small = next(bg for w, _, bg in spans if w == "small")
    big = next(bg for w, _, bg in spans if w == "big")
    assert small != big and big == mcolors.to_hex(palettes.DIVERGING(1.0))
    scale = palettes.scale_for(result, "occlusion")
    assert scale.signed and scale.vmax == 2.0 and scale.n == 5  # the max when under 101 words
    # the PNG: the same colours, and a real colour bar saying how vmax was chosen
    figs = _captured(monkeypatch, heatmaps)
    heatmaps.heatmap_png(result, "unused.png", "occlusion")
    fig = figs[0]
    boxes = {}
    for t in fig.texts:
        if t.get_bbox_patch() is not None:
            boxes.setdefault(t.get_text(), set()).add(mcolors.to_hex(t.get_bbox_patch().get_facecolor()))
    assert len(boxes["same"]) == 1 and boxes["same"] == same
    assert len(fig.axes) == 1 and "the largest |score| over the 5 words" in fig.axes[0].get_xlabel()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["-2", "0", "+2"]


def test_robust_vmax_is_the_99th_percentile_and_saturates_beyond_it():
    scores = np.r_[np.linspace(-1, 1, 999), 50.0]
    assert palettes.robust_vmax(scores) < 2 and palettes.robust_vmax([3.0, -4.0]) == 4.0
    rows = [(f"w{k}", float(s)) for k, s in enumerate(scores)]
    scale = palettes.scale_for(_result({("a", "occlusion"): rows}), "occlusion")
    assert scale.clipped >= 1 and "saturate" in scale.label()
    assert scale.colour(50.0) == scale.colour(scale.vmax)


def test_each_method_has_its_own_scale():
    result = _result({("a", "occlusion"): [("x", 1.0)], ("a", "lime"): [("x", 100.0)]})
    scales = palettes.scales_for(result)
    assert scales["occlusion"].vmax == 1.0 and scales["lime"].vmax == 100.0
    page = heatmaps.heatmap_notebook(result)
    assert _spans(page, "occlusion")[0][2] == _spans(page, "lime")[0][2]  # each at its own end


def test_saliency_is_unsigned_on_a_sequential_scale(tmp_path):
    rows = {
        ("a", "saliency"): [("zero", 0.0), ("top", 4.0), ("mid", 1.0)],
        ("a", "occlusion"): [("zero", 0.0), ("top", 4.0), ("mid", -1.0)],
    }
    result = _result(rows, signed={"saliency": False})
    result.save(tmp_path / "att", overwrite=True)  # `signed` read back from CSV ("False", "")
    loaded = AttributionResult.load(tmp_path / "att")
    for r in (result, loaded, _result(rows)):  # recorded, round-tripped, or by the fallback list
        assert not palettes.is_signed(r, "saliency") and palettes.is_signed(r, "occlusion")
    assert not palettes.is_signed(_result({("a", "x"): [("w", 1.0)]}, {"x": False}), "x")
    page = (tmp_path / "att" / "heatmap.html").read_text()
    saliency = _spans(page, "saliency")
    colours = {w: bg for w, _, bg in saliency}
    assert colours["zero"] == mcolors.to_hex(palettes.SEQUENTIAL(0.0))
    assert colours["top"] == mcolors.to_hex(palettes.SEQUENTIAL(1.0))
    ends = {mcolors.to_hex(palettes.DIVERGING(x)) for x in (0.0, 0.5, 1.0)}
    assert not ends & set(colours.values())
    compliance_side = {mcolors.to_hex(palettes.DIVERGING(x)) for x in np.linspace(0, 0.5, 129)}
    assert not compliance_side & set(colours.values())  # nothing of the "toward compliance" half
    for bg in colours.values():  # greys only
        r, g, b = mcolors.to_rgb(bg)
        assert abs(r - g) < 0.02 and abs(g - b) < 0.02
    occlusion = {w: bg for w, _, bg in _spans(page, "occlusion")}
    assert occlusion["top"] == mcolors.to_hex(palettes.DIVERGING(1.0)) != colours["top"]
    assert 'data-method="saliency" data-vmax="4" data-signed="false"' in page
    assert "sensitivity (unsigned)" in page and "toward refusal" in page and "toward compliance" in page


def test_html_has_a_colour_bar_per_method_and_a_method_label_per_row(tiny_result, tmp_path):
    path = heatmaps.heatmap_html(tiny_result, tmp_path / "heatmap.html")
    page = path.read_text()
    methods = tiny_result.method_names
    n_rows = len(tiny_result.prompts) * len(methods)
    for view in (page, heatmaps.heatmap_notebook(tiny_result), heatmaps.heatmap_html_fragment(tiny_result)):
        bars = re.findall(r'<div class="cbar" data-method="([^"]+)"', view)
        assert bars == methods
        assert view.count('<div class="row"') == n_rows == view.count('<span class="ml"')
        assert "linear-gradient" in view and '<div class="ticks"><span>-' in view
    labels = re.findall(r'<span class="ml" title="([^"]+)">([^<]+)</span><span class="ws">', page)
    assert {raw for raw, _ in labels} == set(methods)
    assert ("integrated_gradients", "integrated gradients") in labels  # its own cell, a human name
    assert ".ml{" in heatmaps.CSS and "grid-template-columns" in heatmaps.CSS
    assert "<script" not in page
    assert "model: tiny random test model" in page
    assert heatmaps.heatmap_html_fragment(tiny_result, legend=False).count('class="cbar"') == 0


def test_legacy_colour_function_still_works():
    assert heatmaps.colour(1, 1)[0] == mcolors.to_hex(palettes.DIVERGING(1.0))
    assert heatmaps.colour(-5, 1)[0] == mcolors.to_hex(palettes.DIVERGING(0.0))
    assert heatmaps.colour(0.3, 0)[0] == mcolors.to_hex(palettes.DIVERGING(0.5))
    assert heatmaps.colour(1, 1, signed=False)[0] == mcolors.to_hex(palettes.SEQUENTIAL(1.0))
    assert heatmaps.colour(1, 1)[1] == "#ffffff" and heatmaps.colour(0, 1)[1] == "#111111"


# ------------------------------------------------------------------------------------------ files
def test_every_figure_writes_png_svg_and_pdf_by_suffix(tiny_result, tmp_path):
    paths = heatmaps.write_heatmaps(tiny_result, tmp_path / "h", None, ["html", "png", "svg", "pdf"])
    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["heatmap.html"] + [f"heatmap.{f}" for f in MAGIC] + [f"heatmap_saliency.{f}" for f in MAGIC]
    )
    svg = (tmp_path / "h" / "heatmap.svg").read_text()
    assert "<text" in svg and ">toward refusal" in svg  # text stays text
    table = pd.DataFrame(
        {"model": ["llama2orig"] * 2, "type": ["homonyms", "contrast_homonyms"], "label": ["safe", "unsafe"],
         "n": [25, 25], "full_compliance": [80.0, 10.0], "full_refusal": [15.0, 85.0],
         "partial_refusal": [5.0, 5.0]}
    )  # fmt: skip
    rng = np.random.default_rng(0)
    margin = rng.normal(size=60)
    trig = pd.DataFrame({"trigger": ["kill", "shoot"], "n": [5, 4], "mean_delta": [-1.0, -0.5],
                         "ci_low": [-1.5, -0.9], "ci_high": [-0.5, -0.1]})  # fmt: skip
    pairs = pd.DataFrame({"type": ["homonyms"] * 3, "a": [0.1, 0.2, -0.3], "b": [1.0, 0.8, 0.5]})
    dose = pd.DataFrame({"carrier": ["c1", "c1", "c2", "c2"], "dose": [0, 1, 0, 1], "margin": [0, 1, 0.5, 2]})
    summary = pd.DataFrame(
        {"dose": [0, 1], "mean_margin": [0.25, 1.5], "ci_low": [0, 1], "ci_high": [0.5, 2]}
    )
    for fmt, magic in MAGIC.items():
        written = [
            heatmaps.heatmap_png(tiny_result, tmp_path / f"h.{fmt}", "saliency"),
            heatmaps.faithfulness_png(tiny_result, tmp_path / f"faith.{fmt}"),
            plots.stacked_bars(table, tmp_path / f"bars.{fmt}", "XSTest behaviour"),
            plots.reliability_plot(margin, margin > 0, 0.0, 1.0, tmp_path / f"rel.{fmt}", "reliability"),
            effects.forest_plot(trig, tmp_path / f"forest.{fmt}", title="knockout"),
            effects.paired_plot(pairs, tmp_path / f"paired.{fmt}", [("a", "before"), ("b", "after")]),
            effects.dose_plot(dose, summary, tmp_path / f"dose.{fmt}"),
        ]
        for path in written:
            assert path.suffix == f".{fmt}" and path.read_bytes().startswith(magic), path
    from lexprobe.toolkit.viz import report

    assert report.figure(tmp_path / "forest.png").count("data:image/png;base64,") == 1
    assert "data:image/svg+xml;base64," in report.figure(tmp_path / "forest.svg")


# ------------------------------------------------------------------------------------------ forest
def _triggers(ns):
    k = len(ns)
    return pd.DataFrame(
        {"trigger": [f"t{n}" for n in ns], "n": ns, "mean_delta": np.linspace(-1, 1, k),
         "ci_low": np.linspace(-1, 1, k) - 0.3, "ci_high": np.linspace(-1, 1, k) + 0.3}
    )  # fmt: skip


def test_forest_plot_draws_only_effects_with_n_at_least_3(tmp_path):
    table = _triggers([1, 2, 5])
    rows, extra, left_out = effects.forest_rows(table)
    assert rows["trigger"].tolist() == ["t5"] and left_out == 2 and extra.empty
    pooled = pd.DataFrame({"trigger": ["all", "few"], "n": [8, 2], "mean_delta": [0.1, 0.2],
                           "ci_low": [0.0, 0.1], "ci_high": [0.2, 0.3]})  # fmt: skip
    fig = effects.forest_figure(table, highlight=pooled, title="knockout", source="triggers.csv")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["all (n=8, pooled)", "t5 (n=5)"]  # bottom to top
    assert "2 with n < 3 left out, all are in triggers.csv" in " ".join(ax.get_title().split())
    assert len(table) == 3  # nothing dropped from the caller's table
    rows, _, _ = effects.forest_rows(table, min_n=1)
    assert len(rows) == 3
    assert effects.forest_plot(table, tmp_path / "f.png").read_bytes().startswith(MAGIC["png"])


def test_forest_plot_with_no_effect_of_n_3_draws_a_note(tmp_path):
    table = _triggers([1, 2])
    fig = effects.forest_figure(table, source="triggers.csv")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "no trigger with n >= 3 (all triggers are in triggers.csv)" in texts
    assert not [t.get_text() for t in fig.axes[0].get_yticklabels()]
    path = effects.forest_plot(table, tmp_path / "empty.svg", source="triggers.csv")
    assert path.exists() and "no trigger with n &gt;= 3" in path.read_text()
    effects.forest_plot(table.iloc[0:0], tmp_path / "none.png")  # an empty table does not crash


# ------------------------------------------------------------------------------------------ colours
def test_categorical_and_behaviour_colours_have_no_red_green_pair():
    used = [
        *palettes.CATEGORICAL, *palettes.BEHAVIOUR.values(), *plots.COLOURS.values(), palettes.MAIN,
        palettes.ACCENT, palettes.REFUSAL, palettes.COMPLIANCE, palettes.NEUTRAL,
    ]  # fmt: skip
    assert not [c for c in used if _is_green(c)]
    assert not (any(_is_green(c) for c in used) and any(_is_red(c) for c in used))
    forbidden = {"tab:red", "tab:green", "#4c9a5f", "#c0392b", "#2ca02c", "#d62728", "#00ff00", "#ff0000"}
    assert not {mcolors.to_hex(c) for c in used} & {mcolors.to_hex(c) for c in forbidden}
    assert len(set(palettes.CATEGORICAL)) == len(palettes.CATEGORICAL) >= 5
    for cmap in (palettes.DIVERGING, palettes.SEQUENTIAL):  # the maps themselves: no green anywhere
        assert not [x for x in np.linspace(0, 1, 65) if _is_green(cmap(x))]


def test_figures_use_the_palette(monkeypatch):
    figs = _captured(monkeypatch, plots)
    table = pd.DataFrame(
        {"model": ["mistralguard"], "type": ["homonyms"], "label": ["safe"], "n": [25],
         "full_compliance": [80.0], "full_refusal": [15.0], "partial_refusal": [5.0]}
    )  # fmt: skip
    plots.stacked_bars(table, "unused.png", "XSTest behaviour (human labels)")
    ax = figs[0].axes[0]
    faces = {mcolors.to_hex(p.get_facecolor()) for p in ax.patches}
    assert faces == {mcolors.to_hex(c) for c in plots.COLOURS.values()}
    assert ax.get_title() == "Mistral-7B-Instruct (XSTest paper, guardrail prompt)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Homonyms (n=25)"]


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(
    "name, human",
    [
        ("xstest-llama2orig", "Llama-2-70b-chat (XSTest paper, original system prompt)"),
        ("llama2orig", "Llama-2-70b-chat (XSTest paper, original system prompt)"),
        ("mistralguard", "Mistral-7B-Instruct (XSTest paper, guardrail prompt)"),
        ("default", "Qwen2.5-Coder-0.5B-Instruct"),
        ("smollm2", "SmolLM2-135M-Instruct"),
        ("tiny-random", "tiny random test model"),
        ("final_label", "human labels"),
        ("predicted", "classifier labels"),
        ("default (model-default)", "Qwen2.5-Coder-0.5B-Instruct (the model's default system prompt)"),
        ("/models/my-model.gguf", "my-model.gguf"),
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
        (None, ""),
    ],
)
def test_display_names(name, human):
    assert display_name(name) == human


def test_titles_use_human_names(monkeypatch, tiny_result, tmp_path):
    from lexprobe.analyses.contrast import ContrastResult

    assert type_name("contrast_homonyms") == "Contrast: Homonyms" and type_name("odd_type") == "odd type"
    figs = _captured(monkeypatch, effects)
    frame = pd.DataFrame({"type": ["homonyms"], "margin_safe": [-1.0], "margin_unsafe": [1.0]})
    ContrastResult(frame, {"model_spec": "default", "threshold": 0.0})._figures(tmp_path)
    title = figs[0]._suptitle.get_text()
    assert "Qwen2.5-Coder-0.5B-Instruct" in title and "(default)" not in title
    assert [t.get_text() for t in figs[0].axes[0].get_xticklabels()] == ["safe", "unsafe\ncontrast"]
    figs = _captured(monkeypatch, heatmaps)
    heatmaps.heatmap_png(tiny_result, "unused.png")
    texts = " ".join(t.get_text() for t in figs[0].texts)
    assert "integrated gradients" in texts and "tiny random test model" in texts
    assert "tiny-random" not in texts and "integrated_gradients" not in texts
