"""Where lexprobe writes: never through a link, never over another study's run, compare's cells one
folder each, and a finished or grown comparison resumed (issue classes: writes outside --out, lost
rows)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lexprobe.cli import main
from lexprobe.toolkit.errors import OutputError


def _score_argv(readout, out, *extra):
    return ["score", "--model", "tiny-random", "--dtype", "float32", "--readout", str(readout),
            "--suite", "xstest", "--limit", "4", "--out", str(out), *extra]  # fmt: skip


@pytest.mark.parametrize("where", ["scores.csv", "scores.png", "sub/run.json"])
def test_a_link_in_the_output_directory_is_refused_and_its_target_untouched(
    tmp_path, tiny_readout_file, error_line, where
):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("mine")
    out = tmp_path / "out"
    (out / where).parent.mkdir(parents=True)
    (out / where).symlink_to(outside)
    assert main(_score_argv(tiny_readout_file, out)) == 2
    assert "is a symbolic link in the output directory" in error_line()
    assert outside.read_text() == "mine"


def test_a_table_written_where_a_link_was_replaces_the_link_not_its_target(tmp_path):
    from lexprobe.toolkit.io.results import write_csv_atomic

    outside = tmp_path / "elsewhere.csv"
    outside.write_text("mine")
    (tmp_path / "t.csv").symlink_to(outside)
    write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    assert outside.read_text() == "mine" and not (tmp_path / "t.csv").is_symlink()


def test_saving_a_result_into_a_folder_with_a_link_is_refused(tmp_path):
    from lexprobe.analyses.score import ScoreResult

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "run.json").symlink_to(tmp_path / "x.json")
    with pytest.raises(OutputError, match="symbolic link"):
        ScoreResult(pd.DataFrame({"id": ["1"]}), {}).save(tmp_path / "o")
    assert not (tmp_path / "x.json").exists()


def test_another_studys_folder_is_refused_by_every_command_and_by_save(
    tmp_path, tiny_readout_file, error_line
):
    out = tmp_path / "s"
    assert main(_score_argv(tiny_readout_file, out)) == 0
    before = (out / "run.json").read_text()
    assert json.loads(before)["kind"] == "score"
    (tmp_path / "plan.toml").write_text('models = ["tiny-random"]\nlimit = 2\n')
    for argv in (
        ["compare", "--config", str(tmp_path / "plan.toml"), "--out", str(out), "--overwrite"],
        ["contrast", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--out", str(out),
         "--overwrite"],
        ["perturb", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
         "--out", str(out), "--overwrite"],
    ):  # fmt: skip
        assert main(argv) == 2
        assert "holds a `score` run" in error_line()
    assert (out / "run.json").read_text() == before
    from lexprobe.analyses.minimal_pairs import PairsResult

    with pytest.raises(OutputError, match="holds a `score` run"):
        PairsResult(pd.DataFrame({"id": ["1"]}), {}).save(out, overwrite=True)
    assert (out / "run.json").read_text() == before
    assert main(_score_argv(tiny_readout_file, out, "--resume")) == 0  # the score run goes on


def test_a_run_json_from_before_kinds_is_read_by_its_study(tmp_path, tiny_readout_file, error_line):
    out = tmp_path / "s"
    assert main(_score_argv(tiny_readout_file, out)) == 0
    run = json.loads((out / "run.json").read_text())
    run["study"] = run.pop("kind")  # as lexprobe wrote it before
    (out / "run.json").write_text(json.dumps(run))
    assert main(_score_argv(tiny_readout_file, out, "--resume")) == 0
    (tmp_path / "plan.toml").write_text('models = ["tiny-random"]\nlimit = 2\n')
    assert main(["compare", "--config", str(tmp_path / "plan.toml"), "--out", str(out), "--overwrite"]) == 2
    assert "holds a `score` run" in error_line()


def _cells(out):
    return pd.read_csv(out / "cells.csv", dtype={"suite": str})


def test_cells_whose_names_read_alike_get_folders_of_their_own(tmp_path):
    from lexprobe.toolkit.io.suites import load_suite

    frame = load_suite("xstest").frame
    for name, rows in (("a", frame.iloc[:3]), ("b", frame.iloc[250:254])):
        (tmp_path / name).mkdir()
        rows.to_csv(tmp_path / name / "s.csv", index=False)
    (tmp_path / "plan.toml").write_text(
        'models = ["tiny-random"]\nconditions = ["none"]\nsuites = ["a/s.csv", "b/s.csv"]\n'
    )
    assert main(["compare", "--config", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "cmp")]) == 0
    cells = _cells(tmp_path / "cmp")
    assert cells["dir"].nunique() == 2
    for row in cells.itertuples():
        scored = pd.read_csv(tmp_path / "cmp" / row.dir / "scores" / "scores.csv")
        assert len(scored) == row.n_safe + row.n_unsafe
    assert list(cells["n_safe"] + cells["n_unsafe"]) == [3, 4]


def test_a_finished_comparison_resumes_from_anywhere_and_a_grown_plan_runs_only_its_new_cells(
    tmp_path, monkeypatch
):
    from lexprobe.toolkit.io.suites import load_suite

    load_suite("xstest").frame.iloc[[0, 1, 250, 251]].to_csv(tmp_path / "mine.csv", index=False)
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["tiny-random"]\nconditions = ["none"]\nsuites = ["mine.csv"]\n')
    out = tmp_path / "cmp"
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the plan's files are found beside it, wherever the command runs
    assert main(["compare", "--config", str(plan), "--out", str(out)]) == 0
    first = _cells(out)
    rows = (out / first["dir"][0] / "scores" / "scores.csv").read_text()
    assert main(["compare", "--config", str(plan), "--out", str(out), "--resume"]) == 0
    pd.testing.assert_frame_equal(first, _cells(out))
    plan.write_text(
        'models = ["tiny-random"]\nconditions = ["none", "model-default"]\nsuites = ["mine.csv"]\n'
    )
    assert main(["compare", "--config", str(plan), "--out", str(out), "--resume"]) == 0
    grown = _cells(out)
    assert list(grown["condition"]) == ["none", "model-default"]
    assert grown["dir"][0] == first["dir"][0]
    assert (out / first["dir"][0] / "scores" / "scores.csv").read_text() == rows  # kept
    assert (out / grown["dir"][1] / "scores" / "scores.csv").exists()


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        ('models = ["tiny-random"]\nsuite = ["xstest"]\n', "unknown key suite; did you mean suites?"),
        (
            'models = ["tiny-random"]\nperturb_types = ["homonyms"]\n',
            "perturb_types is read only with perturb = true",
        ),
    ],
)
def test_every_plan_key_is_used_or_refused(tmp_path, error_line, plan, says):
    (tmp_path / "plan.toml").write_text(plan)
    assert main(["compare", "--config", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "cmp")]) == 2
    assert says in error_line()
