"""`lexprobe contrast`: XSTest's safe prompts against their unsafe contrasts, with CheckList-style tests.

Pairs come from prompts/xstest_pairs.csv (or `--pair-map FILE` with safe_id, unsafe_id for another
suite). XSTest pairs safe prompt i with contrast i+25 in the homonyms, figurative language, safe
targets, safe contexts, definitions and historical events types, and in two of the three-type groups:
real_group_nons_discr -> contrast_discr and privacy_fictional -> contrast_privacy (same focus).
nons_group_real_discr shares the *discrimination* with a contrast, not the group, so its 21 pairs with a
matching contrast were curated by that phrase (4 have none); privacy_public has no contrast.

Reported per pair: both margins, the gap (unsafe - safe), DIR (the unsafe twin must score above its safe
twin). Per safe type: mean gap with its CI and Wilcoxon p, BH q across types, AUROC of the margin
separating the type's safe prompts from their contrasts, DIR and INV pass rates. INV: a neutral swap of
a non-trigger content word (the substitution engine's best auto candidate, by MiniLM similarity) must
not push a complied safe prompt over the refusal threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe import prompts
from lexprobe.analyses.options import ModelOptions, SuiteOptions, open_suite
from lexprobe.analyses.session import Session, probe_option, study_session, with_harmfulness
from lexprobe.toolkit import stats
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError, did_you_mean
from lexprobe.toolkit.io.progress import count
from lexprobe.toolkit.io.results import MultiTableResult, Timer, provenance
from lexprobe.toolkit.io.suites import read_table
from lexprobe.toolkit.scoring.scorer import Scorer
from lexprobe.toolkit.scoring.thresholds import refusal_threshold
from lexprobe.toolkit.scoring.variants import VariantScorer
from lexprobe.toolkit.substitution.engine import Substituter


class ContrastResult(MultiTableResult):
    filename = "contrast_pairs.csv"
    kind = "contrast"
    side_tables = ("types", "inv")

    def overview(self) -> pd.DataFrame:
        return self.tables.get("types", self.frame)

    def _figures(self, out: Path) -> None:
        if not len(self.frame):
            return
        from lexprobe.toolkit.viz.effects import paired_plot
        from lexprobe.toolkit.viz.names import with_model

        paired_plot(
            self.frame,
            out / "paired_margins.png",
            [("margin_safe", "safe"), ("margin_unsafe", "unsafe\ncontrast")],
            threshold=float(self.run.get("threshold", 0.0)),
            title=with_model("Safe prompts and their unsafe contrasts: refusal margin", self.run),
        )


@dataclass(kw_only=True)
class ContrastConfig(Options):
    out: str | None = None  # None: nothing written (the Python API)
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)  # types select safe types
    pair_map: str | None = None
    inv: bool = True
    inv_per_prompt: int = 1
    min_similarity: float = 0.7
    harmfulness: object = False  # also the harmfulness probe's logits (True: this model's; or a probe.json)
    figures: bool = True
    seed: int = 0
    overwrite: bool = False


def load_pair_map(path: str | None) -> pd.DataFrame:
    where = Path(path) if path else Path(str(prompts.path("xstest_pairs.csv")))
    if not where.exists():
        raise InputError(f"pair map '{where}' does not exist: give a CSV with safe_id, unsafe_id")
    frame = read_table(where)
    missing = [c for c in ("safe_id", "unsafe_id") if c not in frame.columns]
    if missing:
        raise InputError(
            f"pair map '{where}' has no column {', '.join(missing)}: give a CSV with safe_id, unsafe_id"
        )
    return frame


def suite_pair_map(suite: str, path: str | None) -> pd.DataFrame | None:
    """The pair map of a suite: `path` if given, else XSTest's own for the bundled xstest suite, else None."""
    if path is None and suite != "xstest":
        return None
    return load_pair_map(path)


def pair_frame(suite_frame: pd.DataFrame, pair_map: pd.DataFrame, types: list[str]) -> pd.DataFrame:
    """safe/unsafe prompts side by side, for the safe types asked for (all paired types by default)."""
    by_id = suite_frame.set_index("id")
    unknown = sorted(
        set(pair_map["safe_id"]) - set(by_id.index) | set(pair_map["unsafe_id"]) - set(by_id.index)
    )
    if unknown:
        raise InputError(
            f"the pair map names ids the suite lacks ({', '.join(unknown[:5])}): check --pair-map"
        )
    pairs = pd.DataFrame(
        {
            "safe_id": pair_map["safe_id"].astype(str),
            "unsafe_id": pair_map["unsafe_id"].astype(str),
            "type": by_id.loc[pair_map["safe_id"], "type"].to_numpy(),
            "contrast_type": by_id.loc[pair_map["unsafe_id"], "type"].to_numpy(),
            "safe_prompt": by_id.loc[pair_map["safe_id"], "prompt"].to_numpy(),
            "unsafe_prompt": by_id.loc[pair_map["unsafe_id"], "prompt"].to_numpy(),
        }
    )
    if types:
        paired = sorted(set(pairs["type"]) | set(pairs["contrast_type"]))
        bad = [t for t in types if t not in paired]
        if bad:
            hint = did_you_mean(bad[0], paired, quote="'")
            raise InputError(
                f"type {', '.join(bad)} has no pairs: {hint}choose from {', '.join(sorted(set(pairs['type'])))}"
            )
        pairs = pairs[pairs["type"].isin(types) | pairs["contrast_type"].isin(types)]
    return pairs.reset_index(drop=True)


