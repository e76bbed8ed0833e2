"""`lexprobe attribute`: which of the user's words push a prompt toward refusal, by one or more methods,
with faithfulness on the margin (vs a random ranking), heatmaps (HTML, PNG) and figures.

Resumable: prompts are attributed `GROUP` at a time, side by side, and each finished group's prompts
are appended to `DIR/parts.jsonl`; `--resume` skips those ids. The tables, heatmaps and figures are
(re)written from all parts at the end.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lexprobe.analyses import contrast
from lexprobe.analyses.options import ModelOptions, ParallelOptions, SuiteOptions, open_suite
from lexprobe.analyses.runner import RUN_KEYS, PerPrompt, earlier_runs, run_per_prompt
from lexprobe.analyses.session import Session
from lexprobe.probes.harmfulness import HarmfulnessProbe
from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS, AttributionSettings, PromptTarget
from lexprobe.toolkit.attribution import faithfulness as faith
from lexprobe.toolkit.attribution.core import attribute_together, needs_float32, score_texts
from lexprobe.toolkit.attribution.result import ATTRIBUTION_COLUMNS, PROMPT_COLUMNS, AttributionResult
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.progress import count, progress
from lexprobe.toolkit.io.results import write_run
from lexprobe.toolkit.io.rows import append_whole, check_resumable
from lexprobe.toolkit.io.suites import Suite
from lexprobe.toolkit.models.devices import dtype_name
from lexprobe.toolkit.scoring.scorer import Scorer

log = logging.getLogger(__name__)

PARTS = "parts.jsonl"


@dataclass(kw_only=True)
class AttributeConfig(Options):
    out: str | None = None  # None: keep everything in memory (the Python API), write nothing
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions | None = None  # either a suite selection ...
    prompt: str | list[str] | None = None  # ... or one prompt, or a few (ids 1, 2, ...)
    methods: list[str] = field(default_factory=lambda: ["integrated_gradients"])
    settings: AttributionSettings = field(default_factory=AttributionSettings)
    faithfulness: bool = True
    n_random: int = 3  # random orders behind the random ranking's comprehensiveness/sufficiency/AUC
    contrasts: bool = False  # add the paired unsafe contrast of every selected safe prompt
    harmfulness: object = (
        False  # also each prompt's harmfulness logit (True: this model's probe; or a probe.json)
    )
    figures: bool = True
    resume: bool = False
    overwrite: bool = False
    pair_map: str | None = None  # safe_id, unsafe_id (default: XSTest's, for the bundled xstest suite)
    parallel: ParallelOptions = field(default_factory=ParallelOptions)  # shard over Ray


METHOD_ALIASES = {"ig": "integrated_gradients", "ixg": "input_x_gradient", "gradshap": "gradient_shap"}


def parse_methods(value: str | list[str]) -> list[str]:
    """'all', one name, or a comma list -> registered names (unknown ones raise with "did you mean");
    the aliases in `METHOD_ALIASES` (`ig`) stand for their method."""
    names = value if isinstance(value, list) else [v.strip() for v in value.split(",") if v.strip()]
    names = [METHOD_ALIASES.get(n.lower(), n) for n in names]
    if names == ["all"]:
        return sorted(ATTRIBUTION_METHODS.names(), key=lambda n: n != "integrated_gradients")
    if not names:
        raise InputError("--method is empty: name a method, a comma list, or 'all'")
    for name in names:
        ATTRIBUTION_METHODS.get(name)
    return list(dict.fromkeys(names))


def pair_lookup(suite: str, pair_map: str | None) -> dict[str, str]:
    """id -> paired id, both ways, from the suite's pair map (`analyses.contrast.suite_pair_map`)."""
    frame = contrast.suite_pair_map(suite, pair_map)
    if frame is None:
        return {}
    safe, unsafe = frame["safe_id"].astype(str), frame["unsafe_id"].astype(str)
    return dict(zip(safe, unsafe)) | dict(zip(unsafe, safe))


