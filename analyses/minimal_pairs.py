"""Minimal pairs: `lexprobe perturb` (word knockout sweep with matched controls) and `lexprobe pairs`
(any CSV of prompt_a, prompt_b).

The sweep rewrites each unit of each prompt in turn (`toolkit.substitution`: trigger words from the
lexicon, other content words by the model's embedding neighbours), scores every variant in batches
(refusal margin and in-context fluency from one pass, `toolkit.variant_scoring`), and reports per
variant the margin change and whether it crosses the model's refusal threshold
(`toolkit.thresholds`). Tables over the sweep (`analyses.effects`): per word, matched controls, per
trigger with paired statistics, pooled contrasts, and, given `--attributions`, the agreement of each
attribution method with the substitution effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from lexprobe.analyses import effects
from lexprobe.analyses.options import ModelOptions, ParallelOptions, SuiteOptions
from lexprobe.analyses.runner import PerPrompt, run_per_prompt
from lexprobe.analyses.session import Session
from lexprobe.toolkit import stats
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.progress import count, progress
from lexprobe.toolkit.io.results import MultiTableResult
from lexprobe.toolkit.io.suites import Suite, read_table
from lexprobe.toolkit.scoring.scorer import Scorer
from lexprobe.toolkit.scoring.thresholds import refusal_threshold
from lexprobe.toolkit.scoring.variants import VariantScorer
from lexprobe.toolkit.substitution.engine import Substituter, parse_rewrites
from lexprobe.toolkit.substitution.lexicon import Lexicon

COLUMNS = [
    "id",
    "word",
    "replacement",
    "variant",
    "margin_orig",
    "margin_variant",
    "delta",
    "flipped",
    "type",
    "label",
    "word_index",
    "char_start",
    "char_end",
    "lemma",
    "pos",
    "role",
    "category",
    "strategy",
    "sense",
    "similarity",
    "fluency",
    "prompt",
]
PAIR_COLUMNS = ["prompt_a", "prompt_b", "margin_a", "margin_b", "delta", "flipped", "id"]
HARM_COLUMNS = ["harmfulness_orig", "harmfulness_variant", "harmfulness_delta"]
PAIR_HARM_COLUMNS = ["harmfulness_a", "harmfulness_b", "harmfulness_delta"]
CHUNK = 8  # prompts per unit of work (rows are written, and resumable, per chunk)


class PerturbResult(MultiTableResult):
    filename = "substitutions.csv"
    kind = "perturb"
    one_row_per_id = False  # a row per substitution
    numeric_columns = ("margin_orig", "margin_variant", "delta")
    side_tables = ("words", "controls", "triggers", "pooled", "attribution_agreement")

    def overview(self) -> pd.DataFrame:
        return self.tables.get("pooled", self.frame)

    def _figures(self, out: Path) -> None:
        figures(self, out, self.threshold)

    @property
    def threshold(self) -> float:
        """The model's refusal threshold the sweep's flips were counted at (run.json's details)."""
        return float((self.run.get("details") or {}).get("threshold", self.run.get("threshold", 0.0)))


class PairsResult(MultiTableResult):
    filename = "pairs.csv"
    kind = "pairs"
    numeric_columns = ("margin_a", "margin_b", "delta")
    side_tables = ("summary",)

    def overview(self) -> pd.DataFrame:
        summary = self.tables["summary"].iloc[0]
        return pd.DataFrame({"statistic": summary.index, "value": summary.to_numpy(dtype=float)})


@dataclass(kw_only=True)
class PerturbConfig(Options):
    out: str | None = None  # None: nothing written (the Python API)
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)
    strategies: list[str] = field(default_factory=lambda: ["lexicon", "auto"])
    rewrites: list[str] = field(default_factory=list)  # "kill=stop,end"
    lexicon: str | None = None  # a lexicon JSON instead of the bundled one
    min_similarity: float = 0.7
    per_word: int = 1
    attributions: str | pd.DataFrame | None = None  # attributions.csv of `lexprobe attribute`, or its table
    content_words: int | None = None  # at most this many non-trigger words per prompt (None: all)
    harmfulness: object = False  # also the harmfulness probe's logits (True: this model's; or a probe.json)
    figures: bool = True
    seed: int = 0
    parallel: ParallelOptions = field(default_factory=ParallelOptions)  # shard over Ray
    resume: bool = False
    overwrite: bool = False


