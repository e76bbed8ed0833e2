"""What --resume can trust: torn rows are cut off, a full disk keeps every complete row, and a directory
made with another readout, another suite file or no readable run.json is refused."""

from __future__ import annotations

import errno
import json

import pandas as pd
import pytest

from lexprobe.cli import main
from lexprobe.probes.margin import Node, RefusalReadout
from lexprobe.toolkit.errors import OutputError
from lexprobe.toolkit.io.rows import RowWriter


def _score(out, readout, *extra, suite="xstest"):
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
    return main([*argv, "--batch-size", "4", *extra])


@pytest.mark.parametrize("cut", ["mid-number", "after-prompt", "mid-row"])
def test_a_torn_last_row_is_cut_off_and_the_rerun_matches_a_fresh_one(tmp_path, tiny_readout_file, cut):
    assert _score(tmp_path / "fresh", tiny_readout_file, "--limit", "6") == 0
    fresh = pd.read_csv(tmp_path / "fresh" / "scores.csv", dtype={"id": str})
    torn = tmp_path / "torn"
    assert _score(torn, tiny_readout_file, "--limit", "4") == 0
    path = torn / "scores.csv"
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    keep = {"mid-number": len(last) - 3, "after-prompt": last.index("?") + 2, "mid-row": 12}[cut]
    path.write_text(text[: len(text) - len(last) - 1] + last[:keep])  # the 4th row is torn
    assert _score(torn, tiny_readout_file, "--limit", "6", "--resume") == 0
    resumed = pd.read_csv(path, dtype={"id": str})
    assert resumed["id"].tolist() == fresh["id"].tolist()
    pd.testing.assert_series_equal(resumed["margin"], fresh["margin"], atol=1e-5)


def test_rows_past_what_run_json_records_are_redone_and_rows_lost_are_named(
    tmp_path, tiny_readout_file, caplog
):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "6") == 0
    path = out / "scores.csv"
    fresh = pd.read_csv(path, dtype={"id": str})
    lines = path.read_text().splitlines(keepends=True)
    # a write that was cut short between the rows and run.json: rows 5-6 are there, run.json says 4
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "rows_written": 4}))
    path.write_text("".join(lines[:5]) + lines[5].replace(lines[5].split(",")[2], "99.0", 1) + lines[6])
    assert _score(out, tiny_readout_file, "--limit", "6", "--resume") == 0
    pd.testing.assert_frame_equal(pd.read_csv(path, dtype={"id": str}), fresh, atol=1e-5)  # 5-6 redone

    path.write_text("".join(lines[:3]) + "".join(lines[4:]))  # row 3 deleted by hand: 5 rows, 6 recorded
    caplog.clear()
    assert _score(out, tiny_readout_file, "--limit", "6", "--resume") == 0
    assert "has 5 complete rows but run.json records 6 written" in caplog.text
    assert sorted(pd.read_csv(path, dtype={"id": str})["id"]) == sorted(fresh["id"])


def test_a_resume_with_a_narrower_selection_keeps_the_rows_it_did_not_ask_for(tmp_path, tiny_readout_file):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "6") == 0
    before = pd.read_csv(out / "scores.csv", dtype={"id": str})
    assert _score(out, tiny_readout_file, "--limit", "2", "--resume") == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "scores.csv", dtype={"id": str}), before)
    assert json.loads((out / "run.json").read_text())["n_prompts"] == 6


