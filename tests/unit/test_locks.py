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


def test_two_processes_calibrate_a_readout_once(tmp_path):
    """Started together, one process calibrates while the other waits for the lock and reads the result."""
    script = (
        "from lexprobe.toolkit.readouts.calibrate import get_readout\n"
        "from lexprobe.probes.readout import ReadoutSettings\n"
        "from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt\n"
        "from lexprobe.toolkit.models.loader import load_model\n"
        "lm = load_model('tiny-random', dtype='float32')\n"
        "fmt = ChatFormat(lm.tokenizer, SystemPrompt.parse('model-default'))\n"
        "r = get_readout(lm, fmt, settings=ReadoutSettings(n_per_class=4, max_new_tokens=4))\n"
        "print(len(r.nodes))\n"
    )
    env = {**os.environ, "LEXPROBE_CACHE": str(tmp_path), "LEXPROBE_QUIET": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in results]
    assert len({out for out, _ in results}) == 1  # the same readout
    calibrated = [err for _, err in results if "calibration prompts" in err]  # the fallback warning
    assert len(calibrated) == 1
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_an_output_directory_that_cannot_be_written_is_one_line(
    tmp_path, tiny_readout_file, error_line, monkeypatch
):
    import errno
    import pathlib

    real = pathlib.Path.write_text

    def read_only(self, *args, **kwargs):  # as a read-only mount answers (root ignores chmod)
        if self.name == ".lexprobe.lock.owner":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    out = tmp_path / "ro"
    argv = ["score", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
            "--limit", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert f"cannot write in the output directory '{out}': Read-only file system" in error_line()


def test_a_disk_error_mid_run_ends_in_one_line_that_says_resume(
    tmp_path, tiny_readout_file, capsys, monkeypatch
):
    import errno

    from lexprobe.toolkit.io import results

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "scores.png")

    monkeypatch.setattr(results, "write_csv_atomic", full)
    argv = ["score", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest",
            "--limit", "2", "--out", str(tmp_path / "full")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # the run had started: its model line comes first
    assert "Traceback" not in err and line.startswith("lexprobe: error: cannot read or write")
    assert "No space left on device" in line and "rerun with --resume" in line
