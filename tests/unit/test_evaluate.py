"""XSTest's evaluation from labelled completions, and the margin-validity statistics."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lexprobe.analyses.evaluate import (
    EvaluateConfig,
    agreement,
    normalise_labels,
    read_completions,
    run_evaluate,
)
from lexprobe.analyses.margin_validity import fit_threshold
from lexprobe.cli import main
from lexprobe.toolkit.errors import LexprobeError
from lexprobe.toolkit.stats import auroc, bootstrap_ci


def test_reproduces_the_papers_llama2_figures(tmp_path):
    result = run_evaluate(EvaluateConfig(completions=["xstest-llama2orig"], out=str(tmp_path)))
    safe = result.frame.query("type == 'all safe'").iloc[0]
    assert safe["n"] == 250
    assert safe["full_refusal"] == 38.0  # Röttger et al. 2024: 38% full refusal of safe prompts
    assert safe["partial_refusal"] == 21.6  # and 21.6% partial refusal
    assert (tmp_path / "table.csv").exists() and (tmp_path / "table.png").stat().st_size > 10_000
    rows = result.frame[~result.frame["type"].str.startswith("all")]
    assert len(rows) == 18 and np.allclose(
        rows[["full_compliance", "full_refusal", "partial_refusal"]].sum(axis=1), 100, atol=0.15
    )


def test_agreement_and_confusion_when_both_labels_exist(tmp_path):
    _, frame = read_completions("xstest-mistralguard")
    human = normalise_labels(frame["final_label"], "test")
    worse = human.copy()
    worse.iloc[:45] = "full_compliance"  # corrupt 10% of the rows
    a = agreement(human, worse)
    flipped = (human.iloc[:45] != "full_compliance").sum()
    assert a["accuracy_3way"] == pytest.approx(1 - flipped / len(human), abs=1e-4)
    assert a["confusion"].to_numpy().sum() == len(human)
    assert agreement(human, human)["macro_f1_3way"] == 1.0
    path = tmp_path / "labelled.csv"
    frame.assign(predicted=worse).to_csv(path, index=False)
    run_evaluate(EvaluateConfig(completions=[str(path)], out=str(tmp_path / "ev")))
    assert (tmp_path / "ev" / "confusion_labelled.csv").exists()


def test_classify_cli_writes_a_directory_and_never_overwrites_silently(tmp_path, capsys, error_line):
    out = tmp_path / "classified"
    args = ["classify", "--completions", "xstest-llama2orig", "--classifier", "strmatch", "--out", str(out)]
    assert main(args) == 0
    frame = pd.read_csv(out / "classified.csv")
    assert set(frame["predicted"]) <= {"full_compliance", "full_refusal", "partial_refusal"}
    assert len(frame) == 450 and "final_label" in frame.columns
    assert json.loads((out / "run.json").read_text())["classifier"] == "strmatch"
    capsys.readouterr()
    assert main(args) == 2 and "already holds an earlier run (run.json): pass --overwrite" in error_line()
    assert main([*args, "--overwrite"]) == 0


def test_evaluate_bad_input(tmp_path, capsys):
    with pytest.raises(LexprobeError, match="no column 'verdict'"):
        run_evaluate(
            EvaluateConfig(completions=["xstest-llama2orig"], out=str(tmp_path), label_column="verdict")
        )
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"type": ["homonyms"], "completion": ["x"], "final_label": ["maybe"]}).to_csv(
        bad, index=False
    )
    assert main(["evaluate", "--completions", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "labels maybe outside" in capsys.readouterr().err


def test_auroc_matches_its_definition_and_scipy():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = rng.normal(size=300) + y * 1.2
    pairs = (s[y][:, None] > s[~y][None, :]).mean() + 0.5 * (s[y][:, None] == s[~y][None, :]).mean()
    assert auroc(y, s) == pytest.approx(pairs)
    u = stats.mannwhitneyu(s[y], s[~y]).statistic
    assert auroc(y, s) == pytest.approx(u / (y.sum() * (~y).sum()))
    assert auroc([1, 1, 0, 0], [3, 4, 1, 2]) == 1.0 and auroc([1, 1, 0, 0], [1, 2, 3, 4]) == 0.0
    lo, hi = bootstrap_ci(auroc, y, s, n_resamples=500)
    assert lo < auroc(y, s) < hi and hi - lo < 0.25


def test_threshold_fit_recovers_a_known_logistic():
    rng = np.random.default_rng(1)
    m = rng.uniform(-6, 6, 4000)
    refused = rng.random(4000) < 1 / (1 + np.exp(-1.5 * (m - 0.8)))
    threshold, slope = fit_threshold(m, refused.astype(float))
    assert threshold == pytest.approx(0.8, abs=0.15)
    assert slope == pytest.approx(1.5, rel=0.2)


def test_validate_margin_end_to_end_on_tiny(tmp_path, tiny_readout_file, monkeypatch, capsys):
    import json

    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path / "cache"))
    # completions for the first 12 XSTest prompts: refusals on every third one
    comp = pd.DataFrame(
        {
            "id": [str(i) for i in range(1, 13)],
            "completion": [
                "I'm sorry, but I can't help with that." if i % 3 == 0 else "Sure: here is how."
                for i in range(12)
            ],
        }
    )
    comp.to_csv(tmp_path / "comp.csv", index=False)
    args = [
        "validate-margin",
        "--model",
        "tiny-random",
        "--readout",
        str(tiny_readout_file),
        "--limit",
        "12",
        "--classifier",
        "rules",
        "--completions",
        str(tmp_path / "comp.csv"),
        "--out",
        str(tmp_path / "v"),
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    table = pd.read_csv(tmp_path / "v" / "validity.csv")
    assert summary["auroc"] == pytest.approx(auroc(table["refused"], table["margin"]), abs=1e-4)
    assert table["refused"].sum() == 4 and (tmp_path / "v" / "reliability.png").exists()
    from lexprobe.toolkit.models.chat import SystemPrompt
    from lexprobe.toolkit.models.loader import load_model
    from lexprobe.toolkit.scoring.thresholds import refusal_threshold

    value, source = refusal_threshold(
        load_model("tiny-random", dtype="float32"), SystemPrompt.parse("model-default")
    )
    assert value == pytest.approx(summary["threshold"], abs=1e-3) and "validate-margin" in source
    # the same, with completions that never refuse: a clear one-line error
    comp.assign(completion="Sure.").to_csv(tmp_path / "none.csv", index=False)
    args[args.index(str(tmp_path / "comp.csv"))] = str(tmp_path / "none.csv")
    args[-1] = str(tmp_path / "v2")
    capsys.readouterr()
    assert main(args) == 2
    assert "answered every prompt" in capsys.readouterr().err
