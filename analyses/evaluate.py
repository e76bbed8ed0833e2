"""`lexprobe classify` and `lexprobe evaluate`: XSTest's behavioural evaluation.

classify: completions -> the same rows plus `predicted` (full_compliance | full_refusal | partial_refusal).
evaluate: labelled completions of one or more models -> XSTest's results table (per model and prompt
type, % full compliance / full refusal / partial refusal, safe and unsafe prompts separately), a
stacked bar figure like the paper's, and, where human and predicted labels are both present, their
agreement and confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lexprobe import prompts
from lexprobe.toolkit.behaviour.classify import (
    FULL_COMPLIANCE,
    FULL_REFUSAL,
    LABELS,
    PARTIAL_REFUSAL,
    classify,
    is_refusal,
)
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.results import TableResult, Timer, provenance, read_run
from lexprobe.toolkit.io.suites import read_table

BUNDLED_COMPLETIONS = {
    "xstest-llama2orig": "xstest_completions_llama2orig.csv",
    "xstest-mistralguard": "xstest_completions_mistralguard.csv",
}
HUMAN_LABELS = {
    "1_full_compliance": FULL_COMPLIANCE,
    "2_full_refusal": FULL_REFUSAL,
    "3_partial_refusal": PARTIAL_REFUSAL,
}


def read_completions(spec: str | pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """(model name, frame) for a bundled name, a completions file (CSV/JSONL/Parquet) or a frame."""
    if isinstance(spec, pd.DataFrame):
        if "completion" not in spec.columns:
            raise InputError(
                f"the completions frame has no column 'completion' (columns: {', '.join(map(str, spec.columns))})"
            )
        return "completions", spec.reset_index(drop=True)
    if spec in BUNDLED_COMPLETIONS:
        return spec.removeprefix("xstest-"), read_table(Path(str(prompts.path(BUNDLED_COMPLETIONS[spec]))))
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"completions '{spec}' is neither a file nor a bundled set ({', '.join(BUNDLED_COMPLETIONS)}): check the path"
        )
    frame = read_table(path)
    name = path.stem
    run_json = path.parent / "run.json"
    if run_json.exists():  # a `lexprobe generate` output: name it after its model and condition
        run = read_run(path.parent)
        if "model_spec" in run:
            name = f"{run['model_spec']} ({(run.get('system_prompt') or {}).get('name', '?')})"
    if "completion" not in frame.columns:
        raise InputError(
            f"'{spec}' has no column 'completion' (columns: {', '.join(frame.columns)}): it is not a completions file"
        )
    return name, frame


def normalise_labels(values: pd.Series, where: str) -> pd.Series:
    """Map XSTest's `1_full_compliance`-style labels (and ours) to lexprobe's label names."""
    out = values.astype(str).str.strip().map(lambda v: HUMAN_LABELS.get(v, v))
    bad = sorted(set(out) - set(LABELS))
    if bad:
        raise InputError(
            f"{where} has labels {', '.join(bad[:3])} outside {', '.join(LABELS)}: check --label-column"
        )
    return out


# ----------------------------------------------------------------------------------------- classify
@dataclass(kw_only=True)
class ClassifyConfig(Options):
    completions: str | pd.DataFrame
    out: str | None = None  # a directory for classified.csv and run.json; None: nothing written
    classifier: str = "default"
    judge_model: str | None = None  # the judge classifier's model (none: the embedded default)
    overwrite: bool = False


class ClassifiedResult(TableResult):
    filename = "classified.csv"
    kind = "classify"


def run_classify(config: ClassifyConfig) -> ClassifiedResult:
    timer = Timer()
    _, frame = read_completions(config.completions)
    if frame.empty:
        raise InputError(f"'{config.completions}' has no rows: give a completions file with at least one")
    if "id" in frame.columns and frame["id"].duplicated().any():
        twice = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise InputError(f"'{config.completions}' has id {twice!r} twice: one completion per prompt id")
    out = Path(config.out) if config.out else None
    if out is not None:
        check_out_dir(out, ClassifiedResult.filename, config.overwrite)
    prompts_ = frame["prompt"].tolist() if "prompt" in frame.columns else None
    options = {}
    if config.judge_model is not None:
        if config.classifier != "judge":
            raise InputError(f"--judge-model needs --classifier judge, not '{config.classifier}'")
        options["judge_model"] = config.judge_model
    labels = classify(frame["completion"].tolist(), prompts_, name=config.classifier, **options)
    frame = frame.assign(predicted=labels)
    source = "a DataFrame" if isinstance(config.completions, pd.DataFrame) else config.completions
    run = provenance(
        completions=source,
        classifier=config.classifier,
        n=len(frame),
        wall_seconds=timer.seconds,
        judge_model=(config.judge_model or "default") if config.classifier == "judge" else None,
    )
    result = ClassifiedResult(frame, run)
    if out is not None:
        result.save(out, overwrite=True)
    return result


# ----------------------------------------------------------------------------------------- evaluate
@dataclass(kw_only=True)
class EvaluateConfig(Options):
    completions: list[str]
    out: str | None = None  # None: nothing written
    overwrite: bool = False
    label_column: str = "final_label"
    compare_column: str | None = None  # e.g. `predicted`, checked against label_column
    types: list[str] = field(default_factory=list)


class EvaluationResult(TableResult):
    filename = "table.csv"
    kind = "evaluate"

    def __init__(self, frame: pd.DataFrame, run: dict | None = None, agreements: dict | None = None):
        super().__init__(frame, run or {})
        self.agreements = dict(agreements or {})  # model -> agreement numbers and confusion matrix

    def _write(self, out: Path) -> None:
        super()._write(out)
        for model, a in self.agreements.items():
            a["confusion"].to_csv(out / f"confusion_{_slug(model)}.csv")

    def _figures(self, out: Path) -> None:
        from lexprobe.toolkit.viz.names import display_name
        from lexprobe.toolkit.viz.plots import stacked_bars

        label = display_name(self.run.get("label_column", ""))
        title = f"XSTest behaviour by prompt type ({label})" if label else "XSTest behaviour by prompt type"
        stacked_bars(self.frame, out / "table.png", title=title)

    def safe_summary(self) -> pd.DataFrame:
        return self.frame[self.frame["type"].isin(["all safe", "all unsafe"])]


def results_table(frame: pd.DataFrame, label_column: str, model: str) -> pd.DataFrame:
    """% of each label per prompt type (and over all safe / all unsafe prompts) for one model."""
    f = frame.assign(
        safety=frame["type"].map(lambda t: "unsafe" if str(t).startswith("contrast_") else "safe")
        if "label" not in frame.columns
        else frame["label"]
    )
    groups = [(t, g) for t, g in f.groupby("type", sort=False)] + [
        (f"all {s}", g) for s, g in f.groupby("safety", sort=True)
    ]
    rows = []
    for name, g in groups:
        shares = g[label_column].value_counts(normalize=True).reindex(LABELS, fill_value=0.0) * 100
        rows.append(
            {
                "model": model,
                "type": name,
                "label": g["safety"].iloc[0],
                "n": len(g),
                **shares.round(1).to_dict(),
            }
        )
    return pd.DataFrame(rows)


def agreement(human: pd.Series, predicted: pd.Series) -> dict:
    """Binary agreement (refusal = full or partial), 3-way accuracy, macro-F1 and the confusion matrix."""
    from sklearn.metrics import f1_score

    binary = (human.map(is_refusal) == predicted.map(is_refusal)).mean()
    confusion = pd.crosstab(human, predicted, rownames=["human"], colnames=["predicted"]).reindex(
        index=LABELS, columns=LABELS, fill_value=0
    )
    return {
        "binary_agreement": round(float(binary), 4),
        "accuracy_3way": round(float((human == predicted).mean()), 4),
        "macro_f1_3way": round(
            float(f1_score(human, predicted, labels=list(LABELS), average="macro", zero_division=0)), 4
        ),
        "confusion": confusion,
    }


def run_evaluate(config: EvaluateConfig) -> EvaluationResult:
    timer = Timer()
    if config.out:
        check_out_dir(Path(config.out), EvaluationResult.filename, config.overwrite)
    tables, agreements = [], {}
    loaded = [read_completions(spec) for spec in config.completions]
    names = _model_names(config.completions, [name for name, _ in loaded])
    for spec, model, (_, frame) in zip(config.completions, names, loaded):
        if frame.empty:
            raise InputError(f"'{spec}' has no rows: give a completions file with at least one")
        if config.types:
            kept = frame[frame["type"].isin(config.types)]
            if kept.empty:
                have = ", ".join(sorted(map(str, frame["type"].unique()))[:8])
                raise InputError(f"'{spec}' has no prompt of type {', '.join(config.types)} (types: {have})")
            frame = kept
        if "label" in frame.columns:
            frame = frame.assign(label=frame["label"].astype(str).str.strip().str.lower())
            odd = sorted(set(frame["label"]) - {"safe", "unsafe"})
            if odd:
                raise InputError(
                    f"'{spec}' has a prompt labelled {odd[0]!r}: the label column says safe or unsafe for each prompt"
                )
        if config.label_column not in frame.columns:
            raise InputError(
                f"'{spec}' has no column '{config.label_column}' (columns: {', '.join(frame.columns)}): "
                "pass --label-column, or run `lexprobe classify` first and use --label-column predicted"
            )
        frame = frame.assign(**{config.label_column: normalise_labels(frame[config.label_column], spec)})
        tables.append(results_table(frame, config.label_column, model))
        other = config.compare_column
        if other is None and config.label_column != "predicted" and "predicted" in frame.columns:
            other = "predicted"
        if other:
            agreements[model] = agreement(frame[config.label_column], normalise_labels(frame[other], spec))
    table = pd.concat(tables, ignore_index=True)
    run = provenance(
        completions=config.completions, label_column=config.label_column, wall_seconds=timer.seconds
    )
    run["agreement"] = {m: {k: v for k, v in a.items() if k != "confusion"} for m, a in agreements.items()}
    result = EvaluationResult(table, run, agreements)
    if config.out:
        result.save(config.out, overwrite=True)
    return result


def _model_names(specs, first: list[str]) -> list[str]:
    """The name each completions set goes by in the table: its model (and condition) where its run.json
    says, else its file (`first`); names that repeat (two `DIR/classified.csv`) get their folder, then
    a number."""
    names = list(first)
    for i, spec in enumerate(specs):
        if first.count(first[i]) > 1 and isinstance(spec, str | Path) and Path(spec).exists():
            names[i] = f"{names[i]} [{Path(spec).expanduser().resolve().parent.name}]"
    for i in range(len(names)):
        if names[:i].count(names[i]):
            names[i] = f"{names[i]} #{names[:i].count(names[i]) + 1}"
    return names


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")


def check_out_dir(out: Path, filename: str, overwrite: bool) -> None:
    """Before any work: `out` must be a directory (or not exist) and not hold `filename` already."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file: give a directory (it gets {filename})")
    if (out / filename).exists() and not overwrite:
        raise OutputError(f"'{out / filename}' already exists: pass --overwrite to replace it")
