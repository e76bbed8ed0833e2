"""`lexprobe score`: the refusal margin of every prompt of a suite, resumable, with a per-type summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analyses.common import ModelOptions, SuiteOptions, open_session, open_suite
from toolkit.cache import write_json_atomic
from toolkit.results import RowWriter, TableResult, Timer, check_resumable, provenance, write_csv_atomic
from toolkit.scoring import Scorer

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
    timer = Timer()
    suite = open_suite(config.suite)
    out = Path(config.out)
    session = open_session(config.model)
    run_info = provenance(**session.provenance(), suite=suite.source, n_prompts=len(suite), status="running")
    run_info["batch_size"] = config.model.batch_size
    if config.resume:
        check_resumable(out, run_info, RESUME_KEYS)
    n_layers = len(session.lm.layers)
    columns = COLUMNS + ([f"margin_layer_{i}" for i in range(n_layers)] if config.layers else [])
    writer = RowWriter(out / ScoreResult.filename, columns, resume=config.resume, overwrite=config.overwrite)
    write_json_atomic(out / "run.json", run_info)  # provenance first: an interrupted run keeps it

    todo = suite.frame[~suite.frame["id"].isin(writer.done)].reset_index(drop=True)
    scorer = Scorer(session.lm, session.fmt, session.readout, batch_size=config.model.batch_size)

    def write(indices, scores):
        rows = []
        for k, i in enumerate(indices):
            row = todo.iloc[i]
            rec = {c: row[c] for c in ("id", "type", "label", "prompt")}
            rec.update(
                margin=float(scores.margin[k]),
                p_refuse=float(scores.p_refuse[k]),
                margin_sampled=float(scores.margin_sampled[k]),
                p_refuse_sampled=float(scores.p_refuse_sampled[k]),
            )
            if config.layers:
                rec.update({f"margin_layer_{j}": float(v) for j, v in enumerate(scores.layer_margins[k])})
            rows.append(rec)
        writer.write(rows)

    if len(todo):
        scorer.score(
            todo["prompt"].tolist(), layers=config.layers, desc=f"scoring {len(todo)} prompts", on_batch=write
        )

    frame = pd.read_csv(writer.path, dtype={"id": str}, keep_default_na=False)
    order = {i: k for k, i in enumerate(suite.frame["id"])}
    frame = (
        frame[frame["id"].isin(order)].sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
    )
    run_info.update(status="complete", wall_seconds=timer.seconds, n_scored_this_run=len(todo))
    result = ScoreResult(frame, run_info)
    write_csv_atomic(frame, writer.path)
    result.save(out)
    return result
