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
    session_for,
    study,
)
from lexprobe.toolkit.config import Options
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
    parallel: ParallelOptions = field(default_factory=ParallelOptions)  # shard over Ray
    resume: bool = False
    overwrite: bool = False


class ScoreResult(TableResult):
    filename = "scores.csv"
    numeric_columns = ("margin", "p_refuse", "margin_sampled", "p_refuse_sampled")

    def summary(self) -> pd.DataFrame:
        """Per prompt type: n, mean margin, share with p_refuse > 0.5."""
        f = self.frame
        out = f.groupby(["type", "label"], sort=False).agg(
            n=("margin", "size"),
            mean_margin=("margin", "mean"),
            refuse_share=("p_refuse", lambda p: (p > 0.5).mean()),
        )
        return out.reset_index()

    def overview(self) -> pd.DataFrame:
        return self.summary()


@study
def run(config: ScoreConfig, session: Session | None = None, suite: Suite | None = None) -> ScoreResult:
    suite = suite or open_suite(config.suite)
    config.parallel.check()  # a wrong --ray-address fails here, not after the model loads
    session = session_for(config.model, session)
    run_info = provenance(
        **session.provenance(),
        study="score",
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
    columns = COLUMNS + (
        [f"margin_layer_{i}" for i in range(len(session.lm.layers))] if config.layers else []
    )
    out = ResumableRun(
        config.out, ScoreResult, columns, run_info, suite, config.resume, config.overwrite, RESUME_KEYS
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
            if config.layers:
                rec.update({f"margin_layer_{j}": float(v) for j, v in enumerate(scores.layer_margins[k])})
            rows.append(rec)
        out.write(rows)

    if len(todo) and config.parallel.active:
        desc = f"scoring {len(todo)} prompts"
        config.parallel.run(
            session, config.model.batch_size, todo, score_shard, (config.layers,), write, desc
        )
    elif len(todo):
        scorer = Scorer(session.lm, session.fmt, session.readout, batch_size=config.model.batch_size)
        scorer.score(
            todo["prompt"].tolist(),
            layers=config.layers,
            desc=f"scoring {len(todo)} prompts",
            on_batch=write,
            ids=todo["id"].tolist(),
        )
    return out.finish(n_scored_this_run=len(todo))


def score_shard(worker, texts: list[str], ids: list[str], layers: bool):
    """A shard's MarginScores on a Ray worker (`toolkit.distributed.Worker`)."""
    return worker.scorer.score(texts, layers=layers, desc="worker", ids=ids)
