"""One run per output directory; one builder per cache entry; a failed run leaves no directory behind."""

from __future__ import annotations

import os
import subprocess
import sys

from lexprobe.cli import main
from lexprobe.toolkit.io.locks import building, exclusive


def test_a_second_run_on_the_same_out_exits_2_naming_the_holder(tmp_path, tiny_readout_file):
    out = tmp_path / "run"
    argv = ["score", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
            "--limit", "2", "--out", str(out)]  # fmt: skip
    with exclusive(out):  # a run in progress (this process) holds the directory
        proc = subprocess.run([sys.executable, "-m", "lexprobe", *argv], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and f"in use by lexprobe pid {os.getpid()}" in proc.stderr
        assert not (out / "scores.csv").exists()
    assert main(argv) == 0  # free again: the run goes ahead
    assert (out / "scores.csv").exists() and not (out / ".lexprobe.lock.owner").exists()


def test_a_failed_run_leaves_no_directory(tmp_path, error_line):
    out = tmp_path / "never"
    assert main(["score", "--model", "tiny-random", "--suite", "no-such-suite", "--out", str(out)]) == 2
    assert "neither a bundled suite" in error_line()
    assert not out.exists()  # the corrected rerun finds nothing in its way


def test_a_builder_clears_what_a_killed_build_left(tmp_path):
    entry = tmp_path / "models" / "abc"
    (tmp_path / "models" / "abc.tmp-1234").mkdir(parents=True)
    (tmp_path / "models" / "abc.tmp-99").write_text("{")  # a half-written file
    (tmp_path / "models" / "other.tmp-1").mkdir()
    with building(entry):
        left = sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith("."))
    assert left == ["other.tmp-1"]  # only this entry's leftovers go
