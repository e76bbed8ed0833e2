"""Where lexprobe writes: never through a link, never over another study's run, compare's cells one
folder each, and a finished or grown comparison resumed (issue classes: writes outside --out, lost
rows)."""

from __future__ import annotations

import json
import os

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


def test_a_full_disk_while_attributing_keeps_whole_prompts_and_resume_goes_on(
    tmp_path, tiny_readout_file, capsys, monkeypatch
):
    import builtins
    import errno

    from lexprobe.toolkit.io import rows

    real, calls = builtins.open, []

    def full_on_second(path, mode="r", *args, **kwargs):  # the second group's write hits a full disk
        fh = real(path, mode, *args, **kwargs)
        if str(path).endswith("parts.jsonl") and mode == "a":
            calls.append(1)
            if len(calls) == 2:
                fh.write('{"prompt": {"id": "9", "torn')  # part of it got out before the error
                fh.close()
                raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    monkeypatch.setattr(rows, "open", full_on_second, raising=False)
    out = tmp_path / "att"
    argv = ["attribute", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file),
            "--suite", "xstest", "--limit", "10", "--method", "occlusion", "--no-faithfulness", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the disk is full; the 8 prompts written so far are intact" in err
    lines = (out / "parts.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 8 and all(line.endswith("\n") for line in lines)
    monkeypatch.delattr(rows, "open")
    assert main([*argv, "--resume"]) == 0
    assert pd.read_csv(out / "prompts.csv")["id"].nunique() == 10


def _perturb_argv(readout, suite, out):
    return ["perturb", "--model", "tiny-random", "--dtype", "float32", "--readout", str(readout),
            "--suite", str(suite), "--out", str(out)]  # fmt: skip


def test_labels_with_dollars_and_backslashes_are_drawn_as_text(tmp_path, tiny_readout_file):
    from lexprobe.toolkit.io.suites import load_suite

    frame = load_suite("xstest").frame
    frame = pd.concat([frame[frame["label"] == "safe"].head(2), frame[frame["label"] == "unsafe"].head(2)])
    frame["type"] = ["$x^2$", "$\\foo{$", "$a$", "$\\frac{$"]  # the 2nd and 4th are no valid mathtext
    frame.to_csv(tmp_path / "odd.csv", index=False)
    plan = 'models = ["tiny-random"]\nconditions = ["none", "be brief: $\\\\foo{$"]\nsuites = ["odd.csv"]\n'
    (tmp_path / "plan.toml").write_text(plan)
    assert main(["compare", "--config", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "tradeoff.png").stat().st_size > 0
    assert main(_perturb_argv(tiny_readout_file, tmp_path / "odd.csv", tmp_path / "p")) == 0
    assert list((tmp_path / "p").glob("*.png"))


def test_a_figure_that_fails_leaves_the_tables_and_the_run_ends_well(
    tmp_path, tiny_readout_file, monkeypatch
):
    from lexprobe.analyses.minimal_pairs import PerturbResult

    def broken(self, out):
        raise RuntimeError("a figure bug")

    monkeypatch.setattr(PerturbResult, "_figures", broken)
    assert main(_perturb_argv(tiny_readout_file, "xstest", tmp_path / "p") + ["--limit", "3"]) == 0
    assert len(pd.read_csv(tmp_path / "p" / "substitutions.csv"))
    assert not list((tmp_path / "p").glob("*.png"))


def test_load_result_reads_the_kind_run_json_names(tmp_path):
    import lexprobe
    from lexprobe.analyses.minimal_pairs import PairsResult

    frame = pd.DataFrame({"id": ["1"], "prompt_a": ["a b"], "prompt_b": ["c d"], "margin_a": [0.1],
                          "margin_b": [0.2], "delta": [0.1]})  # fmt: skip
    PairsResult(frame, {"note": "x"}).save(tmp_path / "p", figures=False)
    assert json.loads((tmp_path / "p" / "run.json").read_text())["kind"] == "pairs"
    (tmp_path / "p" / "scores.csv").write_text("id,prompt\r\n1,x\r\n")  # another table beside it
    assert type(lexprobe.load_result(tmp_path / "p")) is PairsResult


def test_resume_and_overwrite_together_are_refused(tmp_path, tiny_readout_file, error_line):
    assert main(_score_argv(tiny_readout_file, tmp_path / "s", "--resume", "--overwrite")) == 2
    assert "--resume continues a run and --overwrite replaces it" in error_line()


def test_a_run_json_that_is_a_directory_is_named_before_any_work(tmp_path, tiny_readout_file, error_line):
    (tmp_path / "s" / "run.json").mkdir(parents=True)
    assert main(_score_argv(tiny_readout_file, tmp_path / "s", "--overwrite")) == 2
    assert "run.json' is a directory" in error_line()
    assert not (tmp_path / "s" / "scores.csv").exists()


def test_overwrite_leaves_no_figure_of_the_run_it_replaced(tmp_path, tiny_readout_file):
    out = tmp_path / "p"
    assert main(_perturb_argv(tiny_readout_file, "xstest", out) + ["--limit", "3"]) == 0
    stale = out / "forest_unsafe.png"  # as a run with unsafe prompts drew it
    stale.write_bytes(b"old")
    os.utime(stale, (1, 1))
    assert main(_perturb_argv(tiny_readout_file, "xstest", out) + ["--limit", "3", "--overwrite"]) == 0
    assert not stale.exists() and list(out.glob("*.png"))


def test_one_file_named_two_ways_and_files_beside_the_plan(tmp_path, monkeypatch, error_line):
    from lexprobe.toolkit.io.suites import load_suite

    frame = load_suite("xstest").frame
    (tmp_path / "plans" / "a").mkdir(parents=True)
    frame.head(3).to_csv(tmp_path / "plans" / "a" / "s.csv", index=False)
    (tmp_path / "plans" / "sys.txt").write_text("Answer briefly.")
    plan = tmp_path / "plans" / "p.toml"
    plan.write_text('models = ["tiny-random"]\nsuites = ["a/s.csv", "./a/s.csv"]\n')
    assert main(["compare", "--config", str(plan), "--out", str(tmp_path / "c1")]) == 2
    line = error_line()
    assert "suites names" in line and "twice" in line
    elsewhere = tmp_path / "cwd"
    (elsewhere / "a").mkdir(parents=True)
    frame.iloc[250:252].to_csv(elsewhere / "a" / "s.csv", index=False)  # another file of the same name here
    monkeypatch.chdir(elsewhere)
    plan.write_text('models = ["tiny-random"]\nconditions = ["@sys.txt"]\nsuites = ["a/s.csv"]\nlimit = 2\n')
    assert main(["compare", "--config", str(plan), "--out", str(tmp_path / "c2")]) == 0
    cells = pd.read_csv(tmp_path / "c2" / "cells.csv")
    scored = pd.read_csv(tmp_path / "c2" / cells["dir"][0] / "scores" / "scores.csv", dtype={"id": str})
    assert list(scored["prompt"]) == list(frame.head(2)["prompt"])  # the plan's file, not this folder's
    # the plan now asks for fewer prompts: the cell reports the plan's, though its folder keeps more
    plan.write_text('models = ["tiny-random"]\nconditions = ["@sys.txt"]\nsuites = ["a/s.csv"]\nlimit = 1\n')
    assert main(["compare", "--config", str(plan), "--out", str(tmp_path / "c2"), "--resume"]) == 0
    again = pd.read_csv(tmp_path / "c2" / "cells.csv")
    assert int(again["n_safe"][0] + again["n_unsafe"][0]) == 1


def test_a_table_read_back_keeps_numbers_with_empty_cells_numbers_and_text_text(tmp_path):
    """A column of numbers with NaN cells (a probe not fitted at a site) is written with empty cells; it
    must come back as numbers, not text, while text columns keep their empty strings."""
    from lexprobe.toolkit.io.results import read_csv_table, write_csv_atomic

    frame = pd.DataFrame(
        {
            "id": ["007", "8"],
            "auroc": [0.75, float("nan")],
            "gate": ["hard", ""],
            "selected": [True, False],
            "layer": [3, 4],
        }
    )
    write_csv_atomic(frame, tmp_path / "t.csv")
    back = read_csv_table(tmp_path / "t.csv")
    assert back["id"].tolist() == ["007", "8"]
    assert pd.api.types.is_float_dtype(back["auroc"]) and back["auroc"].iloc[0] == 0.75
    assert back["auroc"].isna().iloc[1]
    assert back["gate"].tolist() == ["hard", ""]
    assert back["selected"].tolist() == [True, False] and back["layer"].tolist() == [3, 4]


def test_a_result_reads_its_numeric_columns_back_as_numbers_even_when_every_cell_is_empty(tmp_path):
    """A model without a refusal direction leaves `cosine_refusal_direction` all NaN: loaded, it is a
    column of NaN numbers, not of empty strings."""
    from lexprobe.analyses.harmfulness import HarmfulnessResult

    frame = pd.DataFrame(
        {
            "site": [0, 1],
            "method": ["mean_difference", "logistic"],
            "auroc_val": [0.7, float("nan")],
            "cosine_refusal_direction": [float("nan"), float("nan")],
        }
    )
    HarmfulnessResult(frame, {"kind": "harmfulness"}).save(tmp_path / "h", figures=False)
    back = HarmfulnessResult.load(tmp_path / "h").frame
    assert pd.api.types.is_float_dtype(back["cosine_refusal_direction"])
    assert back["cosine_refusal_direction"].isna().all() and back["auroc_val"].iloc[0] == 0.7
