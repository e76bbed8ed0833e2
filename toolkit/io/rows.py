"""Resumable row files: a study appends its result rows to a CSV as they finish, so an interrupted run
keeps them, and `--resume` continues from what is there.

What a resume can trust: a torn last row (a kill or a full disk mid-write) is cut off before anything is
appended, a full disk stops the run with every complete row intact, and a directory made with other
settings, another readout or another version of the suite file is refused (`check_resumable`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.errors import OutputError
from lexprobe.toolkit.io.results import read_csv_table, with_kind

log = logging.getLogger(__name__)
# Rows end in CRLF (RFC 4180), so a field holding a lone \r is quoted: csv quotes only the characters of
# its line terminator, and a prompt with a carriage return would otherwise split into two rows.
CSV_LINE_END = "\r\n"


class RowWriter:
    """Appends result rows to a CSV as they finish.

    `resume=True` keeps the complete rows already in the file (their ids are in `done`); without it an
    existing file is an error rather than silently overwritten. `recorded` is the row count run.json
    gives (it is updated after each write): rows past it belong to a write that may not have finished
    (part of a prompt's rows), so they are cut off and done again; fewer rows than recorded is a loss
    the user is told of.
    """

    def __init__(
        self,
        path: Path,
        columns: list[str],
        resume: bool,
        overwrite: bool = False,
        recorded: int | None = None,
    ):
        self.path, self.columns = path, columns
        self.done: set[str] = set()
        self.count = 0  # complete rows in the file
        self.old = pd.DataFrame(columns=columns)  # those rows, on resume
        if path.is_dir():
            raise OutputError(f"'{path}' is a directory, where this run writes its table: move it away")
        if path.exists() and not (resume or overwrite):
            raise OutputError(
                f"'{path}' already exists: pass --resume to continue that run or --overwrite to replace it"
            )
        if path.exists() and resume:
            header = _header(path)
            if header is not None and header != columns:  # checked before any repair touches the file
                extra = [c for c in header if c not in columns] + [c for c in columns if c not in header]
                raise OutputError(
                    f"cannot resume '{path}': its columns differ from this run's ({', '.join(extra[:3]) or 'their order'}"
                    "), so it was made with other options (--harmfulness, --layers?); give the same ones, or --overwrite"
                )
            kept = repair_torn_tail(path, columns, recorded)
            if recorded is not None and kept < recorded:
                log.warning(
                    "%s has %d complete rows but run.json records %d written, so rows were lost after "
                    "they were written (an edit, a copy cut short?): the missing ones are computed again",
                    path,
                    kept,
                    recorded,
                )
            old = read_csv_table(path)
            if list(old.columns) != columns:
                raise OutputError(
                    f"cannot resume '{path}': its columns differ from this run's; use --overwrite"
                )
            self.done, self.count, self.old = set(old["id"]), kept, old
            log.debug("resuming %s: %d complete rows", path, kept)
        self.fresh = not (path.exists() and resume)  # the header is written with the first rows, so a run
        # that fails before any row leaves no header-only file in the way of the corrected rerun

    def write(self, rows: list[dict]) -> None:
        if self.fresh:  # a new file, never an old one (or a link) opened for writing
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)
            self._append(_csv_text([self.columns]), mode="x")
            self.fresh = False
        self._append(_csv_text([[r.get(c, "") for c in self.columns] for r in rows]))
        self.done.update(str(r["id"]) for r in rows)
        self.count += len(rows)

    def _append(self, text: str, mode: str = "a") -> None:
        append_whole(self.path, text, mode, lambda: f"{max(_count_rows(self.path) - 1, 0)} rows")


def append_whole(path: Path, text: str, mode: str = "a", kept=None) -> None:
    """All of `text` appended to `path`, or none of it: on a write error (a full disk) the file is cut
    back to where it was, so it ends on a complete record, and the OutputError says what is kept
    (`kept()`, e.g. "12 rows") and to resume."""
    size = path.stat().st_size if mode == "a" and path.exists() else 0
    try:
        with open(path, mode, newline="", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
    except OSError as err:
        if path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(size)
        why = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        what = f"the {kept()} written so far are intact" if kept is not None and size else "nothing was kept"
        raise OutputError(
            f"cannot write '{path}': {why}; {what}, free space and rerun with --resume"
        ) from err


def repair_torn_tail(path: Path, columns: list[str], at_most: int | None = None) -> int:
    """Cut `path` back to its last complete row (all columns, ended by a newline), or to its first
    `at_most` rows, and return how many rows it keeps. A row torn by a kill or a full disk would
    otherwise break every later resume, or the next row would be appended onto it."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    consumed = 0

    def feed():  # the lines csv reads (\n, \r\n or \r ends), counting what it has consumed
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line

    good_end, rows = 0, -1  # the header is row -1
    reader = csv.reader(feed())
    try:
        for record in reader:
            if rows == at_most or len(record) != len(columns) or not text[:consumed].endswith(("\n", "\r")):
                break
            good_end, rows = consumed, rows + 1
    except csv.Error:
        pass
    if good_end < len(text):
        log.warning(
            "%s ended in an unfinished write (%d characters after the last complete row): cut it off, "
            "kept %d rows",
            path,
            len(text) - good_end,
            max(rows, 0),
        )
        with open(path, "r+b") as fh:
            fh.truncate(len(text[:good_end].encode("utf-8")))
    return max(rows, 0)


def check_resumable(out_dir: Path, run: dict, keys: tuple[str, ...], table: str) -> dict:
    """Refuse to resume into a directory made under different settings (model, condition, dtype,
    readout, suite file, ...); rows without a readable run.json beside them are refused too. Returns
    the old run.json ({} when there is none)."""
    path = out_dir / "run.json"
    if not path.exists():
        if (out_dir / table).exists():
            raise OutputError(
                f"cannot resume in '{out_dir}': {table} is there but its run.json is missing, so what made "
                "those rows is unknown; use a new --out or --overwrite"
            )
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not an object")
        old = with_kind(old)
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise OutputError(
            f"cannot resume in '{out_dir}': its run.json is corrupt ({err}); use a new --out or --overwrite"
        ) from err
    refuse_differences(out_dir, old, {k: run.get(k) for k in keys if k in old})
    missing = [k for k in keys if k in run and k not in old]
    if missing:
        made_by = (old.get("versions") or {}).get("lexprobe")
        by = f"lexprobe {made_by}, an earlier version, which" if made_by else "an earlier lexprobe, which"
        raise OutputError(
            f"cannot resume in '{out_dir}': its run.json was written by {by} does not record "
            f"{', '.join(missing)}; use a new --out or --overwrite"
        )
    written = old.get("rows_written")
    if written is not None and not (type(written) is int and written >= 0):
        raise OutputError(
            f"cannot resume in '{out_dir}': its run.json gives rows_written {written!r}, not a row count; "
            "use a new --out or --overwrite"
        )
    return old


def refuse_differences(out_dir: Path, old: dict, here: dict) -> None:
    """OutputError naming how `here`'s resume keys differ from those of the run in `out_dir` (`old`,
    its run.json); nothing where they agree."""
    differ = [d for k, v in here.items() if k in old for d in differences(k, old[k], v)]
    if differ:
        raise OutputError(
            f"cannot resume in '{out_dir}': it was made with other settings ({'; '.join(differ[:3])}); "
            "give the same ones, or use a new --out or --overwrite"
        )


def differences(key: str, there, here) -> list[str]:
    """How a resume key differs between the run on disk and this one, in words, down to the fields of
    a record: `settings.seed: 7 there, 8 here`; [] where they agree."""
    if there == here:
        return []
    if isinstance(there, dict) and isinstance(here, dict):
        fields = dict.fromkeys([*there, *here])
        return [d for f in fields for d in differences(f"{key}.{f}", there.get(f), here.get(f))]
    return [f"{key}: {_short(there)} there, {_short(here)} here"]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_rows_match(
    path: Path, old: pd.DataFrame, suite: pd.DataFrame, one_row_per_id: bool, numeric: tuple[str, ...]
) -> None:
    """Rows a resume keeps must be rows this run would have written: their ids in the suite file, their
    prompt, type and label the suite's, one row per id where the table has one, numbers where numbers
    go. A hand-edited or merged table is refused rather than mixed into the result."""

    def refuse(why: str):
        raise OutputError(f"cannot resume '{path}': {why}, so the file was edited or merged; use --overwrite")

    if old.empty:
        return
    known = suite.drop_duplicates("id").set_index("id")
    stray = old.loc[~old["id"].isin(known.index), "id"]
    if len(stray):
        refuse(f"it has a row for id '{stray.iloc[0]}', which the suite does not have")
    if one_row_per_id and old["id"].duplicated().any():
        refuse(f"id '{old.loc[old['id'].duplicated(), 'id'].iloc[0]}' has more than one row")
    for col in ("prompt", "type", "label"):
        if col in old.columns and col in known.columns:
            differ = old[col].astype(str).to_numpy() != known.loc[old["id"], col].astype(str).to_numpy()
            if differ.any():
                refuse(f"the {col} of id '{old['id'][differ].iloc[0]}' differs from the suite's")
    for col in numeric:
        values = pd.to_numeric(old[col], errors="coerce") if col in old.columns else None
        if values is not None and not np.isfinite(values.to_numpy(dtype=float)).all():
            bad = old["id"][~np.isfinite(values.to_numpy(dtype=float))].iloc[0]
            refuse(f"the {col} of id '{bad}' is not a number")


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=CSV_LINE_END).writerows(rows)
    return buffer.getvalue()


def _header(path: Path) -> list[str] | None:
    """The first row of a CSV file (None when it has none, or it cannot be read as CSV)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), None)
    except (csv.Error, UnicodeDecodeError):
        return None


def _count_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.reader(fh))
