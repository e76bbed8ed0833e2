"""`lexprobe score`: the refusal margin of every prompt of a suite, resumable, with a per-type summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from lexprobe.analyses.common import (
    RUN_KEYS,
    SHARD_BATCHES,
    ModelOptions,
    ParallelOptions,
    ResumableRun,
    Session,
    SuiteOptions,
    open_suite,
    probe_option,
    session_for,
    study,
    with_harmfulness,
)
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.io.progress import count
from lexprobe.toolkit.io.results import TableResult, provenance
from lexprobe.toolkit.io.suites import Suite
from lexprobe.toolkit.scoring.scorer import Scorer

COLUMNS = ["id", "type", "label", "prompt", "margin", "p_refuse", "margin_sampled", "p_refuse_sampled"]
RESUME_KEYS = (*RUN_KEYS, "readout_sha256")


@dataclass(kw_only=True)
class ScoreConfig(Options):
    out: str | None = None  # None: keep the rows in memory (the Python API), write nothing
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)
    layers: bool = False  # also write the logit-lens margin of every layer
    # also write the harmfulness probe's logit: True (this model's, cached or fitted once), a probe.json
    # of `lexprobe harmfulness` or its folder, or a HarmfulnessProbe
    harmfulness: object = False
    parallel: ParallelOptions = field(default_factory=ParallelOptions)  # shard over Ray
    resume: bool = False
    overwrite: bool = False


class ScoreResult(TableResult):
    filename = "scores.csv"
    kind = "score"
    numeric_columns = ("margin", "p_refuse", "margin_sampled", "p_refuse_sampled")

    def summary(self) -> pd.DataFrame:
        """Per prompt type: n, mean margin, share with p_refuse > 0.5 (and with the harmfulness column,
        its mean and the share represented as harmful)."""
        f = self.frame
        extra = {}
        if "harmfulness" in f:
            extra = dict(
                mean_harmfulness=("harmfulness", "mean"),
                harmful_share=("harmfulness", lambda h: (h > 0).mean()),
            )
        out = f.groupby(["type", "label"], sort=False).agg(
            n=("margin", "size"),
            mean_margin=("margin", "mean"),
            refuse_share=("p_refuse", lambda p: (p > 0.5).mean()),
            **extra,
        )
        return out.reset_index()

    def separation(self) -> dict[str, float]:
        """AUROC of each score column separating the unsafe prompts from the safe ones (empty without
        both labels): `margin`, and `harmfulness` where the table has it."""
        from lexprobe.toolkit.stats import auroc

        f = self.frame[self.frame["label"].isin(["safe", "unsafe"])]
        if f["label"].nunique() < 2:
            return {}
        unsafe = f["label"] == "unsafe"
        return {c: auroc(unsafe, f[c]) for c in ("margin", "harmfulness") if c in f and f[c].notna().all()}

    def overview(self) -> pd.DataFrame:
        """A few prompts' own margins (up to `FEW` rows); the per-type summary of more."""
        if len(self.frame) <= FEW:
            return self.frame[
                [c for c in ("id", "type", "prompt", "margin", "p_refuse", "harmfulness") if c in self.frame]
            ]
        return self.summary()


FEW = 20  # prompts shown one by one in a result's view


@study
def run(config: ScoreConfig, session: Session | None = None, suite: Suite | None = None) -> ScoreResult:
    suite = suite or open_suite(config.suite)
    config.parallel.check()  # a wrong --ray-address fails here, not after the model loads
    session = session_for(config.model, session)
    run_info = provenance(
        **session.provenance(),
        kind=ScoreResult.kind,
        suite=suite.source,
        suite_sha256=suite.full.sha256,
        n_prompts=len(suite),
        status="running",
    )
    run_info["batch_size"] = config.model.batch_size
    if config.parallel.active:  # not a resume key: single-process and sharded runs continue each other
        run_info["sharding"] = {
            **asdict(config.parallel),
            "shard_prompts": SHARD_BATCHES * config.model.batch_size,
        }
    probe = probe_option(session, config.harmfulness, config.model.batch_size)
    columns, keys = with_harmfulness(run_info, probe, COLUMNS, RESUME_KEYS, ["harmfulness"])
    columns += [f"margin_layer_{i}" for i in range(len(session.lm.layers))] if config.layers else []
    out = ResumableRun(
        config.out, ScoreResult, columns, run_info, suite, config.resume, config.overwrite, keys
    )
    todo = out.todo

    def write(indices, scores):
        rows = []
        for k, i in enumerate(indices):
            rec = {c: todo.iloc[i][c] for c in ("id", "type", "label", "prompt")}
            rec.update(
                margin=float(scores.margin[k]),
                p_refuse=float(scores.p_refuse[k]),
                margin_sampled=float(scores.margin_sampled[k]),
                p_refuse_sampled=float(scores.p_refuse_sampled[k]),
            )
            if probe is not None:
                rec["harmfulness"] = float(scores.harmfulness[k])
            if config.layers:
                rec.update({f"margin_layer_{j}": float(v) for j, v in enumerate(scores.layer_margins[k])})
            rows.append(rec)
        out.write(rows)

    if len(todo) and config.parallel.active:
        desc = f"scoring {count(len(todo), 'prompt')}"
        probe_json = probe.to_json() if probe is not None else None
        config.parallel.run(
            session, config.model.batch_size, todo, score_shard, (config.layers, probe_json), write, desc
        )
    elif len(todo):
        scorer = Scorer(session.lm, session.fmt, session.readout, config.model.batch_size, probe)
        scorer.score(
            todo["prompt"].tolist(),
            layers=config.layers,
            desc=f"scoring {count(len(todo), 'prompt')}",
            on_batch=write,
            ids=todo["id"].tolist(),
        )
    return out.finish(n_scored_this_run=len(todo))


def score_shard(worker, texts: list[str], ids: list[str], layers: bool, probe_json: str | None = None):
    """A shard's MarginScores on a Ray worker (`toolkit.distributed.Worker`), with the harmfulness
    probe's logit where the driver sends its probe."""
    from lexprobe.probes.harmfulness import HarmfulnessProbe

    probe = HarmfulnessProbe.from_json(probe_json) if probe_json else None
    scorer = Scorer(
        worker.scorer.lm, worker.scorer.fmt, worker.scorer.readout, worker.scorer.batch_size, probe
    )
    return scorer.score(texts, layers=layers, desc="worker", ids=ids)
