"""Result tables with provenance: `to_frame()`, `save(dir)`, `load(dir)`, notebook display.

Every output directory holds the table(s) plus `run.json`: model spec and weights sha256, dtype,
system prompt, seed, package versions, git commit, command line, wall time.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from lexprobe.toolkit.cache import write_json_atomic
from lexprobe.toolkit.errors import LexprobeError

PACKAGES = ("lexprobe", "torch", "transformers", "captum", "spacy", "scipy", "pandas", "numpy")


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(**fields) -> dict:
    return {
        "lexprobe_git_commit": git_commit(),
        "versions": versions(),
        "command": sys.argv,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }


@dataclass
class TableResult:
    """One table plus its provenance. Subclasses set `filename`."""

    frame: pd.DataFrame
    run: dict = field(default_factory=dict)
    filename = "table.csv"

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(self.frame, out / self.filename)
        write_json_atomic(out / "run.json", self.run)
        return out

    @classmethod
    def load(cls, out_dir: str | Path):
        out = Path(out_dir)
        frame = pd.read_csv(out / cls.filename, dtype={"id": str}, keep_default_na=False)
        run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        return cls(frame, run)

    def _repr_html_(self) -> str:
        head = ", ".join(f"{k}={self.run[k]}" for k in ("model_spec", "system_prompt") if k in self.run)
        return f"<p><b>{type(self).__name__}</b> {head}</p>" + self.frame.head(20).to_html()


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


class RowWriter:
    """Appends result rows to a CSV as they finish, so an interrupted run keeps them.

    `resume=True` keeps the rows already in the file (their ids are in `done`); without it an existing
    file is an error rather than silently overwritten.
    """

    def __init__(self, path: Path, columns: list[str], resume: bool, overwrite: bool = False):
        self.path, self.columns = path, columns
        self.done: set[str] = set()
        if path.exists() and not (resume or overwrite):
            raise LexprobeError(
                f"'{path}' already exists: pass --resume to continue that run or --overwrite to replace it"
            )
        if path.exists() and resume:
            old = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
            if list(old.columns) != columns:
                raise LexprobeError(
                    f"cannot resume '{path}': its columns differ from this run's; use --overwrite"
                )
            self.done = set(old["id"])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerow(columns)

    def write(self, rows: list[dict]) -> None:
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writerows(rows)
        self.done.update(str(r["id"]) for r in rows)


def check_resumable(out_dir: Path, run: dict, keys: tuple[str, ...]) -> None:
    """Refuse to resume into a directory made under different settings (model, condition, dtype...)."""
    path = out_dir / "run.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    differ = [k for k in keys if k in old and old[k] != run.get(k)]
    if differ:
        raise LexprobeError(
            f"cannot resume in '{out_dir}': it was made with a different {', '.join(differ)}; "
            "use a new --out or --overwrite"
        )


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)
