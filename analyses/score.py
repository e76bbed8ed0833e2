"""`lexprobe score`: the refusal margin of every prompt of a suite, resumable, with a per-type summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from lexprobe.analyses.common import ModelOptions, ResumableRun, SuiteOptions, open_session, open_suite
from lexprobe.toolkit.results import TableResult, provenance
from lexprobe.toolkit.scoring import Scorer

COLUMNS = ["id", "type", "label", "prompt", "margin", "p_refuse", "margin_sampled", "p_refuse_sampled"]
RESUME_KEYS = ("model_spec", "weights_sha256", "dtype", "system_prompt", "suite")


@dataclass
class ScoreConfig:
    out: str
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)
    layers: bool = False  # also write the logit-lens margin of every layer
    resume: bool = False
    overwrite: bool = False


class ScoreResult(TableResult):
    filename = "scores.csv"

    def summary(self) -> pd.DataFrame:
        """Per prompt type: n, mean margin, share with p_refuse > 0.5."""
        f = self.frame
        out = f.groupby(["type", "label"], sort=False).agg(
            n=("margin", "size"),
            mean_margin=("margin", "mean"),
            refuse_share=("p_refuse", lambda p: (p > 0.5).mean()),
        )
        return out.reset_index()


def run(config: ScoreConfig) -> ScoreResult:
    suite = open_suite(config.suite)
    session = open_session(config.model)
    run_info = provenance(**session.provenance(), suite=suite.source, n_prompts=len(suite), status="running")
    run_info["batch_size"] = config.model.batch_size
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

    if len(todo):
        scorer = Scorer(session.lm, session.fmt, session.readout, batch_size=config.model.batch_size)
        scorer.score(
            todo["prompt"].tolist(),
            layers=config.layers,
            desc=f"scoring {len(todo)} prompts",
            on_batch=write,
            ids=todo["id"].tolist(),
        )
    return out.finish(n_scored_this_run=len(todo))
