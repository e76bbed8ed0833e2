"""`lexprobe diagnose`: why a prompt type gets refused, in one self-contained report.

Composes the other analyses, each an ordinary resumable run in a subdirectory of --out:

1. `scores/`: `lexprobe score` on the selected prompts and, where the suite has a pair map (XSTest's
   prompts/xstest_pairs.csv, or `--pair-map`), their paired unsafe contrasts: refusal share, mean
   margin, and the safe-vs-contrast gap (`analyses.contrast.type_table`).
2. `attribution/`: `lexprobe attribute` (cheap methods by default): which word of each refused prompt
   gets the top score, counted by lemma across prompts.
3. `perturb/`: `lexprobe perturb`: trigger words swapped for neutral ones beside matched control words.
4. `pathway/`: `lexprobe pathway` on the largest trigger swaps of the safe prompts: which (layer,
   token) sites carry the margin change, and the projection on the refusal direction by layer.
5. `mitigate/`: `lexprobe mitigate` on the selected prompts and their contrasts: what each fix does to
   their refusal rates.

Then `report.html` (one file: figures as data URIs, inline CSS), `summary.json` and the report's
tables as CSVs. A prompt counts as refused when its decision margin is > 0 (greedy decoding opens with
a refusal); perturb's `flipped` uses the model's refusal threshold (`toolkit.thresholds`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.analyses import attribute, contrast, minimal_pairs, mitigate, pathway, score
from lexprobe.analyses.diagnose_facts import (
    attribution_tables,
    margin_tables,
    mechanism_facts,
    mitigation_facts,
    perturb_tables,
)
from lexprobe.analyses.diagnose_report import pair_figure, verdict
from lexprobe.analyses.options import ModelOptions, SuiteOptions, open_suite
from lexprobe.analyses.session import Session, study_session
from lexprobe.toolkit.attribution import AttributionSettings
from lexprobe.toolkit.attribution.core import needs_float32
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, LexprobeError, OutputError
from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.io.locks import user_files
from lexprobe.toolkit.io.results import (
    Result,
    Timer,
    draw_figures,
    read_csv_table,
    read_json_file,
    read_run,
    write_csv_atomic,
    write_run,
)
from lexprobe.toolkit.io.suites import Suite

TABLES = (
    "margins_by_type",
    "cells",
    "contrast_pairs",
    "contrast_by_type",
    "top_words",
    "faithfulness_by_type",
    "triggers",
    "pooled",
    "word_swaps",
    "attribution_agreement",
    "mechanism",
    "tradeoff",
)


@dataclass(kw_only=True)
class DiagnoseConfig(Options):
    out: str | None = None  # None: everything in memory (the Python API); `result.save(dir)` writes it
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)
    pair_map: str | None = None  # safe_id, unsafe_id (default: XSTest's, for the bundled xstest suite)
    attribution: bool = True
    methods: list[str] = field(default_factory=lambda: ["saliency", "occlusion"])
    settings: AttributionSettings = field(default_factory=AttributionSettings)
    faithfulness: bool = True
    n_random: int = 3
    attribute_contrasts: bool = False  # also attribute the paired unsafe contrasts
    perturb: bool = True
    strategies: list[str] = field(default_factory=lambda: ["lexicon", "auto"])
    rewrites: list[str] = field(default_factory=list)
    lexicon: str | None = None
    min_similarity: float = 0.7
    per_word: int = 1
    content_words: int | None = None
    harmfulness: object = True  # what the model represents: the probe's four cells (True: this model's probe)
    mechanism: bool = True  # patch the top trigger swaps and try the mitigations (needs perturb)
    mechanism_pairs: int = 2  # trigger swaps patched
    top: int = 15  # rows of the longer report tables
    seed: int = 0
    resume: bool = False
    overwrite: bool = False


STEPS = {
    "scores": "scores",
    "attributions": "attribution",
    "perturbed": "perturb",
    "pathway": "pathway",
    "mitigated": "mitigate",
}  # attribute -> subdirectory
# what the scoring step's run.json says of that step alone, left out of the diagnosis's own
SCORING_ONLY = ("settings", "details", "n_prompts_this_run", "rows_written", "earlier_runs", "sharding")


class DiagnoseResult(Result):
    """The verdict and the numbers behind it (`summary`, saved as summary.json), the report's tables,
    and the three steps' own results (`scores`, `attributions`, `perturbed`; the last two None when
    skipped). `save(dir)` writes the tables, each step into its subdirectory, the figures and
    report.html; in a notebook the result shows as that report."""

    filename = "summary.json"
    kind = "diagnose"

    def __init__(
        self,
        summary: dict,
        tables: dict[str, pd.DataFrame],
        scores=None,
        attributions=None,
        perturbed=None,
        pathway=None,
        mitigated=None,
    ):
        self.summary, self.tables = summary, tables
        self.scores, self.attributions, self.perturbed = scores, attributions, perturbed
        self.pathway, self.mitigated = pathway, mitigated

    @property
    def run(self) -> dict:
        """The diagnosis's run.json: the model, condition, machine and versions as its scoring step
        recorded them, with the diagnosis's own settings, steps and wall time."""
        if self.scores is None:
            return {}
        shared = {k: v for k, v in self.scores.run.items() if k not in SCORING_ONLY}
        provenance = self.summary.get("provenance") or {}
        return shared | {
            "settings": provenance.get("config"),
            "steps": self.summary.get("steps"),
            "wall_seconds": self.summary.get("wall_seconds"),
            "n_selected": (self.summary.get("margins") or {}).get("n"),  # n_prompts adds their contrasts
        }

    @property
    def verdict(self) -> list[str]:
        return list(self.summary["verdict"])

    def to_frame(self) -> pd.DataFrame:
        return self.tables["margins_by_type"].copy()

    def show(self, console=None, rows: int = 30) -> None:
        from rich.console import Console

        console = console or Console()
        for line in self.verdict:
            console.print(line, markup=False, highlight=False)
        super().show(console, rows)

    def save(self, out_dir: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        out = super().save(out_dir, overwrite, figures=False)
        for attr, sub in STEPS.items():
            step = getattr(self, attr)
            if step is not None:
                step.save(out / sub, overwrite=True, figures=figures)
        if figures:
            draw_figures(self._figures, out)
        return out

    def _write(self, out: Path) -> None:
        for name, frame in self.tables.items():
            write_csv_atomic(frame, out / f"{name}.csv")
        for name in set(TABLES) - set(self.tables):  # a step skipped this time leaves no stale table
            (out / f"{name}.csv").unlink(missing_ok=True)
        write_text_atomic(out / "summary.json", json.dumps(_jsonable(self.summary), indent=1))
        write_run(out, self.run, self.kind)

    def _figures(self, out: Path) -> None:
        """contrast_margins.png and report.html (the steps' figures it embeds are in their subdirectories)."""
        from lexprobe.analyses.diagnose_report import write_report

        figures = {}
        if "contrast_pairs" in self.tables and len(self.tables["contrast_pairs"]):
            figures["contrast_margins"] = pair_figure(
                self.tables["contrast_pairs"], out / "contrast_margins.png"
            )
        if self.attributions is not None:
            figures["heatmap"] = out / "attribution" / "heatmap.png"
        if self.perturbed is not None:
            figures["forest"] = out / "perturb" / "forest.png"
            figures["paired_margins"] = out / "perturb" / "paired_margins.png"
        if self.pathway is not None:
            figures["projections"] = out / "pathway" / "projections.png"
            for pair in self.pathway.frame["pair"]:
                figures[f"patching_{pair}"] = out / "pathway" / f"patching_{pair}.png"
        if self.mitigated is not None:
            figures["tradeoff"] = out / "mitigate" / "tradeoff.png"
        if self.scores is not None and "harmfulness" in self.scores.frame:
            from lexprobe.toolkit.viz.harmfulness import cells_figure

            figures["cells"] = cells_figure(
                self.scores.frame,
                out / "cells.png",
                "What the model represents (harmfulness) against what it does (margin)",
            )
        figures = {k: v for k, v in figures.items() if v and Path(v).exists()}
        write_report(self, self.attributions, figures, out / "report.html")

    @classmethod
    def _read(cls, out: Path):
        from lexprobe.analyses.minimal_pairs import PerturbResult
        from lexprobe.analyses.mitigate import MitigateResult
        from lexprobe.analyses.pathway import PathwayResult
        from lexprobe.analyses.score import ScoreResult
        from lexprobe.toolkit.attribution.result import AttributionResult

        summary = read_json_file(out / "summary.json")
        tables = {
            name: read_csv_table(out / f"{name}.csv") for name in TABLES if (out / f"{name}.csv").exists()
        }
        steps = {}
        kinds = (ScoreResult, AttributionResult, PerturbResult, PathwayResult, MitigateResult)
        for (attr, sub), kind in zip(STEPS.items(), kinds):
            steps[attr] = kind.load(out / sub) if (out / sub / kind.filename).exists() else None
        return cls(summary, tables, **steps)

    def _repr_html_(self) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp, overwrite=True)
            return (Path(tmp) / "report.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------ the run
def run(config: DiagnoseConfig, session: Session | None = None, suite: Suite | None = None) -> DiagnoseResult:
    out = Path(config.out) if config.out else None
    methods = attribute.parse_methods(config.methods) if config.attribution else []
    # one dtype for every table of the report: float32 under --dtype auto where a method needs it
    model = replace(config.model, gradients=needs_float32(methods))
    suite = suite or open_suite(config.suite)  # bad --type/--ids fail here, before any model load
    full = suite.full  # pairs may reach prompts outside the selection
    if not len(suite):
        raise InputError(f"suite '{suite.name}' selects no prompts: check --type/--ids/--limit")
    if out is not None:
        _check_out(out, config)
    pairs = _pairs(config, suite.spec, full, suite.frame)
    with study_session(model, session, reads_direction=True) as session:
        timer = Timer()
        ids = list(suite.frame["id"])
        extra = [i for i in dict.fromkeys([*pairs["safe_id"], *pairs["unsafe_id"]]) if i not in set(ids)]
        sub = {"resume": config.resume, "overwrite": config.overwrite}
        selection = Suite(
            suite.name,
            full.frame.set_index("id", drop=False).loc[ids + extra].reset_index(drop=True),
            suite.source,
        )

        harm = config.harmfulness if config.harmfulness is not None else False
        scored = score.run(
            score.ScoreConfig(out=_sub(out, "scores"), model=model, harmfulness=harm, **sub),
            session,
            selection,
        )
        tables, facts = margin_tables(scored.frame, ids, pairs, config.seed)
        facts["cells"] = facts["separation"] = None
        if "harmfulness" in scored.frame:
            from lexprobe.analyses.cells import cell_facts, cell_table

            scores_all = scored.frame.assign(margin=pd.to_numeric(scored.frame["margin"]))
            tables["cells"] = cell_table(scores_all, config.seed)
            facts["cells"] = cell_facts(scores_all, config.seed)
            facts["separation"] = scored.separation() or None

        attributions, facts["attribution"], facts["perturb"] = None, None, None
        if config.attribution:
            attributions = attribute.run(
                attribute.AttributeConfig(
                    out=_sub(out, "attribution"),
                    model=model,
                    methods=methods,
                    settings=config.settings,
                    faithfulness=config.faithfulness,
                    n_random=config.n_random,
                    contrasts=config.attribute_contrasts,
                    pair_map=config.pair_map,
                    **sub,
                ),
                session,
                suite,
            )
            t, f = attribution_tables(attributions, config, ids)
            tables |= t
            facts["attribution"] = f

        perturbed = None
        if config.perturb:
            perturbed = minimal_pairs.run(
                minimal_pairs.PerturbConfig(
                    out=_sub(out, "perturb"),
                    model=model,
                    strategies=config.strategies,
                    rewrites=config.rewrites,
                    lexicon=config.lexicon,
                    min_similarity=config.min_similarity,
                    per_word=config.per_word,
                    attributions=attributions.to_frame() if attributions is not None else None,
                    content_words=config.content_words,
                    seed=config.seed,
                    **sub,
                ),
                session,
                suite,
            )
            t, f = perturb_tables(perturbed, config)
            tables |= t
            facts["perturb"] = f

        traced = mitigated = None
        facts["mechanism"] = facts["mitigation"] = facts["mechanism_skipped"] = None
        if config.mechanism and perturbed is not None:
            swaps = perturbed.frame[
                (perturbed.frame["role"] == "trigger") & (perturbed.frame["label"] == "safe")
            ]
            skipped = []
            try:  # no refusal direction (a model that refuses too little), no swap of one token for one
                if not len(swaps):
                    raise InputError("no trigger word was swapped in a safe prompt")
                traced = pathway.run(
                    pathway.PathwayConfig(
                        out=_sub(out, "pathway"),
                        model=model,
                        substitutions=swaps,
                        top=config.mechanism_pairs,
                        overwrite=True,
                        reuse=config.resume,
                    ),
                    session,
                )
                tables["mechanism"] = traced.frame
                facts["mechanism"] = mechanism_facts(traced)
            except InputError as err:
                skipped.append(f"patching: {err}")
            try:
                mitigated = mitigate.run(
                    mitigate.MitigateConfig(
                        out=_sub(out, "mitigate"),
                        model=model,
                        harmfulness=harm,
                        generate_per_type=0,
                        overwrite=True,
                        reuse=config.resume,
                    ),
                    session,
                    selection,
                )
                tables["tradeoff"] = mitigated.frame
                facts["mitigation"] = mitigation_facts(mitigated.frame)
            except InputError as err:
                skipped.append(f"mitigations: {err}")
            facts["mechanism_skipped"] = "; ".join(skipped) or None

        facts["verdict"] = verdict(facts)
        facts["provenance"] = _provenance(scored.run, config, suite)
        facts["wall_seconds"] = timer.seconds
        facts["steps"] = {
            "scores": "scores",
            "attribution": "attribution" if config.attribution else None,
            "perturb": "perturb" if config.perturb else None,
            "pathway": "pathway" if traced is not None else None,
            "mitigate": "mitigate" if mitigated is not None else None,
        }
        result = DiagnoseResult(
            facts,
            tables,
            scores=scored,
            attributions=attributions,
            perturbed=perturbed,
            pathway=traced,
            mitigated=mitigated,
        )
        if out is not None:  # the steps wrote their subdirectories as they ran
            result._write(out)
            draw_figures(result._figures, out)
        return result


def _sub(out: Path | None, name: str) -> str | None:
    return str(out / name) if out is not None else None


def _check_out(out: Path, config: DiagnoseConfig) -> None:
    if out.exists() and user_files(out) and not (config.resume or config.overwrite):
        raise OutputError(
            f"'{out}' already holds a diagnosis: pass --resume to reuse its finished steps "
            "or --overwrite to redo them"
        )
    if config.resume and not config.overwrite and (out / "run.json").is_file():
        try:  # a damaged run.json is left to the steps' own checks
            before = (read_run(out).get("settings") or {}).get("suite")
        except (LexprobeError, ValueError, OSError):
            before = None
        selection = ("types", "ids", "limit")  # the suite itself: its content is the scoring step's check
        now = json.loads(json.dumps({k: getattr(config.suite, k) for k in selection}, default=str))
        before = before if isinstance(before, dict) else {}
        changed = [k for k in selection if k in before and before[k] != now[k]]
        if changed:
            flag = {"types": "type"}  # the options' flags, where not the field's name
            what = "; ".join(
                f"--{flag.get(k, k).replace('_', '-')}: {before[k]!r} there, {now[k]!r} here" for k in changed
            )
            raise OutputError(
                f"cannot resume in '{out}': it diagnosed another selection of prompts ({what}); give the "
                "same selection, or use a new --out or --overwrite"
            )


def _pairs(config: DiagnoseConfig, name: str, full: Suite, selected: pd.DataFrame) -> pd.DataFrame:
    """Pair-map rows with a selected prompt on either side (empty for suites without a pair map)."""
    pair_map = contrast.suite_pair_map(name, config.pair_map)  # name: the suite's spec
    if pair_map is None:
        return pd.DataFrame(columns=["safe_id", "unsafe_id", "type", "contrast_type", "safe_prompt"])
    pairs = contrast.pair_frame(full.frame, pair_map, [])
    chosen = set(selected["id"])
    return pairs[pairs["safe_id"].isin(chosen) | pairs["unsafe_id"].isin(chosen)].reset_index(drop=True)


# ------------------------------------------------------------------------------------ provenance
def _provenance(run: dict, config: DiagnoseConfig, suite: Suite) -> dict:
    import datetime as dt

    system = run.get("system_prompt") or {}
    return {
        "model": run.get("model_spec"),
        "model_source": run.get("model_source"),
        "weights_sha256": run.get("weights_sha256"),
        "dtype": run.get("dtype"),
        "system_prompt": system.get("name") if isinstance(system, dict) else system,
        "system_prompt_text": system.get("text") if isinstance(system, dict) else None,
        "suite": run.get("suite"),
        "lexprobe_version": (run.get("versions") or {}).get("lexprobe"),
        "git_commit": run.get("lexprobe_git_commit"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(run.get("command") or []),
        "config": _config(config, suite),
    }


def _config(config: DiagnoseConfig, suite: Suite) -> dict:
    """The config as JSON: a readout object by its description, the suite by what was selected."""
    out = asdict(replace(config, model=replace(config.model, readout=_readout_name(config.model.readout))))
    out["suite"] = {**out["suite"], "suite": suite.name if config.out is None else out["suite"]["suite"]}
    return out


def _readout_name(readout):
    return readout if readout is None or isinstance(readout, str | Path) else "a RefusalReadout object"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