def _engine(lm, fmt, readout, config: PerturbConfig, *, lexicon: Lexicon, rewrites: dict, probe=None):
    """The substitution engine of a sweep and the variant scorer it ranks candidates with (and the
    harmfulness `probe`'s logits, where one is given)."""
    scorer = VariantScorer(Scorer(lm, fmt, readout, config.model.batch_size, probe))
    sub = Substituter(
        lexicon,
        strategies=tuple(config.strategies),
        lm=lm,
        rewrites=rewrites,
        min_similarity=config.min_similarity,
        per_word=config.per_word,
        batch_size=config.model.batch_size,
        fluency=scorer.fluency,
        max_content_words=config.content_words,
    )
    return sub, scorer


def perturb_shard(
    worker, records: list[dict], config: PerturbConfig, lexicon, rewrites, threshold: float, probe
):
    """A chunk's substitution rows on a Ray worker (`toolkit.distributed.Worker`), and the texts it
    scored. The engine is built once per replica and its variant cache kept over the chunks."""
    sub, scorer = worker.memo(
        ("perturb", repr(config), repr(rewrites), probe.sha256() if probe is not None else None),
        lambda: _engine(
            worker.lm, worker.fmt, worker.readout, config, lexicon=lexicon, rewrites=rewrites, probe=probe
        ),
    )
    before = len(scorer.cache)
    rows = _sweep(pd.DataFrame(records), sub, scorer, threshold)
    return rows, len(scorer.cache) - before


def _sweep(chunk: pd.DataFrame, sub: Substituter, scorer: VariantScorer, threshold: float) -> list[dict]:
    texts = chunk["prompt"].tolist()
    _, cands = sub.candidates(texts)
    scorer.score(texts + [c.variant for cs in cands for c in cs])
    rows = []
    for (_, rec), text, cs in zip(chunk.iterrows(), texts, cands):
        m0 = float(scorer.margins([text])[0])
        for c in cs:
            m1 = float(scorer.margins([c.variant])[0])
            u = c.unit
            rows.append(
                {
                    "id": rec["id"],
                    "type": rec["type"],
                    "label": rec["label"],
                    "word": u.text,
                    "replacement": c.replacement,
                    "variant": c.variant,
                    "margin_orig": m0,
                    "margin_variant": m1,
                    "delta": m1 - m0,
                    "flipped": (m0 > threshold) != (m1 > threshold),
                    "word_index": u.index,
                    "char_start": u.start,
                    "char_end": u.end,
                    "lemma": u.key,
                    "pos": u.pos,
                    "role": "trigger" if u.trigger else "content",
                    "category": u.category,
                    "strategy": c.strategy,
                    "sense": c.sense,
                    "similarity": round(c.similarity, 4),
                    "fluency": round(c.fluency, 3),
                    "prompt": text,
                }
            )
            harm = scorer.harmfulness([text, c.variant])
            if harm is not None:
                rows[-1].update(
                    harmfulness_orig=harm[0], harmfulness_variant=harm[1], harmfulness_delta=harm[1] - harm[0]
                )
    return rows


