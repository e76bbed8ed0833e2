"""`lexprobe validate-margin`: does the one-pass refusal margin predict what the model actually does?

For one model and system-prompt condition: score the suite (`score`), generate greedy completions
(`generate`, or take a completions file), label them with the default classifier, and report how well
the margin predicts refusal (full or partial): AUROC with a bootstrap 95% CI, the calibrated
threshold, and a reliability plot. The threshold is the margin where a logistic fit of P(refusal |
margin) crosses 1/2, i.e. where the model starts refusing; it is saved per model and condition
(`toolkit/scoring/thresholds.py`) for later studies. Each step writes into its own subdirectory of --out and
resumes there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

from lexprobe.analyses import generate as generate_analysis
from lexprobe.analyses import score as score_analysis
from lexprobe.analyses.evaluate import normalise_labels, read_completions
from lexprobe.analyses.options import ModelOptions, SuiteOptions, open_suite
from lexprobe.analyses.session import Session, study_session
from lexprobe.toolkit.behaviour.classify import CLASSIFIERS, classify, is_refusal
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.io.results import TableResult, Timer, provenance, read_json_file
from lexprobe.toolkit.io.suites import Suite
from lexprobe.toolkit.scoring.thresholds import save_threshold
from lexprobe.toolkit.stats import auroc, bootstrap_ci


@dataclass(kw_only=True)
class ValidityConfig(Options):
    out: str | None = None  # None: nothing written (the score and generate steps then do not resume)
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)
    completions: str | None = None  # an existing completions file for this model and condition
    classifier: str = "default"
    max_new_tokens: int = generate_analysis.DEFAULT_MAX_NEW_TOKENS
    n_bootstrap: int = 2000
    seed: int = 0
    save: bool = True  # store the threshold for later studies


class ValidityResult(TableResult):
    filename = "validity.csv"
    kind = "validate-margin"

    def __init__(self, frame: pd.DataFrame, run: dict | None = None, summary: dict | None = None):
        super().__init__(frame, run or {})
        self.summary = dict(summary or {})  # AUROC with CI, threshold, accuracy (summary.json)

    def overview(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"statistic": list(self.summary), "value": [str(v) for v in self.summary.values()]}
        )

    def _write(self, out: Path) -> None:
        super()._write(out)
        write_text_atomic(out / "summary.json", json.dumps(self.summary, indent=2))

    @classmethod
    def _read(cls, out: Path):
        result = super()._read(out)
        result.summary = read_json_file(out / "summary.json", {})
        return result

    def _figures(self, out: Path) -> None:
        from lexprobe.toolkit.viz.names import with_model
        from lexprobe.toolkit.viz.plots import reliability_plot

        f, s = self.frame, self.summary
        reliability_plot(
            f["margin"].to_numpy(dtype=float),
            f["refused"].astype(str).eq("True").to_numpy(),
            s["threshold"],
            s["logistic_slope"],
            out / "reliability.png",
            title=with_model("Refusal margin against generated behaviour", self.run),
        )


def fit_threshold(margin: np.ndarray, refused: np.ndarray) -> tuple[float, float]:
    """(threshold, slope) of the logistic fit P(refused) = sigmoid(slope * (margin - threshold))."""

    def loss(params):
        slope, threshold = params
        z = slope * (margin - threshold)
        return np.sum(np.logaddexp(0, z) - refused * z) + 1e-3 * slope**2

    fit = optimize.minimize(loss, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9})
    slope, threshold = fit.x
    return float(threshold), float(slope)


def run(config: ValidityConfig, session: Session | None = None, suite: Suite | None = None) -> ValidityResult:
    timer = Timer()
    out = Path(config.out) if config.out else None
    suite = suite or open_suite(config.suite)  # the names are checked before the model loads
    CLASSIFIERS.get(config.classifier)
    completions = read_completions(config.completions)[1] if config.completions else None
    with study_session(config.model, session) as session:
        scores = score_analysis.run(
            score_analysis.ScoreConfig(out=_sub(out, "score"), model=config.model, resume=True),
            session,
            suite,
        ).frame
        if completions is None:
            completions = generate_analysis.run(
                generate_analysis.GenerateConfig(
                    out=_sub(out, "generate"),
                    model=config.model,
                    max_new_tokens=config.max_new_tokens,
                    resume=True,
                ),
                session,
                suite,
            ).frame
        completions = completions.assign(id=completions["id"].astype(str))
        frame = scores.merge(completions[["id", "completion"]], on="id", how="inner")
        if len(frame) < len(scores):
            raise InputError(
                f"the completions cover {len(frame)} of {len(scores)} scored prompts: generate the rest (same --out, "
                "it resumes) or pass a completions file for the same suite"
            )
        frame["predicted"] = normalise_labels(
            pd.Series(
                classify(frame["completion"].tolist(), frame["prompt"].tolist(), name=config.classifier)
            ),
            "classifier",
        )
        frame["refused"] = frame["predicted"].map(is_refusal)
        y, m = frame["refused"].to_numpy(), frame["margin"].to_numpy()
        if y.all() or not y.any():
            raise InputError(
                f"the model {'refused' if y.all() else 'answered'} every prompt here, so refusal cannot be predicted: "
                "use a suite with both behaviours"
            )
        auc = auroc(y, m)
        lo, hi = bootstrap_ci(auroc, y, m, n_resamples=config.n_bootstrap, seed=config.seed)
        threshold, slope = fit_threshold(m, y.astype(float))
        summary = {
            "n": int(len(frame)),
            "refusal_rate": round(float(y.mean()), 4),
            "auroc": round(auc, 4),
            "auroc_ci95": [round(lo, 4), round(hi, 4)],
            "auroc_margin_sampled": round(auroc(y, frame["margin_sampled"].to_numpy()), 4),
            "threshold": round(threshold, 4),
            "logistic_slope": round(slope, 4),
            "accuracy_at_threshold": round(float(((m > threshold) == y).mean()), 4),
            "accuracy_at_zero": round(float(((m > 0) == y).mean()), 4),
            "classifier": config.classifier,
        }
        run_info = provenance(
            **session.provenance(), suite=suite.source, **summary, wall_seconds=timer.seconds
        )
        if config.save:
            save_threshold(session.lm, session.fmt, threshold, {"auroc": summary["auroc"], "n": summary["n"]})
        result = ValidityResult(
            frame[["id", "type", "label", "prompt", "margin", "margin_sampled", "predicted", "refused"]],
            run_info,
            summary,
        )
        if out is not None:
            result.save(out, overwrite=True)
        return result


def _sub(out: Path | None, name: str) -> str | None:
    return str(out / name) if out is not None else None
