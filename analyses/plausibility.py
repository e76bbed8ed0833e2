"""`lexprobe plausibility`: does a method's top word land on the word that makes a safe prompt look
unsafe? On the safe prompts of a suite with a `focus` column (XSTest) that the model refuses (margin > 0
under the chosen system prompt), the share of prompts whose top-scored word matches the focus word by
lemma, per method, next to the share a uniformly random word of the same prompt would get (and, as a
trivial heuristic to beat, the share where the prompt's longest word is the focus word).

The methods never see `focus`: it is read only here, after attribution. Steps, each resumable in --out:
`scores/` (the margins of the candidates), `attributions/` (an ordinary `lexprobe attribute` output on
the refused ones), then `plausibility.csv` (per method), `plausibility_by_type.csv` and `hits.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.analyses import attribute, score
from lexprobe.analyses.options import ModelOptions, SuiteOptions
from lexprobe.analyses.session import Session, study_session
from lexprobe.toolkit.attribution import AttributionSettings
from lexprobe.toolkit.attribution.core import needs_float32
from lexprobe.toolkit.attribution.words import content_lemmas, matches, segment
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.results import MultiTableResult
from lexprobe.toolkit.io.suites import load_suite


@dataclass(kw_only=True)
class PlausibilityConfig(Options):
    out: str | None = None  # None: nothing written (the Python API)
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: str = "xstest"
    methods: list[str] = field(default_factory=lambda: ["integrated_gradients"])
    settings: AttributionSettings = field(default_factory=AttributionSettings)
    per_type: int | None = None  # at most this many refused prompts per type (suite order)
    faithfulness: bool = False  # also measure faithfulness (costly: about 15 extra forward rows a method)


class PlausibilityResult(MultiTableResult):
    """frame: per method (n, hits, hit_rate, random_rate, longest_word_rate); tables: by type
    (type, method, n, hit_rate, random_rate) and hits (id, type, method, focus, top_word, hit, ...)."""

    filename = "plausibility.csv"
    kind = "plausibility"
    side_tables = ("plausibility_by_type", "hits")


def _candidates(config: PlausibilityConfig) -> pd.DataFrame:
    suite = load_suite(config.suite)
    frame = suite.frame
    if "focus" not in frame.columns:
        raise InputError(
            f"suite '{config.suite}' has no `focus` column: plausibility needs one (XSTest has it)"
        )
    return frame[(frame["label"] == "safe") & (frame["focus"].astype(str).str.strip() != "")]


def hit_table(result, focus: dict[str, str], group_phrases: bool = False) -> pd.DataFrame:
    """One row per (prompt, method): its top word, whether it matches the focus by lemma, and the chance
    that a uniformly random word of the prompt would (lemmas in context, from the same segmentation)."""
    prompts = result.prompts.set_index("id")
    words = {i: segment(str(prompts.loc[i, "prompt"]), group_phrases) for i in prompts.index}
    rows = []
    for top in result.top_words().itertuples():
        lemmas = content_lemmas(focus[top.id])
        ws = words[top.id]
        rows.append(
            {
                "id": top.id,
                "type": prompts.loc[top.id, "type"],
                "method": top.method,
                "focus": focus[top.id],
                "top_word": top.word,
                "top_score": top.score,
                "hit": matches(ws[int(top.word_index)], lemmas),
                "random_rate": float(np.mean([matches(w, lemmas) for w in ws])),
                "longest_hit": matches(max(ws, key=lambda w: len(w.text)), lemmas),
            }
        )
    return pd.DataFrame(rows)


def run(config: PlausibilityConfig, session: Session | None = None) -> PlausibilityResult:
    out = Path(config.out) if config.out else None
    methods = attribute.parse_methods(config.methods)
    cand = _candidates(config)
    model = replace(config.model, batch_size=config.settings.batch_size, gradients=needs_float32(methods))
    with study_session(model, session) as session:
        scored = score.run(
            score.ScoreConfig(
                out=_sub(out, "scores"),
                model=model,
                suite=SuiteOptions(suite=config.suite, ids=list(cand["id"])),
                resume=True,
            ),
            session=session,
        ).frame
        refused = cand[cand["id"].isin(scored.loc[scored["margin"] > 0, "id"])]
        if config.per_type:
            refused = refused.groupby("type", sort=False).head(config.per_type)
        if refused.empty:
            raise InputError("the model refuses none of the safe prompts with a focus word: nothing to check")
        result = attribute.run(
            attribute.AttributeConfig(
                out=_sub(out, "attributions"),
                model=model,
                suite=SuiteOptions(suite=config.suite, ids=list(refused["id"])),
                methods=methods,
                settings=config.settings,
                faithfulness=config.faithfulness,
                resume=True,
            ),
            session=session,
        )
        focus = dict(zip(cand["id"], cand["focus"].astype(str)))
        hits = hit_table(result, focus, config.settings.group_phrases)
        summary = (
            hits.groupby("method", sort=False)
            .agg(
                n=("hit", "size"),
                hits=("hit", "sum"),
                hit_rate=("hit", "mean"),
                random_rate=("random_rate", "mean"),
                longest_word_rate=("longest_hit", "mean"),
            )
            .reset_index()
            .sort_values("hit_rate", ascending=False)
        )
        by_type = (
            hits.groupby(["type", "method"], sort=False)
            .agg(n=("hit", "size"), hit_rate=("hit", "mean"), random_rate=("random_rate", "mean"))
            .reset_index()
        )
        run_info = {**result.run, "methods": methods, "suite": config.suite, "n_prompts": len(refused)}
        plausible = PlausibilityResult(summary, run_info, {"plausibility_by_type": by_type, "hits": hits})
        if out is not None:
            plausible.save(out, overwrite=True)
        return plausible


def _sub(out: Path | None, name: str) -> str | None:
    return str(out / name) if out is not None else None