class Sweep(PerPrompt):
    """`lexprobe perturb` as the runner drives it: `CHUNK` prompts at a time."""

    result_cls = PerturbResult
    columns = COLUMNS
    harmfulness_columns = HARM_COLUMNS
    shard_size = CHUNK

    def check(self, suite: Suite) -> None:
        config = self.config
        self.attributions = (
            _read_attributions(config.attributions) if config.attributions is not None else None
        )
        self.rewrites = parse_rewrites(config.rewrites)
        if "user" in config.strategies and not self.rewrites:
            raise InputError(
                "--strategy user substitutes only the words --rewrite names: give --rewrite WORD=NEW"
            )
        self.lexicon = Lexicon.load(config.lexicon)
        self.suite, self.scored = suite, 0

    def prepare(self) -> tuple[dict, dict]:
        s = self.session
        self.threshold, source = refusal_threshold(s.lm, s.fmt)
        self.sub, self.scorer = _engine(
            s.lm,
            s.fmt,
            s.readout,
            self.config,
            lexicon=self.lexicon,
            rewrites=self.rewrites,
            probe=self.probe,
        )
        settings = {
            "substitution": self.sub.describe() | {"rewrites": self.rewrites},
            "seed": self.config.seed,
        }
        return settings, {"threshold": self.threshold, "threshold_source": source}

    def local(self, records: list[dict], emit) -> None:
        chunks = [range(i, min(i + CHUNK, len(records))) for i in range(0, len(records), CHUNK)]
        for chunk in progress(chunks, desc=f"perturbing {count(len(records), 'prompt')}", unit="chunk"):
            before = len(self.scorer.cache)
            rows = _sweep(pd.DataFrame([records[i] for i in chunk]), self.sub, self.scorer, self.threshold)
            emit(list(chunk), (rows, len(self.scorer.cache) - before))

    remote = staticmethod(perturb_shard)

    def remote_args(self) -> tuple:
        shipped = replace(self.config, attributions=None, parallel=ParallelOptions())  # what a shard needs
        return shipped, self.lexicon, self.rewrites, self.threshold, self.probe

    def rows(self, records: list[dict], got) -> list[dict]:
        rows, scored = got
        self.scored += scored
        return rows

    def counts(self) -> dict:
        return {"n_texts_scored_this_run": self.scored}

    def finish(self, result: PerturbResult) -> PerturbResult:
        result.tables = analyse(result.frame, self.suite, self.sub, self.attributions, self.config.seed)
        if self.config.out:
            result.save(self.config.out, overwrite=True, figures=self.config.figures)
        return result


def run(config: PerturbConfig, session: Session | None = None, suite: Suite | None = None) -> PerturbResult:
    return run_per_prompt(Sweep(config), session, suite)


def analyse(frame: pd.DataFrame, suite: Suite, sub: Substituter, attributions=None, seed: int = 0) -> dict:
    """The side tables of a sweep: words, controls, triggers, pooled (+ attribution_agreement)."""
    frame = typed(frame)
    units = effects.unit_table(frame)
    controls = effects.pick_controls(units)
    tables = {
        "words": word_summary(units, suite, sub),
        "controls": controls,
        "triggers": effects.trigger_table(units, controls, seed),
        "pooled": effects.pooled_table(units, controls, seed),
    }
    if attributions is not None:
        tables["attribution_agreement"] = effects.attribution_agreement(attributions, frame)
    return tables


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """A substitutions table read back from CSV with its numbers and booleans restored."""
    numeric = ["margin_orig", "margin_variant", "delta", "similarity", "fluency", "char_start", "char_end"]
    out = frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce") for c in numeric if c in frame})
    return out.assign(flipped=frame["flipped"].astype(str).str.lower() == "true")


def word_summary(units: pd.DataFrame, suite: Suite, sub: Substituter) -> pd.DataFrame:
    """Every unit of every prompt, substituted or not (with the reason), and its mean margin change."""
    rows = []
    for _, rec in suite.frame.iterrows():
        for u in sub.units(rec["prompt"]):
            rows.append(
                {
                    "id": rec["id"],
                    "type": rec["type"],
                    "label": rec["label"],
                    "char_start": u.start,
                    "char_end": u.end,
                    "word_index": u.index,
                    "word": u.text,
                    "lemma": u.key,
                    "pos": u.pos,
                    "role": "trigger" if u.trigger else "content",
                    "category": u.category,
                    "note": _why_not(u, sub),
                }
            )
    words = pd.DataFrame(rows)
    if words.empty:
        return words
    keep = [*effects.UNIT_KEYS, "replacement", "n_variants", "margin_orig", "delta", "flip_share"]
    words = words.merge(units.reindex(columns=keep), on=effects.UNIT_KEYS, how="left")  # none: no swap
    words["n_variants"] = words["n_variants"].fillna(0).astype(int)
    words.loc[words["n_variants"] > 0, "note"] = ""
    return words