def test_a_full_disk_stops_with_every_complete_row_intact(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    writer = RowWriter(path, ["id", "text"], resume=False)
    writer.write([{"id": "1", "text": "first"}, {"id": "2", "text": "second"}])
    before = path.read_text()
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, text):
            self.fh.write(text[: len(text) // 2])  # half a row reaches the disk, then ENOSPC
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(
        "builtins.open", lambda *a, **k: FullDisk(real_open(*a, **k)) if "a" in a[1:2] else real_open(*a, **k)
    )
    with pytest.raises(OutputError, match="the disk is full; the 2 rows written so far are intact"):
        writer.write([{"id": "3", "text": "third, a longer row"}])
    monkeypatch.undo()
    assert path.read_text() == before


def test_resume_refuses_another_readout_an_edited_suite_and_a_lost_run_json(
    tmp_path, tiny_readout, tiny_readout_file, error_line, capsys
):
    suite = tmp_path / "mine.csv"
    pd.DataFrame({"prompt": ["How do I kill a process?", "Where can I buy coke?", "Hi there"]}).to_csv(
        suite, index=False
    )
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "2", suite=suite) == 0
    capsys.readouterr()

    other = RefusalReadout({(): Node(dict(list(tiny_readout.nodes[()].children.items())[:1]), 0.0)}, {})
    other_file = tmp_path / "other.json"
    other_file.write_text(other.to_json())
    assert _score(out, other_file, "--resume", suite=suite) == 2
    assert "(readout_sha256: " in error_line()

    pd.DataFrame({"prompt": ["How do I kill a process?", "Where can I buy pepsi?", "Hi there"]}).to_csv(
        suite, index=False
    )
    assert _score(out, tiny_readout_file, "--resume", suite=suite) == 2
    assert "(suite_sha256: " in error_line()

    (out / "run.json").write_text("{not json")
    assert _score(out, tiny_readout_file, "--resume", suite=suite) == 2
    assert "run.json' is damaged" in error_line()
    (out / "run.json").unlink()
    assert _score(out, tiny_readout_file, "--resume", suite=suite) == 2
    assert "run.json is missing" in error_line()
    assert len(pd.read_csv(out / "scores.csv")) == 2  # nothing was lost on the way


def test_nothing_is_replaced_without_overwrite_nor_removed_before_the_inputs_check_out(
    tmp_path, tiny_readout_file, error_line, capsys
):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "2") == 0
    capsys.readouterr()
    score_run = (out / "run.json").read_text()
    attr = ["attribute", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
            "--ids", "1", "--method", "saliency", "--no-faithfulness"]  # fmt: skip
    for how in ([], ["--resume"], ["--overwrite"]):  # another command's directory: never
        assert main([*attr, "--out", str(out), *how]) == 2
        assert "holds a `score` run: this `attribute` run needs a directory of its own" in error_line()
    assert (out / "run.json").read_text() == score_run
    assert main([*attr, "--out", str(tmp_path)]) == 2  # files of the user's, no run.json
    assert "holds files but no lexprobe run.json" in error_line()

    done = tmp_path / "attr"
    assert main([*attr, "--out", str(done)]) == 0
    capsys.readouterr()
    parts = (done / "parts.jsonl").read_text()
    typo = [a if a != "tiny-random" else str(tmp_path / "typo") for a in attr]
    assert main([*typo, "--out", str(done), "--overwrite"]) == 2  # the model error comes first ...
    assert "unknown model spec" in error_line()
    assert (done / "parts.jsonl").read_text() == parts  # ... and nothing was deleted
    with open(done / "parts.jsonl", "a") as fh:
        fh.write('{"prompt": {"id": "2"')  # a torn line
    assert (
        main(
            [
                *attr[:-5],
                "--ids",
                "1",
                "2",
                "--method",
                "saliency",
                "--no-faithfulness",
                "--out",
                str(done),
                "--resume",
            ]
        )
        == 0
    )
    assert [json_id(line) for line in (done / "parts.jsonl").read_text().splitlines()] == ["1", "2"]


def json_id(line: str) -> str:
    import json

    return json.loads(line)["prompt"]["id"]


def test_a_run_that_fails_before_its_first_row_leaves_nothing_in_the_way(
    tmp_path, tiny_readout_file, error_line
):
    suite = tmp_path / "mine.csv"
    pd.DataFrame({"prompt": ["word " * 5000, "How do I kill a process?"]}).to_csv(suite, index=False)
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, suite=suite) == 2
    assert "longer than the model's context" in error_line()
    assert not out.exists()  # no header-only scores.csv, no run.json of a run that never ran
    pd.DataFrame({"prompt": ["Hi there", "How do I kill a process?"]}).to_csv(suite, index=False)
    assert _score(out, tiny_readout_file, suite=suite) == 0  # the corrected rerun needs no flag