def _selection(config: AttributeConfig, suite: Suite | None) -> tuple[Suite, dict[str, str]]:
    if suite is None:
        if (config.prompt is None) == (config.suite is None):
            raise InputError("give either --prompt TEXT or --suite S, not both or neither")
        if config.prompt is not None:
            texts = [config.prompt] if isinstance(config.prompt, str) else list(config.prompt)
            if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
                raise InputError("--prompt is empty: give the text to attribute")
            ids = ["prompt"] if len(texts) == 1 else [str(i) for i in range(1, len(texts) + 1)]
            frame = pd.DataFrame({"id": ids, "prompt": texts, "type": "prompt", "label": ""})
            return Suite("prompt", frame, "command line"), {}
        suite = open_suite(config.suite)
    full, pairs = suite.full, pair_lookup(suite.spec, config.pair_map)
    if config.contrasts and pairs:
        chosen = list(suite.frame["id"])
        extra = [pairs[i] for i in chosen if i in pairs and pairs[i] not in chosen]
        frame = pd.concat([suite.frame, full.frame.set_index("id").loc[extra].reset_index()])
        suite = Suite(suite.name, frame.reset_index(drop=True), suite.source, full)
    return suite, pairs


GROUP = 8  # prompts attributed together: their perturbed texts share batches (parts are written per group)


def attribute_group(
    targets: list[PromptTarget], rows: list[dict], methods: list[str], config: AttributeConfig
) -> list[dict]:
    """All tables' rows for a few prompts, one part each. The faithfulness texts of every prompt are
    scored together (`score_texts`): first the random rankings' and the leave-one-out texts (which
    occlusion reuses), then each method's ranking's."""
    seed = config.settings.seed
    if config.faithfulness:
        score_texts([(t, faith.reference_texts(t, config.n_random, seed)) for t in targets])
    parts = [_start_part(t, row) for t, row in zip(targets, rows)]
    references = [None] * len(targets)
    if config.faithfulness:
        references = [faith.random_reference(t, config.n_random, seed) for t in targets]
        for part, row, ref in zip(parts, rows, references):
            part["curves"] += _curve_rows(row["id"], "random", ref["curve"])
    outputs = {m: _run_method(targets, rows, m, parts) for m in methods}
    if config.faithfulness:
        score_texts(
            [
                (t, faith.ranking_texts(t, out.word_scores))
                for m in methods
                for t, out in zip(targets, outputs[m])
            ]
        )
        for method in methods:
            for t, row, part, ref, out in zip(targets, rows, parts, references, outputs[method]):
                scores, curve = faith.evaluate(t, out.word_scores, ref)
                part["faithfulness"].append(
                    {"id": row["id"], "type": row["type"], "method": method, **scores}
                )
                part["curves"] += _curve_rows(row["id"], method, curve)
    return parts


def attribute_records(
    scorer: Scorer, records: list[dict], methods: list[str], config: AttributeConfig
) -> list[dict]:
    """The parts of a group of suite records (id, type, label, prompt, pair_id), side by side."""
    targets = [PromptTarget(scorer, r["prompt"], config.settings, name=f"prompt {r['id']}") for r in records]
    rows = [{k: r[k] for k in ("id", "type", "label", "prompt", "pair_id")} for r in records]
    if isinstance(config.harmfulness, HarmfulnessProbe):  # beside the margin, read in a pass of its own
        probed = Scorer(scorer.lm, scorer.fmt, scorer.readout, scorer.batch_size, config.harmfulness)
        for row, h in zip(rows, probed.score([r["prompt"] for r in rows], desc="harmfulness").harmfulness):
            row["harmfulness"] = float(h)
    return attribute_group(targets, rows, methods, config)


def attribute_shard(worker, records: list[dict], methods: list[str], config: AttributeConfig) -> list[dict]:
    """A group's parts on a Ray worker (`toolkit.distributed.Worker`)."""
    return attribute_records(worker.scorer, records, methods, config)


