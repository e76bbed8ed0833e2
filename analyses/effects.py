"""Tables over a substitution sweep: per-word summary, matched controls, per-trigger statistics, and the
agreement of word attributions with substitution effects. Pure pandas/scipy over result frames, so each
is testable on constructed tables.

Sign conventions: `delta` = margin_variant - margin_orig (negative = the rewrite lowered refusal);
a word's substitution *effect* = -mean(delta) = how much the word raised the margin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lexprobe.toolkit import stats
from lexprobe.toolkit.errors import InputError

UNIT_KEYS = ["id", "char_start", "char_end"]


def unit_table(subs: pd.DataFrame) -> pd.DataFrame:
    """One row per substituted unit (prompt word or phrase): its variants' mean delta and flip share."""
    if subs.empty:
        return pd.DataFrame(
            columns=[*UNIT_KEYS, "type", "label", "word", "lemma", "pos", "role", "n_variants", "delta"]
        )
    g = subs.groupby(UNIT_KEYS, sort=False)
    out = g.agg(
        type=("type", "first"),
        label=("label", "first"),
        word_index=("word_index", "first"),
        word=("word", "first"),
        lemma=("lemma", "first"),
        pos=("pos", "first"),
        role=("role", "first"),
        replacement=("replacement", "first"),
        similarity=("similarity", "max"),
        n_variants=("delta", "size"),
        margin_orig=("margin_orig", "first"),
        margin_variant=("margin_variant", "mean"),
        delta=("delta", "mean"),
        flip_share=("flipped", "mean"),
    )
    return out.reset_index()


def pick_controls(units: pd.DataFrame) -> pd.DataFrame:
    """For each trigger unit, a non-trigger content word of the same prompt, matched for part of speech
    where the prompt has one (else any content word, `pos_matched` False); among candidates the most
    meaning-preserving rewrite (highest MiniLM similarity), then the nearest word. One row per trigger."""
    rows = []
    for pid, group in units.groupby("id", sort=False):
        triggers = group[group["role"] == "trigger"]
        others = group[group["role"] != "trigger"]
        for _, t in triggers.iterrows():
            if others.empty:
                continue
            same = others[others["pos"] == t["pos"]]
            pool = same if len(same) else others
            dist = (pool["char_start"] - t["char_start"]).abs()
            c = pool.assign(_dist=dist).sort_values(["similarity", "_dist"], ascending=[False, True]).iloc[0]
            rows.append(
                {
                    "id": pid,
                    "type": t["type"],
                    "label": t["label"],
                    "trigger": t["lemma"],
                    "trigger_word": t["word"],
                    "trigger_replacement": t["replacement"],
                    "trigger_delta": t["delta"],
                    "control_word": c["word"],
                    "control_replacement": c["replacement"],
                    "control_pos": c["pos"],
                    "control_delta": c["delta"],
                    "pos_matched": bool(len(same)),
                    "difference": t["delta"] - c["delta"],
                }
            )
    cols = [
        "id",
        "type",
        "label",
        "trigger",
        "trigger_word",
        "trigger_replacement",
        "trigger_delta",
        "control_word",
        "control_replacement",
        "control_pos",
        "control_delta",
        "pos_matched",
        "difference",
    ]
    return pd.DataFrame(rows, columns=cols)