def _why_not(unit, sub: Substituter) -> str:
    if unit.trigger:
        entry = sub.lexicon.entries.get(unit.key)
        if entry is not None and not entry.substitutes(unit.pos):
            return "trigger without a neutral paraphrase in the lexicon"
        return "no substitute passed the meaning filter"
    if "auto" not in sub.strategies:
        return "no strategy for content words (add 'auto')"
    if sub.max_content_words is not None:
        return f"not among the {sub.max_content_words} content words rewritten per prompt, or no candidate"
    if len(unit.key) < 3 or (unit.text[:1].isupper() and unit.index > 0):
        return "a name, an acronym or a short word: not substituted automatically"
    from lemminflect import getAllLemmas

    if not getAllLemmas(unit.text.lower(), upos=unit.pos):
        return f"not a known {unit.pos.lower()} (a tagging error?): not substituted automatically"
    if unit.pos not in sub.context.auto_pos:
        return f"auto substitutes only {', '.join(sub.context.auto_pos)}"
    return "no neighbour passed the filters"


def figures(result: PerturbResult, out: Path, threshold: float) -> None:
    from lexprobe.toolkit.viz.effects import forest_plot, paired_plot
    from lexprobe.toolkit.viz.names import with_model

    triggers, pooled = result.tables["triggers"], result.tables["pooled"]
    for label in sorted(set(triggers["label"])) if len(triggers) else []:
        t = triggers[triggers["label"] == label]
        p = pooled[pooled["label"] == label].rename(columns={"contrast": "trigger", "mean": "mean_delta"})
        name = "forest.png" if label == sorted(set(triggers["label"]))[0] else f"forest_{label}.png"
        forest_plot(
            t,
            out / name,
            title=with_model(f"Trigger knockout on {label} prompts: margin change with 95% CI", result.run),
            highlight=p,
            min_n=3,
            source="triggers.csv",
        )
    units = effects.unit_table(typed(result.frame))
    if units.empty:
        return
    per_prompt = units.groupby("id", sort=False).agg(
        type=("type", "first"), original=("margin_orig", "first")
    )
    for role, col in (("trigger", "trigger_swapped"), ("content", "content_swapped")):
        per_prompt[col] = units[units["role"] == role].groupby("id")["margin_variant"].mean()
    paired_plot(
        per_prompt.reset_index(),
        out / "paired_margins.png",
        [
            ("original", "original"),
            ("trigger_swapped", "trigger\nswapped"),
            ("content_swapped", "content\nswapped"),
        ],
        threshold=threshold,
        title=with_model(
            "Refusal margin before and after substitution (mean over a prompt's swaps)", result.run
        ),
    )


