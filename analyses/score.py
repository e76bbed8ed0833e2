"""`lexprobe score`: the refusal margin of every prompt of a suite, resumable, with a per-type summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from lexprobe.analyses.options import ModelOptions, ParallelOptions, SuiteOptions
from lexprobe.analyses.runner import PerPrompt, run_per_prompt
from lexprobe.analyses.session import Session
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.io.progress import count
from lexprobe.toolkit.io.results import TableResult
from lexprobe.toolkit.io.suites import Suite
from lexprobe.toolkit.scoring.scorer import Scorer

COLUMNS = ["id", "type", "label", "prompt", "margin", "p_refuse", "margin_sampled", "p_refuse_sampled"]


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


def score_shard(worker, records: list[dict], layers: bool, probe_json: str | None = None):
    """A shard's MarginScores on a Ray worker (`toolkit.distributed.Worker`), with the harmfulness
    probe's logit where the driver sends its probe."""
    from lexprobe.probes.harmfulness import HarmfulnessProbe

    probe = HarmfulnessProbe.from_json(probe_json) if probe_json else None
    w = worker.scorer
    scorer = Scorer(w.lm, w.fmt, w.readout, w.batch_size, probe)
    texts, ids = [r["prompt"] for r in records], [r["id"] for r in records]
    return scorer.score(texts, layers=layers, desc="worker", ids=ids)


class Scoring(PerPrompt):
    result_cls = ScoreResult
    columns = COLUMNS
    harmfulness_columns = ["harmfulness"]

    def prepare(self) -> tuple[dict, dict]:
        layers = self.config.layers
        if layers:
            self.columns = COLUMNS + [f"margin_layer_{i}" for i in range(len(self.session.lm.layers))]
        return {"layers": layers}, {}

    def local(self, records: list[dict], emit) -> None:
        s = self.session
        scorer = Scorer(s.lm, s.fmt, s.readout, self.batch_size, self.probe)
        scorer.score(
            [r["prompt"] for r in records],
            layers=self.config.layers,
            desc=f"scoring {count(len(records), 'prompt')}",
            on_batch=emit,
            ids=[r["id"] for r in records],
        )

    remote = staticmethod(score_shard)

    def remote_args(self) -> tuple:
        return self.config.layers, self.probe.to_json() if self.probe is not None else None

    def rows(self, records: list[dict], scores) -> list[dict]:
        rows = []
        for k, rec in enumerate(records):
            row = {c: rec[c] for c in ("id", "type", "label", "prompt")}
            row.update(
                margin=float(scores.margin[k]),
                p_refuse=float(scores.p_refuse[k]),
                margin_sampled=float(scores.margin_sampled[k]),
                p_refuse_sampled=float(scores.p_refuse_sampled[k]),
            )
            if scores.harmfulness is not None:
                row["harmfulness"] = float(scores.harmfulness[k])
            if scores.layer_margins is not None:
                row.update({f"margin_layer_{j}": float(v) for j, v in enumerate(scores.layer_margins[k])})
            rows.append(row)
        return rows


def run(config: ScoreConfig, session: Session | None = None, suite: Suite | None = None) -> ScoreResult:
    return run_per_prompt(Scoring(config), session, suite)