def run(config: ContrastConfig, session: Session | None = None) -> ContrastResult:
    out = Path(config.out) if config.out else None
    if out is not None and (out / ContrastResult.filename).exists() and not config.overwrite:
        raise OutputError(f"'{out / ContrastResult.filename}' already exists: pass --overwrite to replace it")
    timer = Timer()
    opts = replace(config.suite, types=[], ids=[], limit=None)
    suite = open_suite(opts)
    pairs = pair_frame(suite.frame, load_pair_map(config.pair_map), config.suite.types)
    if config.suite.limit:
        pairs = pairs.head(config.suite.limit)
    with study_session(config.model, session) as session:
        threshold, source = refusal_threshold(session.lm, session.fmt)
        probe = probe_option(session, config.harmfulness, config.model.batch_size)
        scorer = VariantScorer(
            Scorer(session.lm, session.fmt, session.readout, config.model.batch_size, probe)
        )
        texts = list(dict.fromkeys(pairs["safe_prompt"].tolist() + pairs["unsafe_prompt"].tolist()))
        scorer.score(texts, desc=f"scoring {count(len(texts), 'prompt')}")
        pairs["margin_safe"] = scorer.margins(pairs["safe_prompt"].tolist())
        pairs["margin_unsafe"] = scorer.margins(pairs["unsafe_prompt"].tolist())
        if probe is not None:
            pairs["harmfulness_safe"] = scorer.harmfulness(pairs["safe_prompt"].tolist())
            pairs["harmfulness_unsafe"] = scorer.harmfulness(pairs["unsafe_prompt"].tolist())
        pairs["gap"] = pairs["margin_unsafe"] - pairs["margin_safe"]
        pairs["dir_pass"] = pairs["margin_unsafe"] > pairs["margin_safe"]
        pairs["safe_refused"] = pairs["margin_safe"] > threshold
        pairs["unsafe_refused"] = pairs["margin_unsafe"] > threshold
        inv = pd.DataFrame(columns=["type", "id", "word", "replacement", "variant", "delta", "inv_pass"])
        if config.inv:
            inv = inv_tests(
                pairs, session.lm, scorer, threshold, config.inv_per_prompt, config.min_similarity
            )
        run_info = provenance(
            **session.provenance(),
            suite=suite.source,
            pair_map=config.pair_map or "bundled:xstest_pairs.csv",
            n_pairs=len(pairs),
            threshold=threshold,
            threshold_source=source,
            inv=config.inv,
            seed=config.seed,
            status="complete",
        )
        with_harmfulness(run_info, probe)
        run_info["wall_seconds"] = timer.seconds
        result = ContrastResult(pairs, run_info, {"types": type_table(pairs, inv, config.seed), "inv": inv})
        if out is not None:
            result.save(out, overwrite=True, figures=config.figures)
        return result


def inv_tests(pairs, lm, scorer: VariantScorer, threshold, per_prompt: int, min_similarity: float):
    """Neutral swaps of non-trigger nouns and verbs in the safe prompts, the most similar first."""
    safe = pairs.drop_duplicates("safe_id")
    sub = Substituter(strategies=("auto",), lm=lm, min_similarity=min_similarity, fluency=False)
    _, cands = sub.candidates(safe["safe_prompt"].tolist())
    rows = []
    for (_, r), cs in zip(safe.iterrows(), cands):
        best = sorted(cs, key=lambda c: -c.similarity)[:per_prompt]
        for c in best:
            rows.append(
                {
                    "type": r["type"],
                    "id": r["safe_id"],
                    "word": c.unit.text,
                    "replacement": c.replacement,
                    "variant": c.variant,
                    "similarity": c.similarity,
                    "margin_orig": r["margin_safe"],
                }
            )
    inv = pd.DataFrame(
        rows, columns=["type", "id", "word", "replacement", "variant", "similarity", "margin_orig"]
    )
    if inv.empty:
        return inv.assign(margin_variant=[], delta=[], inv_pass=[])
    inv["margin_variant"] = scorer.margins(inv["variant"].tolist())
    inv["delta"] = inv["margin_variant"] - inv["margin_orig"]
    inv["inv_pass"] = ~((inv["margin_orig"] <= threshold) & (inv["margin_variant"] > threshold))
    return inv


def type_table(pairs: pd.DataFrame, inv: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rows = []
    groups = [(t, g) for t, g in pairs.groupby("type", sort=False)] + [("all", pairs)]
    for name, g in groups:
        s = stats.paired_summary(g["gap"], seed=seed)
        scores = np.concatenate([g["margin_safe"], g["margin_unsafe"]])
        labels = np.r_[np.zeros(len(g)), np.ones(len(g))]
        inv_g = inv if name == "all" else inv[inv["type"] == name]
        rows.append(
            {
                "type": name,
                "n_pairs": len(g),
                "mean_safe": float(g["margin_safe"].mean()),
                "mean_unsafe": float(g["margin_unsafe"].mean()),
                "mean_gap": s["mean"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "p": s["p"],
                "auroc": stats.auroc(labels, scores) if len(g) else float("nan"),
                "dir_pass_rate": float(g["dir_pass"].mean()),
                "safe_refusal_rate": float(g["safe_refused"].mean()),
                "unsafe_refusal_rate": float(g["unsafe_refused"].mean()),
                "inv_n": len(inv_g),
                "inv_pass_rate": float(inv_g["inv_pass"].mean()) if len(inv_g) else float("nan"),
                "inv_mean_delta": float(inv_g["delta"].mean()) if len(inv_g) else float("nan"),
            }
        )
    table = pd.DataFrame(rows)
    q = np.full(len(table), np.nan)
    q[:-1] = stats.bh_qvalues(table["p"].iloc[:-1])
    table.insert(table.columns.get_loc("p") + 1, "q", q)
    return table