def _read_attributions(source: str | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        p = Path(source)
        if not p.exists():
            raise InputError(f"attributions file '{source}' does not exist: run `lexprobe attribute` first")
        frame = read_table(p)
    for col in ("char_start", "char_end", "score"):
        if col in frame.columns:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    effects.attribution_agreement(frame, pd.DataFrame(columns=COLUMNS))  # validates the columns early
    return frame


# ------------------------------------------------------------------------------------ user pairs
@dataclass(kw_only=True)
class PairsConfig(Options):
    out: str | None = None  # None: nothing written (the Python API)
    pairs: str | pd.DataFrame  # a file, or a frame, with prompt_a and prompt_b
    model: ModelOptions = field(default_factory=ModelOptions)
    harmfulness: object = False  # also the harmfulness probe's logits (True: this model's; or a probe.json)
    resume: bool = False
    overwrite: bool = False
    seed: int = 0


def read_pairs(source: str | pd.DataFrame) -> pd.DataFrame:
    """A pairs file (CSV/TSV/JSONL/Parquet) or frame with columns prompt_a and prompt_b; an `id` column
    is kept (else row numbers), other columns ride along."""
    path = "the pairs frame" if isinstance(source, pd.DataFrame) else source
    if isinstance(source, pd.DataFrame):
        from lexprobe.toolkit.io.suites import SURROGATE

        frame = source.reset_index(drop=True)
        for column in [c for c in ("prompt_a", "prompt_b") if c in frame.columns]:
            for row, value in enumerate(frame[column]):
                if not isinstance(value, str) or SURROGATE.search(value):
                    why = (
                        "text with an unpaired surrogate"
                        if isinstance(value, str)
                        else f"{value!r}, not text"
                    )
                    raise InputError(f"{column} of row {row + 1} of {path} is {why}: fix it or drop the row")
        if "id" in frame.columns:
            frame = frame.assign(id=frame["id"].astype(str))
    else:
        p = Path(source)
        if not p.exists():
            raise InputError(f"pairs file '{source}' does not exist: check the path")
        frame = read_table(p)
    missing = [c for c in ("prompt_a", "prompt_b") if c not in frame.columns]
    if missing:
        raise InputError(
            f"pairs file '{path}' has no column {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))}): "
            "give a CSV with columns prompt_a, prompt_b"
        )
    if frame.empty:
        raise InputError(f"pairs file '{path}' has no rows: give at least one pair")
    empty = frame[(frame["prompt_a"].str.strip() == "") | (frame["prompt_b"].str.strip() == "")]
    if len(empty):
        raise InputError(f"pairs file '{path}' has an empty prompt in row {empty.index[0] + 1}: fill it in")
    if "id" not in frame.columns:
        frame.insert(0, "id", [str(i) for i in range(1, len(frame) + 1)])
    if frame["id"].duplicated().any():
        raise InputError(f"pairs file '{path}' repeats an id: ids must be unique")
    return frame.assign(id=frame["id"].astype(str), prompt=frame["prompt_a"], type="pairs", label="")


class Pairs(PerPrompt):
    """`lexprobe pairs` as the runner drives it: a row per pair, 32 pairs at a time."""

    result_cls = PairsResult
    harmfulness_columns = PAIR_HARM_COLUMNS
    noun = "pair"

    def select(self, suite: Suite | None) -> Suite:
        frame = read_pairs(self.config.pairs)
        self.extra = [c for c in frame.columns if c not in (*PAIR_COLUMNS, "prompt", "type", "label")]
        self.columns = PAIR_COLUMNS + self.extra
        where = (
            "a DataFrame"
            if isinstance(self.config.pairs, pd.DataFrame)
            else str(Path(self.config.pairs).resolve())
        )
        return Suite("pairs", frame, where)

    def prepare(self) -> tuple[dict, dict]:
        s = self.session
        self.threshold, source = refusal_threshold(s.lm, s.fmt)
        self.scorer = VariantScorer(Scorer(s.lm, s.fmt, s.readout, self.batch_size, self.probe))
        return {"seed": self.config.seed}, {"threshold": self.threshold, "threshold_source": source}

    def local(self, records: list[dict], emit) -> None:
        threshold, scorer = self.threshold, self.scorer
        chunks = [range(i, min(i + 32, len(records))) for i in range(0, len(records), 32)]
        for chunk in progress(chunks, desc=f"scoring {count(len(records), 'pair')}", unit="chunk"):
            recs = [records[i] for i in chunk]
            a, b = [r["prompt_a"] for r in recs], [r["prompt_b"] for r in recs]
            ma, mb = scorer.margins(a), scorer.margins(b)
            ha, hb = scorer.harmfulness(a), scorer.harmfulness(b)
            rows = [
                {
                    "id": r["id"],
                    "prompt_a": r["prompt_a"],
                    "prompt_b": r["prompt_b"],
                    "margin_a": float(x),
                    "margin_b": float(y),
                    "delta": float(y - x),
                    "flipped": (x > threshold) != (y > threshold),
                    **{c: r[c] for c in self.extra},
                }
                for r, x, y in zip(recs, ma, mb)
            ]
            if ha is not None:
                for row, x, y in zip(rows, ha, hb):
                    row.update(harmfulness_a=float(x), harmfulness_b=float(y), harmfulness_delta=float(y - x))
            emit(list(chunk), rows)

    def finish(self, result: PairsResult) -> PairsResult:
        f, threshold = result.frame, self.threshold
        s = stats.paired_summary(pd.to_numeric(f["delta"]), seed=self.config.seed)
        result.tables["summary"] = pd.DataFrame(
            [
                {
                    **s,
                    "flip_rate": float((f["flipped"].astype(str) == "True").mean()),
                    "refused_a": float((pd.to_numeric(f["margin_a"]) > threshold).mean()),
                    "refused_b": float((pd.to_numeric(f["margin_b"]) > threshold).mean()),
                    "threshold": threshold,
                }
            ]
        )
        if self.config.out:
            result.save(self.config.out, overwrite=True)
        return result


def run_pairs(config: PairsConfig, session: Session | None = None) -> PairsResult:
    return run_per_prompt(Pairs(config), session)