def trigger_table(units: pd.DataFrame, controls: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per trigger (and label): n units, mean change with its 95% bootstrap CI, Wilcoxon p against 0,
    Benjamini-Hochberg q across the table's triggers, effect sizes, flip rate, and the matched controls'
    mean change with the paired test of trigger against control."""
    trig = units[units["role"] == "trigger"]
    rows = []
    for (label, lemma), g in trig.groupby(["label", "lemma"], sort=True):
        s = stats.paired_summary(g["delta"], seed=seed)
        c = controls[(controls["label"] == label) & (controls["trigger"] == lemma)]
        vs = stats.wilcoxon(c["trigger_delta"], c["control_delta"])[1] if len(c) else float("nan")
        rows.append(
            {
                "label": label,
                "trigger": lemma,
                "n": s["n"],
                "mean_delta": s["mean"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "p": s["p"],
                "dz": s["dz"],
                "rank_biserial": s["rank_biserial"],
                "flip_rate": float((g["flip_share"] * g["n_variants"]).sum() / g["n_variants"].sum()),
                "n_control": len(c),
                "control_mean_delta": float(c["control_delta"].mean()) if len(c) else float("nan"),
                "p_vs_control": vs,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table.insert(table.columns.get_loc("p") + 1, "q", stats.bh_qvalues(table["p"]))
    return table.sort_values(["label", "mean_delta"]).reset_index(drop=True)


def pooled_table(units: pd.DataFrame, controls: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per label: all trigger units, all content-word (non-trigger) units, and trigger minus matched
    control, each with n, mean, CI, Wilcoxon p, effect sizes and flip rate (where it applies)."""
    rows = []
    for label in sorted(set(units["label"])):
        u = units[units["label"] == label]
        c = controls[controls["label"] == label]
        for name, values, flips in (
            ("triggers", u.loc[u["role"] == "trigger", "delta"], u.loc[u["role"] == "trigger", "flip_share"]),
            (
                "content words",
                u.loc[u["role"] != "trigger", "delta"],
                u.loc[u["role"] != "trigger", "flip_share"],
            ),
            ("trigger - matched control", c["difference"], None),
        ):
            s = stats.paired_summary(values, seed=seed)
            flip = float(flips.mean()) if flips is not None and len(flips) else float("nan")
            rows.append({"label": label, "contrast": name, **s, "flip_rate": flip})
    return pd.DataFrame(rows)


def attribution_agreement(attributions: pd.DataFrame, substitutions: pd.DataFrame) -> pd.DataFrame:
    """Per attribution method: Spearman correlation of a word's attribution score with its substitution
    effect (-mean delta), pooled over every substituted word of every prompt, and the mean of the
    per-prompt correlations (prompts with at least 3 words).

    `attributions` has the `lexprobe attribute` columns (id, char_start, char_end, score, method);
    a substituted unit's score is the sum over the attributed words overlapping its characters.
    """
    need = {"id", "char_start", "char_end", "score", "method"}
    missing = sorted(need - set(attributions.columns))
    if missing:
        raise InputError(
            f"attributions table lacks column {', '.join(missing)}: give the attributions.csv of `lexprobe attribute`"
        )
    units = unit_table(substitutions)
    attr = attributions.assign(id=attributions["id"].astype(str))
    units = units.assign(id=units["id"].astype(str), effect=-units["delta"])
    rows = []
    for method, a in attr.groupby("method", sort=True):
        by_id = {k: g for k, g in a.groupby("id")}
        scores = []
        for _, u in units.iterrows():
            g = by_id.get(u["id"])
            if g is None:
                scores.append(np.nan)
                continue
            overlap = g[(g["char_start"] < u["char_end"]) & (g["char_end"] > u["char_start"])]
            scores.append(float(overlap["score"].sum()) if len(overlap) else np.nan)
        joined = units.assign(score=scores).dropna(subset=["score", "effect"])
        rho, p = stats.spearman(joined["score"], joined["effect"])
        per_prompt = [
            stats.spearman(g["score"], g["effect"])[0] for _, g in joined.groupby("id") if len(g) >= 3
        ]
        per_prompt = [r for r in per_prompt if not np.isnan(r)]
        rows.append(
            {
                "method": method,
                "n_words": len(joined),
                "n_prompts": joined["id"].nunique(),
                "spearman_rho": rho,
                "p": p,
                "mean_prompt_rho": float(np.mean(per_prompt)) if per_prompt else float("nan"),
                "n_prompts_rho": len(per_prompt),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["method", "n_words", "n_prompts", "spearman_rho", "p", "mean_prompt_rho", "n_prompts_rho"],
    )