def _lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _start_part(target: PromptTarget, row: dict) -> dict:
    m = target.margins()
    margins = {"margin": m["decision"], "margin_sampled": m["sampled"], "margin_smooth": m.get("smooth")}
    return {
        "prompt": {**row, **margins, "refused": bool(m["decision"] > 0)},
        "attributions": [],
        "methods": [],
        "faithfulness": [],
        "curves": [],
    }


def _run_method(targets: list[PromptTarget], rows: list[dict], method: str, parts: list[dict]) -> list:
    """One method on a group of prompts (side by side where it can): word scores and cost into each
    part. `seconds` is the prompt's share of the method's time on the group, by the rows it ran."""
    before = [(t.rows_forward, t.rows_backward) for t in targets]
    start = time.perf_counter()
    outs = attribute_together(targets, method)
    seconds = time.perf_counter() - start
    ran = [t.rows_forward + t.rows_backward - f - b for t, (f, b) in zip(targets, before)]
    for target, row, part, out, (f, b), n in zip(targets, rows, parts, outs, before, ran):
        for w, score in zip(target.words, out.word_scores):
            part["attributions"].append(
                {
                    "id": row["id"],
                    "word_index": w.index,
                    "word": w.text,
                    "char_start": w.start,
                    "char_end": w.end,
                    "score": float(score),
                    "method": method,
                }
            )
        info = {k: v for k, v in out.info.items() if k != "error_by_steps"}
        if "error_by_steps" in out.info:
            info["error_by_steps"] = json.dumps(
                {str(k): float(v) for k, v in out.info["error_by_steps"].items()}
            )
        part["methods"].append(
            {
                "id": row["id"],
                "method": method,
                "seconds": round(seconds * (n / sum(ran) if sum(ran) else 1 / len(targets)), 3),
                "rows_forward": target.rows_forward - f,
                "rows_backward": target.rows_backward - b,
                "n_words": len(target.words),
                "n_user_tokens": target.n_user,
                **info,
            }
        )
    return outs


def _curve_rows(prompt_id: str, method: str, curve: np.ndarray) -> list[dict]:
    n = len(curve) - 1
    return [
        {"id": prompt_id, "method": method, "fraction": j / n, "margin": float(m)}
        for j, m in enumerate(curve)
    ]


PART_LISTS = ("attributions", "methods", "faithfulness", "curves")


def read_parts(out: Path, repair: bool = False) -> list[dict]:
    """The prompts finished in `out`. A last line torn by a kill or a full disk is left out, and with
    `repair` cut from the file, so the next prompt is not appended onto it. A damaged line before the
    last, or a prompt recorded twice, is an OutputError: the file was edited, and what follows is kept."""
    path = out / PARTS
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise OutputError(f"cannot read '{path}' ({err}): use a new --out or --overwrite") from err
    lines = text.splitlines(keepends=True)
    parts, good, seen = [], 0, set()
    for n, line in enumerate(lines, 1):
        part = _part(line)
        if part is None:
            if n < len(lines):
                raise OutputError(
                    f"'{path}' line {n} is not a finished prompt (damaged or edited) and lines follow it: "
                    "mend or delete that line, or use --overwrite"
                )
            break  # the last line, torn by a kill or a full disk
        pid = part["prompt"]["id"]
        if pid in seen:
            raise OutputError(
                f"'{path}' records prompt id '{pid}' twice (line {n}): the file was edited or merged; "
                "delete one of them, or use --overwrite"
            )
        seen.add(pid)
        parts.append(part)
        good += len(line)
    if repair and good < len(text):
        log.warning("%s ended in a torn line: cut it off, kept %d prompts", path, len(parts))
        with open(path, "r+b") as fh:
            fh.truncate(len(text[:good].encode("utf-8")))
    return parts


def _part(line: str) -> dict | None:
    """One finished prompt's record, or None for a line that is not one."""
    if not line.endswith("\n"):
        return None
    try:
        part = json.loads(line)
    except ValueError:
        return None
    ok = (
        isinstance(part, dict)
        and isinstance(part.get("prompt"), dict)
        and isinstance(part["prompt"].get("id"), str)
        and all(
            isinstance(part.get(k), list) and all(isinstance(r, dict) for r in part[k]) for k in PART_LISTS
        )
    )
    return part if ok else None


