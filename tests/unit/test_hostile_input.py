"""Hostile input gets one line and exit code 2, and suite text reaches the terminal as text."""

from __future__ import annotations

import os
import pickle

import pandas as pd
import pytest

from lexprobe.cli import main


def _score(readout, suite, out, *extra):
    argv = [
        "score",
        "--model",
        "tiny-random",
        "--readout",
        str(readout),
        "--suite",
        str(suite),
        "--out",
        str(out),
    ]
    return main([*argv, *extra])


def test_markup_and_escape_sequences_in_a_suite_are_printed_as_text(tmp_path, tiny_readout_file, capsys):
    suite = tmp_path / "s.csv"
    pd.DataFrame(
        {"prompt": ["How do I kill a process?", "Hi there you"], "type": ["[/red]", "\x1b[31mred"]}
    ).to_csv(suite, index=False)
    assert _score(tiny_readout_file, suite, tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "[/red]" in out and "\\x1b[31mred" in out and "\x1b[31m" not in out


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--system-prompt", "@{dir}"], "cannot read system prompt file"),
        (["--system-prompt", "@{empty}"], "is empty"),
        (["--readout", "{dir}"], "cannot read readout file"),
        (["--out", ""], "--out is empty"),
        (["--out", "/proc/lexprobe"], "is under /proc"),
        (["--out", "/dev/null"], "is under /dev"),
    ],
)
def test_files_and_folders_of_the_wrong_kind_are_one_line(
    tmp_path, tiny_readout_file, flag, message, error_line
):
    (tmp_path / "empty.txt").write_text("  \n")
    flag = [f.format(dir=tmp_path, empty=tmp_path / "empty.txt") for f in flag]
    argv = ["score", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest"]
    argv += ["--limit", "1"] + ([] if "--out" in flag else ["--out", str(tmp_path / "o")])
    assert main([*argv, *flag]) == 2
    assert message in error_line()


class _RunsCode:  # a pickle that would run code when loaded: torch.load(weights_only=True) must refuse it
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("weights", ["random-safetensors", "random-bin", "code-bin"])
def test_bad_weights_files_are_a_model_error_and_run_no_code(tiny, tmp_path, error_line, capsys, weights):
    model_dir = tmp_path / "broken"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    marker = tmp_path / "code-ran"
    if weights == "random-safetensors":
        (model_dir / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    else:
        (model_dir / "model.safetensors").unlink()
        with open(model_dir / "pytorch_model.bin", "wb") as fh:
            if weights == "code-bin":
                pickle.dump(_RunsCode(marker), fh)
            else:
                fh.write(os.urandom(4096))
    capsys.readouterr()  # what saving the model printed
    assert (
        main(
            [
                "score",
                "--model",
                str(model_dir),
                "--suite",
                "xstest",
                "--limit",
                "1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    line = error_line()
    assert "cannot load a causal LM from" in line and str(model_dir) in line
    assert not marker.exists()


def test_a_ragged_csv_names_its_line(tmp_path, error_line):
    suite = tmp_path / "ragged.csv"
    suite.write_text("id,prompt\n1,hello there\n2,a,b\n")
    assert main(["score", "--model", "tiny-random", "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    assert "line 3" in error_line()


def test_damaged_saved_results_are_one_line(tmp_path, tiny_readout_file, error_line, capsys):
    import lexprobe

    src = tmp_path / "att"
    argv = ["attribute", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
            "--ids", "1", "2", "--method", "saliency", "--no-faithfulness", "--out", str(src)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    with open(src / "attributions.csv", "a") as fh:
        fh.write('1,0,"How')  # a torn quoted field
    assert main(["heatmap", "--from", str(src), "--out", str(tmp_path / "h")]) == 2
    assert "attributions.csv' is damaged" in error_line()
    with pytest.raises(lexprobe.InputError, match="is damaged"):
        lexprobe.load_result(src)
    (src / "attributions.csv").unlink()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "scores.csv").write_text("id,margin\n1,0.5\n")
    (tmp_path / "s" / "run.json").write_text("[1, 2")
    with pytest.raises(lexprobe.InputError, match="run.json' is damaged"):
        lexprobe.load_result(tmp_path / "s")


def _attribute(readout, out, *extra):
    argv = ["attribute", "--model", "tiny-random", "--readout", str(readout), "--suite", "xstest",
            "--method", "saliency", "--no-faithfulness", "--out", str(out)]  # fmt: skip
    return main([*argv, *extra])


@pytest.mark.parametrize("damage", ["middle-line", "twice", "not-a-list"])
def test_an_edited_parts_file_is_refused_not_cut(tmp_path, tiny_readout_file, error_line, capsys, damage):
    out = tmp_path / "attr"
    assert _attribute(tiny_readout_file, out, "--limit", "3") == 0
    capsys.readouterr()
    path = out / "parts.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    if damage == "middle-line":
        lines[1] = "garbage\n"
    elif damage == "twice":
        lines.append(lines[0])
    else:
        lines[1] = lines[1].replace('"attributions": [', '"attributions": 7, "x": [', 1)
    path.write_text("".join(lines))
    assert _attribute(tiny_readout_file, out, "--limit", "4", "--resume") == 2
    line = error_line()
    assert {"middle-line": "line 2 is not a finished prompt", "twice": "twice (line 4)",
            "not-a-list": "line 2 is not a finished prompt"}[damage] in line  # fmt: skip
    assert path.read_text() == "".join(lines)  # nothing after the damage was thrown away


def test_evaluate_and_perturb_inputs_that_select_nothing(tmp_path, tiny_readout_file, error_line, capsys):
    assert main(["evaluate", "--completions", "xstest-llama2orig", "--type", "nonexistent",
                 "--out", str(tmp_path / "e")]) == 2  # fmt: skip
    assert "has no prompt of type nonexistent (types: contrast_" in error_line()
    perturb = ["perturb", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
               "--limit", "2", "--strategy", "user"]  # fmt: skip
    assert main([*perturb, "--out", str(tmp_path / "p1")]) == 2
    assert "--strategy user substitutes only the words --rewrite names" in error_line()
    assert not (tmp_path / "p1").exists()
    assert main([*perturb, "--rewrite", "zebra=horse", "--out", str(tmp_path / "p2")]) == 0  # no swap: empty
    assert len(pd.read_csv(tmp_path / "p2" / "substitutions.csv")) == 0


def test_two_completion_files_of_one_name_are_told_apart(tmp_path):
    from lexprobe.analyses.evaluate import EvaluateConfig, run_evaluate

    table = pd.read_csv("prompts/xstest_completions_llama2orig.csv", dtype=str, keep_default_na=False).head(
        20
    )
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "classified.csv", index=False)
    specs = [str(tmp_path / n / "classified.csv") for n in ("a", "b")]
    result = run_evaluate(EvaluateConfig(completions=specs, label_column="final_label"))
    assert sorted(result.frame["model"].unique()) == ["classified [a]", "classified [b]"]


def test_column_flags_on_a_bundled_suite_and_odd_completions_files(tmp_path, error_line):
    from lexprobe.toolkit.behaviour.classify import FULL_REFUSAL, classify

    assert main(["score", "--model", "tiny-random", "--suite", "xstest", "--prompt-column", "id",
                 "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    assert "--prompt-column id maps a suite file's columns" in error_line()
    for name, rows in (("none.csv", []), ("twice.csv", [("1", "a"), ("1", "b")])):
        pd.DataFrame(rows, columns=["id", "completion"]).to_csv(tmp_path / name, index=False)
        assert (
            main(["classify", "--completions", str(tmp_path / name), "--out", str(tmp_path / name[:-4])]) == 2
        )
        assert ("has no rows" if not rows else "has id '1' twice") in error_line()
    assert classify(["\u200b\u200b", ""], name="strmatch") == [FULL_REFUSAL, FULL_REFUSAL]  # blank either way
