"""The `lexprobe` command line on tiny-random: outputs, resume, and one-line exit-2 errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from lexprobe.cli import main


def _score(tmp_path, readout, *extra, out="run"):
    return main(
        [
            "score",
            "--model",
            "tiny-random",
            "--readout",
            str(readout),
            "--suite",
            "xstest",
            "--out",
            str(tmp_path / out),
            *extra,
        ]
    )


def test_score_writes_rows_provenance_and_summary(tmp_path, tiny_readout_file, capsys):
    assert _score(tmp_path, tiny_readout_file, "--limit", "6", "--batch-size", "4") == 0
    frame = pd.read_csv(tmp_path / "run" / "scores.csv", dtype={"id": str})
    assert list(frame.columns[:6]) == ["id", "type", "label", "prompt", "margin", "p_refuse"]
    assert frame["id"].tolist() == [str(i) for i in range(1, 7)]  # suite order, not batch order
    assert ((frame["p_refuse"] > 0.5) == (frame["margin"] > 0)).all()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "complete" and run["model_spec"] == "tiny-random"
    assert len(run["weights_sha256"]) == 64 and run["system_prompt"]["name"] == "model-default"
    assert run["versions"]["torch"].startswith("2.13")
    assert "homonyms" in capsys.readouterr().out  # the per-type summary


def test_resume_scores_only_missing_rows_and_matches_a_fresh_run(tmp_path, tiny_readout_file):
    assert _score(tmp_path, tiny_readout_file, "--limit", "8", out="fresh") == 0
    fresh = pd.read_csv(tmp_path / "fresh" / "scores.csv", dtype={"id": str})
    # an interrupted run: only some rows on disk
    (tmp_path / "partial").mkdir()
    fresh.iloc[[1, 4, 6]].to_csv(tmp_path / "partial" / "scores.csv", index=False)
    sentinel = fresh.iloc[[1, 4, 6]].assign(margin=123.0)  # rows already there must be kept, not recomputed
    sentinel.to_csv(tmp_path / "partial" / "scores.csv", index=False)
    run_json = (tmp_path / "fresh" / "run.json").read_text()
    (tmp_path / "partial" / "run.json").write_text(run_json)
    assert _score(tmp_path, tiny_readout_file, "--limit", "8", "--resume", out="partial") == 0
    resumed = pd.read_csv(tmp_path / "partial" / "scores.csv", dtype={"id": str})
    assert resumed["id"].tolist() == fresh["id"].tolist()
    assert (resumed.loc[[1, 4, 6], "margin"] == 123.0).all()
    others = [0, 2, 3, 5, 7]
    pd.testing.assert_series_equal(resumed.loc[others, "margin"], fresh.loc[others, "margin"], atol=1e-6)
    run = json.loads((tmp_path / "partial" / "run.json").read_text())
    assert run["n_prompts_this_run"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "unknown model spec 'nope'"),
        (["--suite", "missing.csv"], "neither a bundled suite"),
        (["--system-prompt", "llama"], "unknown system prompt preset"),
        (["--type", "homonym"], "no prompt type homonym"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--dtype", "fp8"], "unknown --dtype"),
    ],
)
def test_bad_input_exits_2_with_one_line(error_line, tmp_path, tiny_readout_file, args, message):
    base = ["score", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest"]
    assert main([*base, "--out", str(tmp_path / "o"), *args]) == 2
    assert message in error_line()


def test_bad_suite_files_exit_2(error_line, tmp_path, tiny_readout_file):
    cases = {
        "nocol.csv": (b"question\nhi\n", "no column 'prompt'"),
        "empty.csv": (b"id,prompt\n1,hi\n2,  \n", "empty prompt at id '2'"),
        "latin.csv": ("prompt\ncaf\xe9\n".encode("latin-1"), "not UTF-8"),
        "long.csv": (("prompt\n" + "word " * 700 + "\n").encode(), "longer than the model's context"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        rc = main(
            [
                "score",
                "--model",
                "tiny-random",
                "--readout",
                str(tiny_readout_file),
                "--suite",
                str(path),
                "--out",
                str(tmp_path / f"out-{name}"),
            ]
        )
        assert rc == 2, name
        assert message in error_line(), name


def test_existing_output_is_never_overwritten_silently(error_line, tmp_path, tiny_readout_file, capsys):
    assert _score(tmp_path, tiny_readout_file, "--limit", "2") == 0
    before = (tmp_path / "run" / "scores.csv").read_text()
    capsys.readouterr()
    assert _score(tmp_path, tiny_readout_file, "--limit", "2") == 2
    assert "--resume" in error_line()
    assert (tmp_path / "run" / "scores.csv").read_text() == before


def test_resume_refuses_a_different_condition(error_line, tmp_path, tiny_readout_file, capsys):
    assert _score(tmp_path, tiny_readout_file, "--limit", "2") == 0
    capsys.readouterr()
    assert _score(tmp_path, tiny_readout_file, "--limit", "4", "--resume", "--system-prompt", "none") == 2
    assert "system_prompt." in (line := error_line()) and " there, " in line


def test_console_script_usage_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lexprobe.cli", "score", "--suite", "xstest"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--out" in proc.stderr


def test_suites_lists_bundled(capsys):
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    assert "xstest" in out and "450" in out and "calibration-harmful" in out


@pytest.mark.parametrize("native_bf16", [False, True], ids=["avx2", "native-bf16"])
def test_auto_dtype_is_said_on_stderr_and_recorded(
    tmp_path, tiny_readout_file, capsys, monkeypatch, native_bf16
):
    """On a CPU with native bf16 `auto` scores in bf16, elsewhere in float32; either way it says so."""
    from lexprobe.toolkit.models import devices

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: native_bf16)
    assert _score(tmp_path, tiny_readout_file, "--limit", "2", "--dtype", "auto", "--device", "cpu") == 0
    name = "bfloat16" if native_bf16 else "float32"
    why = devices.AUTO_DTYPE_WHY["cpu-bf16" if native_bf16 else "cpu"]
    assert f"lexprobe: tiny-random in {name} on cpu ({why})" in capsys.readouterr().err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["dtype"] == name and run["dtype_reason"] == why
    assert _score(tmp_path, tiny_readout_file, "--limit", "2", "--dtype", "bfloat16", out="bf16") == 0
    run = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert run["dtype"] == "bfloat16" and run["dtype_reason"] == "--dtype bfloat16"
    assert "tiny-random in" not in capsys.readouterr().err  # said only when lexprobe chose