def assemble(parts: list[dict], suite_order: list[str], run: dict) -> AttributionResult:
    order = {i: k for k, i in enumerate(suite_order)}
    parts = sorted((p for p in parts if p["prompt"]["id"] in order), key=lambda p: order[p["prompt"]["id"]])

    def frame(key, columns=None):
        rows = [r for p in parts for r in p[key]]
        return pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)

    prompts = pd.DataFrame([p["prompt"] for p in parts])
    return AttributionResult(
        attributions=frame("attributions", ATTRIBUTION_COLUMNS),
        prompts=prompts.reindex(
            columns=[*PROMPT_COLUMNS, *(["harmfulness"] if "harmfulness" in prompts else [])]
        ),
        methods=frame("methods"),
        faithfulness=frame("faithfulness"),
        curves=frame("curves"),
        run=run,
    )


class PartStore:
    """Where `attribute`'s finished prompts go: whole parts (a prompt's rows of every table), appended
    to parts.jsonl per group (`RowStore`'s protocol, for the runner), or kept in memory without an
    `out`."""

    @staticmethod
    def precheck(out: Path, result_cls, resume: bool, overwrite: bool) -> None:
        if (out / PARTS).exists() and not (resume or overwrite):
            raise OutputError(
                f"'{out}' already holds attributions: pass --resume to continue that run or --overwrite to replace it"
            )

    def __init__(
        self, out: Path | None, result_cls, columns, run_info: dict, suite: Suite, resume, overwrite
    ):
        self.out, self.run_info, self.suite, self.overwrite = out, run_info, suite, overwrite
        self.parts: list[dict] = []
        done: set[str] = set()
        if out is not None and resume and not overwrite:
            run_info["earlier_runs"] = earlier_runs(check_resumable(out, run_info, RUN_KEYS, PARTS))
            if (out / PARTS).exists():
                done = {p["prompt"]["id"] for p in read_parts(out, repair=True)}
        self.todo = suite.frame[~suite.frame["id"].isin(done)].reset_index(drop=True)
        run_info["rows_written"] = len(done)  # prompts (a part each) in parts.jsonl

    def begin(self) -> None:
        if self.out is not None:
            if self.overwrite:  # every check passed: now the old run may go
                (self.out / PARTS).unlink(missing_ok=True)
            write_run(self.out, self.run_info, AttributionResult.kind)

    def write(self, parts: list[dict]) -> None:
        if self.out is None:
            self.parts += parts
            return
        path = self.out / PARTS
        append_whole(
            path, "".join(json.dumps(part) + "\n" for part in parts), kept=lambda: f"{_lines(path)} prompts"
        )
        self.run_info["rows_written"] += len(parts)
        write_run(self.out, self.run_info, AttributionResult.kind)

    def finish(self, **info) -> AttributionResult:
        self.run_info.update(status="complete", **info)
        parts = self.parts if self.out is None else read_parts(self.out)
        self.run_info["rows_written"] = len(parts)
        return assemble(parts, list(self.suite.frame["id"]), self.run_info)