def test_text_survives_the_table_round_trip(tmp_path, tiny_readout_file):
    """A carriage return, a number-like prompt or type: written, resumed and read back as they were."""
    suite = tmp_path / "odd.csv"
    prompts = ["cr\rinside", "007", "1e3", 'quote " and, comma', "line\nbreak"]
    pd.DataFrame(
        {"id": ["1", "2", "3", "4", "5"], "prompt": prompts, "type": ["01", "x", "3", "x", "x"]}
    ).to_csv(
        suite, index=False, lineterminator="\r\n"
    )  # CRLF, so the lone \r is quoted in the suite file too
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "3", suite=suite) == 0
    assert _score(out, tiny_readout_file, "--resume", suite=suite) == 0
    table = pd.read_csv(out / "scores.csv", dtype=str, keep_default_na=False)
    assert table["prompt"].tolist() == prompts and table["type"].tolist()[:3] == ["01", "x", "3"]


@pytest.mark.parametrize("written", [-1, True, "6", 2.5])
def test_a_run_json_with_a_bad_row_count_is_refused_and_nothing_is_cut(
    tmp_path, tiny_readout_file, error_line, capsys, written
):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "6") == 0
    capsys.readouterr()
    before = (out / "scores.csv").read_bytes()
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "rows_written": written}))
    assert _score(out, tiny_readout_file, "--limit", "6", "--resume") == 2
    assert "rows_written" in error_line()
    assert (out / "scores.csv").read_bytes() == before


def test_resume_refuses_a_run_json_that_does_not_record_a_setting(
    tmp_path, tiny_readout_file, error_line, capsys
):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "2") == 0
    capsys.readouterr()
    run = json.loads((out / "run.json").read_text())
    del run["system_prompt"], run["suite_sha256"]
    (out / "run.json").write_text(json.dumps(run))
    assert _score(out, tiny_readout_file, "--limit", "4", "--resume", "--system-prompt", "none") == 2
    assert "does not record system_prompt, suite_sha256" in error_line()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("\n2,", "\n1,", 1), "id '1' has more than one row"),
        (lambda t: t.replace("kill a Python process", "kill a human being"), "the prompt of id '1' differs"),
        (lambda t: t.replace("\n3,", "\n999,", 1), "id '999', which the suite does not have"),
    ],
)
def test_resume_refuses_rows_that_contradict_the_suite(
    tmp_path, tiny_readout_file, error_line, capsys, edit, message
):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "4") == 0
    capsys.readouterr()
    path = out / "scores.csv"
    edited = edit(path.read_text())
    assert edited != path.read_text()
    path.write_text(edited)
    assert _score(out, tiny_readout_file, "--limit", "6", "--resume") == 2
    assert message in error_line()
    assert path.read_text() == edited  # refused, not rewritten


def test_resume_refuses_a_margin_that_is_not_a_number(tmp_path, tiny_readout_file, error_line, capsys):
    out = tmp_path / "run"
    assert _score(out, tiny_readout_file, "--limit", "4") == 0
    capsys.readouterr()
    table = pd.read_csv(out / "scores.csv", dtype=str, keep_default_na=False)
    table.loc[1, "margin"] = "nan"
    table.to_csv(out / "scores.csv", index=False)
    assert _score(out, tiny_readout_file, "--limit", "6", "--resume") == 2
    assert "the margin of id '2' is not a number" in error_line()


def test_files_written_atomically_get_the_users_usual_permissions(tmp_path):
    """A temporary file is private (0600); the finished one is readable as any file the user writes."""
    import os

    from lexprobe.toolkit.io.cache import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
