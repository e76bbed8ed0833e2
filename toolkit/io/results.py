"""Results with provenance, one protocol for all (`Result`): `to_frame()`, `save(dir)`, `load(dir)`, `show()`,
notebook display.

Every output directory holds the table(s) plus `run.json`: model spec and weights sha256, dtype,
system prompt, seed, package versions, git commit, command line, wall time.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.cache import refuse_directory, sha256_file, write_json_atomic, write_text_atomic
from lexprobe.toolkit.io.locks import refuse_links

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


STYLE = """<style>
.lexprobe-result{font-family:system-ui,-apple-system,Segoe UI,sans-serif;font-size:13px;color:#222}
.lexprobe-result .lp-head{margin:4px 0 8px}.lexprobe-result .lp-head b{font-size:14px}
.lexprobe-result .lp-meta{color:#555}
.lexprobe-result table{border-collapse:collapse;margin:4px 0}
.lexprobe-result th{background:#f0f0f0;text-align:left;padding:3px 8px;border-bottom:1px solid #bbb}
.lexprobe-result td{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
.lexprobe-result td.lp-text{text-align:left;max-width:46em;overflow:hidden;text-overflow:ellipsis}
.lexprobe-result .lp-note{color:#666;font-size:12px}
</style>"""


RUN_FILE = "run.json"


class Result:
    """What every lexprobe result is: `to_frame()` (its main table, a copy), `save(dir, overwrite=False)`
    (tables as CSV, `run.json` with provenance, and figures where the result has them), `load(dir)`,
    `show()` (a table in the terminal) and a self-styled notebook view (`_repr_html_`).

    Subclasses set `filename` (the main table's file) and implement `to_frame`, `_write(out)` and
    `_read(out)`; `overview()` is the table `show()` and the notebook view display."""

    filename = "table.csv"
    kind: str = ""  # the study that makes it, as its command is named: run.json's "kind"
    run: dict

    def to_frame(self) -> pd.DataFrame:
        """The result's main table, as a copy (a row per prompt, per word, per pair, ...)."""
        raise NotImplementedError

    def overview(self) -> pd.DataFrame:
        return self.to_frame()

    def save(self, out_dir: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        """Write the tables, run.json and (unless `figures=False`) the figures to `out_dir` (made if
        needed). A directory that already holds this kind of result is refused unless `overwrite`."""
        out = check_out_dir(out_dir)
        claim(out, self.kind)
        if (out / self.filename).exists() and not overwrite:
            raise OutputError(
                f"'{out}' already holds {self.filename}: save into another directory or pass overwrite=True"
            )
        out.mkdir(parents=True, exist_ok=True)
        refuse_links(out)
        self._write(out)
        if figures:
            draw_figures(self._figures, out)
        return out

    @classmethod
    def load(cls, out_dir: str | Path):
        """The result `save` (or the command of its study) wrote to `out_dir`; `lexprobe.load_result`
        finds which kind it is by itself."""
        out = Path(out_dir).expanduser()
        if not (out / cls.filename).exists():
            raise InputError(
                f"'{out}' holds no {cls.filename}: give a directory a {cls.__name__} was saved to"
            )
        return cls._read(out)

    def _write(self, out: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls, out: Path):
        raise NotImplementedError

    def _figures(self, out: Path) -> None:
        """Draw this result's figures into `out` (none by default)."""

    def show(self, console=None, rows: int = 30) -> None:
        """The summary table in the terminal (rich), under a line naming the model and condition."""
        from lexprobe.toolkit.io.console import print_table

        print_table(
            self.overview().head(rows), title=f"{type(self).__name__}: {self.describe()}", console=console
        )

    def describe(self) -> str:
        """One line: model, dtype, system prompt, and the steering where the model was steered."""
        run = self.run or {}
        system = run.get("system_prompt")
        parts = [
            run.get("model_spec"),
            run.get("dtype"),
            f"system prompt {system.get('name') if isinstance(system, dict) else system}" if system else None,
            f"steered: {run['steering']}" if run.get("steering") else None,
        ]
        return ", ".join(str(p) for p in parts if p)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}; {len(self.to_frame())} rows in to_frame())"

    def _repr_html_(self) -> str:
        return html_block(type(self).__name__, self.describe(), frame_html(self.overview()))


def draw_figures(draw, *args):
    """`draw(*args)`, or None where a figure fails: a warning, never an error, as the tables are
    written before it and the figures are views of them."""
    try:
        return draw(*args)
    except Exception as err:  # noqa: BLE001  (matplotlib's errors have no common base)
        logging.getLogger(__name__).warning(
            "a figure could not be drawn (%s: %s); the tables are written", type(err).__name__, err
        )
        return None


def html_block(title: str, meta: str, body: str) -> str:
    """A self-styled notebook block (its own scoped stylesheet): a title line, then `body`."""
    return (
        f'{STYLE}<div class="lexprobe-result"><div class="lp-head"><b>{html.escape(title)}</b> '
        f'<span class="lp-meta">{html.escape(meta)}</span></div>{body}</div>'
    )


def frame_html(frame: pd.DataFrame, rows: int = 20, digits: int = 3) -> str:
    """A DataFrame as an HTML table: numbers rounded, text escaped and left-aligned, at most `rows` rows."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.head(rows).itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float | np.floating):
                cells.append(f"<td>{v:.{digits}f}</td>")
            elif isinstance(v, bool | np.bool_ | int | np.integer):
                cells.append(f"<td>{v}</td>")
            else:
                cells.append(f'<td class="lp-text">{html.escape(str(v))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    more = f'<p class="lp-note">{len(frame) - rows} more rows: .to_frame()</p>' if len(frame) > rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


@dataclass(repr=False)
class TableResult(Result):
    """One table plus its provenance. Subclasses set `filename`."""

    frame: pd.DataFrame
    run: dict = field(default_factory=dict)
    filename = "table.csv"
    one_row_per_id = True  # what a resumed table is checked for (toolkit.io.rows.check_rows_match)
    numeric_columns: tuple[str, ...] = ()
    side_tables: tuple[str, ...] = ()  # names of the tables saved beside it (`MultiTableResult`)

    def to_frame(self) -> pd.DataFrame:
        """The table, as a copy."""
        return self.frame.copy()

    def _files(self) -> dict[str, pd.DataFrame]:
        """The tables to write, by file name."""
        return {self.filename: self.frame}

    def _write(self, out: Path) -> None:
        """The tables, then run.json with their sha256 (`tables_sha256`: `intact` checks them)."""
        tables = self._files()
        for name, table in tables.items():
            write_csv_atomic(table, out / name)
        self.run["tables_sha256"] = tables_digest(out, tables)
        write_run(out, self.run, self.kind)

    @classmethod
    def files(cls) -> list[str]:
        """The names of the files a result of this kind writes, figures aside."""
        return [cls.filename, *(f"{name}.csv" for name in cls.side_tables), RUN_FILE]

    @classmethod
    def refuse_directories(cls, out: Path | None) -> None:
        """OutputError, before any work, where a file this result writes in `out` is a directory."""
        for name in cls.files() if out is not None else ():
            refuse_directory(out / name)

    def intact(self, out: Path) -> bool:
        """Whether the tables in `out` are those this result's run.json records (`tables_sha256`): none
        missing, cut or edited since they were written."""
        recorded = self.run.get("tables_sha256")
        if not isinstance(recorded, dict) or self.filename not in recorded:
            return False
        return all(
            (out / name).is_file() and sha256_file(out / name) == digest for name, digest in recorded.items()
        )

    @classmethod
    def _read(cls, out: Path):
        return cls(read_csv_table(out / cls.filename, numeric_columns=cls.numeric_columns), read_run(out))


class MultiTableResult(TableResult):
    """The main table plus named side tables (`tables`), each saved as `<name>.csv` next to it."""

    def __init__(self, frame: pd.DataFrame, run: dict | None = None, tables: dict | None = None):
        super().__init__(frame, run or {})
        self.tables: dict[str, pd.DataFrame] = dict(tables or {})

    def _files(self) -> dict[str, pd.DataFrame]:
        return super()._files() | {f"{name}.csv": table for name, table in self.tables.items()}

    @classmethod
    def _read(cls, out: Path):
        result = super()._read(out)
        for name in cls.side_tables:
            path = out / f"{name}.csv"
            if path.exists():
                result.tables[name] = read_csv_table(path)
        return result


# Columns whose cells are text from the user's suite or from the model (a prompt "007", a type "01",
# a word "1e3"): read back as written, never parsed as numbers. Columns a table lacks are ignored.
TEXT_COLUMNS = (
    "id",
    "type",
    "label",
    "prompt",
    "completion",
    "word",
    "replacement",
    "variant",
    "lemma",
    "pos",
    "role",
    "category",
    "strategy",
    "sense",
    "prompt_a",
    "prompt_b",
    "pair_id",
    "final_label",
    "predicted",
    "model",
    "text",
    "token",
    "trigger",
)


def read_csv_table(
    path: Path, text_columns: tuple[str, ...] = TEXT_COLUMNS, numeric_columns: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A table lexprobe wrote: ids and the other `text_columns` stay text, empty cells stay empty
    strings, except in a column of numbers, where they are NaN (a probe not fitted at a site, a gate a
    setting does not have): every column of `numeric_columns` (even where all its cells are empty), and
    any other whose filled cells are all numbers. A damaged file is an InputError naming it."""
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(text_columns, str), keep_default_na=False)
        for column in frame.columns.difference(list(text_columns)):
            if pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
                continue
            cells = frame[column].astype(str).str.strip()
            numbers = pd.to_numeric(cells.where(cells != ""), errors="coerce")
            if (
                column in numeric_columns
                or (cells != "").any()
                and numbers.notna().sum() == (cells != "").sum()
            ):
                frame[column] = numbers
        return frame
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"'{path}' is damaged ({first}): rerun the command that wrote it") from err


def read_json_file(path: Path, default=None):
    """A JSON file lexprobe wrote (`default` when it is not there); a damaged one is an InputError."""
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"'{path}' is damaged ({err}): rerun the command that wrote it") from err


def read_run(out: Path) -> dict:
    """`out`'s run.json ({} where there is none); one written before runs had a "kind" gets it from its
    "study"."""
    run = read_json_file(out / RUN_FILE, {})
    if not isinstance(run, dict):
        raise InputError(f"'{out / RUN_FILE}' is damaged (not an object): rerun the command that wrote it")
    return with_kind(run)


def with_kind(run: dict) -> dict:
    """`run` with a "kind": a run.json written before runs had one names its study as "study"."""
    if "kind" not in run and isinstance(run.get("study"), str):
        run["kind"] = run.pop("study")
    return run


def claim(out: Path, kind: str) -> None:
    """Refuse `out` for a `kind` run where it holds another study's run.json (OutputError): a run never
    replaces or mixes with a run of another kind, --overwrite or not."""
    if (out / RUN_FILE).is_dir():
        raise OutputError(
            f"'{out / RUN_FILE}' is a directory, where lexprobe writes its run.json: move it away"
        )
    if not (out / RUN_FILE).is_file():
        return
    theirs = read_run(out).get("kind")
    if theirs != kind:
        what = (
            f"a `{theirs}` run"
            if isinstance(theirs, str)
            else "a run.json that does not say which study made it"
        )
        raise OutputError(
            f"'{out}' holds {what}: this `{kind}` run needs a directory of its own "
            "(--overwrite replaces a run of the same kind only)"
        )


def tables_digest(out: Path, names) -> dict[str, str]:
    """The sha256 of each file `names` in `out`, recorded in run.json as `tables_sha256`."""
    return {name: sha256_file(out / name) for name in names}


def write_run(out: Path, run: dict, kind: str) -> None:
    """Write `run` as `out`'s run.json, with its `kind` (required: which study made the folder; `claim`
    reads it), never over another kind's run."""
    if not kind:
        raise ValueError("a run.json needs the kind of study that wrote it")
    claim(out, kind)
    write_json_atomic(out / RUN_FILE, {k: v for k, v in run.items() if k != "study"} | {"kind": kind})


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """`frame` as CSV at `path`, written to a new file beside it and moved into place (a link at `path`
    is replaced, never written through)."""
    text = frame.to_csv(index=False, lineterminator="\r\n")  # CRLF: a lone \r in a field is quoted
    write_text_atomic(path, text)


def check_out_dir(out: str | Path) -> Path:
    """An output directory that can be made or used: not a file, not under a file. Raises OutputError."""
    if not str(out).strip():
        raise OutputError("--out is empty: give an output directory")
    out = Path(out).expanduser()
    system = next((s for s in ("/proc", "/sys", "/dev") if out.resolve().is_relative_to(s)), None)
    if system:
        raise OutputError(
            f"--out '{out}' is under {system}, which holds no results: give a directory of yours"
        )
    for place in (out, *out.parents):
        if place.exists():
            if not place.is_dir():
                what = "is a file" if place == out else f"is under '{place}', which is a file"
                raise OutputError(f"--out '{out}' {what}: give a directory")
            break
    return out


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)