class Attribution(PerPrompt):
    """`lexprobe attribute` as the runner drives it: `GROUP` prompts side by side."""

    result_cls = AttributionResult
    store_cls = PartStore
    shard_size = GROUP

    def __init__(self, config: AttributeConfig):
        super().__init__(config)
        self.batch_size = config.settings.batch_size
        self.methods = parse_methods(config.methods)  # before the (slow) model load
        self.gradients = needs_float32(self.methods)  # --dtype auto: float32 for these methods

    def select(self, suite: Suite | None) -> Suite:
        self.suite, self.pairs = _selection(self.config, suite)
        return self.suite

    def records(self, frame: pd.DataFrame) -> list[dict]:
        return [rec | {"pair_id": self.pairs.get(rec["id"], "")} for rec in frame.to_dict("records")]

    def prepare(self) -> tuple[dict, dict]:
        config, session = self.config, self.session
        if session.lm.dtype != torch.float32 and "integrated_gradients" in self.methods:
            log.warning(
                "integrated gradients in %s reach their completeness tolerance less often than in float32 "
                "(8 of 12 refused XSTest prompts against 12 of 12, docs/models.md): check `completeness_error` "
                "in methods.csv, or use --dtype float32",
                dtype_name(session.lm.dtype),
            )
        self.config = replace(config, harmfulness=self.probe)  # what a group reads
        self.scorer = Scorer(session.lm, session.fmt, session.readout, batch_size=self.batch_size)
        for rec in self.suite.frame.to_dict("records"):  # every prompt fits the context before any work
            self.scorer.encode(rec["prompt"], f"prompt {rec['id']}")
        faithfulness = {
            "enabled": config.faithfulness,
            "n_random": config.n_random,
            "bins": list(faith.FRACTIONS),
        }
        settings = {
            "methods": self.methods,
            "target": config.settings.target,
            "attribution": asdict(config.settings),
            "faithfulness": faithfulness,  # every prompt of a run has faithfulness, or none has
        }
        return settings, {}

    def warm_up(self) -> None:
        self.session.ensure_smooth_temperature(self.batch_size)  # after every check: it takes a while

    def local(self, records: list[dict], emit) -> None:
        desc = f"attributing {count(len(records), 'prompt')}"
        with progress(None, total=len(records), desc=desc, unit="prompt") as bar:
            for i in range(0, len(records), GROUP):
                group = records[i : i + GROUP]
                emit(
                    list(range(i, i + len(group))),
                    attribute_records(self.scorer, group, self.methods, self.config),
                )
                bar.update(len(group))

    remote = staticmethod(attribute_shard)

    def remote_args(self) -> tuple:
        return self.methods, self.config

    def finish(self, result: AttributionResult) -> AttributionResult:
        if self.config.out is not None:
            result.save(Path(self.config.out), overwrite=True, figures=self.config.figures)
        return result


def run(
    config: AttributeConfig, session: Session | None = None, suite: Suite | None = None
) -> AttributionResult:
    return run_per_prompt(Attribution(config), session, suite)


# ------------------------------------------------------------------------------------ heatmap
@dataclass(kw_only=True)
class HeatmapConfig(Options):
    source: str  # a `lexprobe attribute` output directory
    out: str
    ids: list[str] = field(default_factory=list)  # only these prompts, in this order
    methods: list[str] = field(default_factory=list)  # only these methods (all: empty)
    formats: list[str] = field(default_factory=lambda: ["html", "png"])
    overwrite: bool = False


def redraw(config: HeatmapConfig) -> list[Path]:
    """The heatmaps of a saved attribution run, for some of its prompts and methods, in `formats`."""
    from lexprobe.toolkit.viz import heatmaps

    source = Path(config.source)
    if not (source / AttributionResult.filename).exists():
        raise InputError(
            f"'{source}' holds no attributions.csv: give a `lexprobe attribute` output directory"
        )
    bad = sorted(set(config.formats) - set(heatmaps.FORMATS))
    if bad:
        raise InputError(f"unknown --format {', '.join(bad)}: use {', '.join(heatmaps.FORMATS)}")
    result = AttributionResult.load(source)
    if config.ids:
        missing = sorted(set(config.ids) - set(result.prompts["id"]))
        if missing:
            raise InputError(f"'{source}' has no prompt id {', '.join(missing[:5])}: check --ids")
        result = result.select(config.ids)
    unknown = [m for m in config.methods if m not in result.method_names]
    if unknown:
        raise InputError(
            f"'{source}' has no method {', '.join(unknown)}: it has {', '.join(result.method_names)}"
        )
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file: give a directory")
    return heatmaps.write_heatmaps(result, out, config.methods or None, config.formats, config.overwrite)
