"""Prompt suites: bundled (XSTest, calibration samples) or user files (CSV, TSV, JSONL, Parquet).

A suite is a DataFrame with at least `id` (str), `prompt`, `type` and `label`; other columns ride along.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from lexprobe import prompts
from lexprobe.toolkit.errors import InputError, did_you_mean

REQUIRED = ["id", "prompt", "type", "label"]


@dataclass(frozen=True)
class BundledSuite:
    name: str
    description: str
    loader: object = field(repr=False)


def _xstest() -> pd.DataFrame:
    return pd.read_csv(prompts.path("xstest.csv"), dtype={"id": str}, keep_default_na=False)


def _calibration(kind: str, split: str):
    def load() -> pd.DataFrame:
        rows = json.loads(prompts.path(f"calibration_{kind}_{split}.json").read_text())
        return pd.DataFrame(
            {
                "id": [f"{kind}-{split}-{i}" for i in range(1, len(rows) + 1)],
                "prompt": [r["instruction"] for r in rows],
                "type": f"calibration_{kind}",
                "label": "unsafe" if kind == "harmful" else "safe",
            }
        )

    return load


BUNDLED: dict[str, BundledSuite] = {
    "xstest": BundledSuite(
        "xstest", "XSTest (Röttger et al. 2024): 250 safe prompts in 10 types + 200 unsafe contrasts", _xstest
    ),
    **{
        f"calibration-{kind}{'' if split == 'train' else '-val'}": BundledSuite(
            f"calibration-{kind}{'' if split == 'train' else '-val'}",
            f"{kind} instructions ({split} split, Arditi et al. 2024) for calibration; never XSTest",
            _calibration(kind, split),
        )
        for kind in ("harmful", "harmless")
        for split in ("train", "val")
    },
}


@dataclass
class Suite:
    name: str
    frame: pd.DataFrame
    source: str  # "bundled:<name>", a file's resolved path, or where in-memory prompts came from
    whole: Suite | None = field(default=None, repr=False)  # the suite a selection was taken from

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def full(self) -> Suite:
        """The whole suite this one was selected from (itself when it is not a selection)."""
        return self.whole if self.whole is not None else self

    @property
    def sha256(self) -> str:
        """The content's identity (ids, prompts, types, labels), so a resumed run can tell an edited file."""
        import hashlib

        table = self.frame[REQUIRED].to_csv(index=False, lineterminator="\n")
        return hashlib.sha256(table.encode("utf-8")).hexdigest()

    @property
    def spec(self) -> str:
        """What `--suite` would name: the bundled name, or the file."""
        return self.source.removeprefix("bundled:")

    def select(
        self, types: list[str] | None = None, ids: list[str] | None = None, limit: int | None = None
    ) -> Suite:
        frame = self.frame
        if types:
            unknown = sorted(set(types) - set(frame["type"]))
            if unknown:
                hint = did_you_mean(unknown[0], set(frame["type"]), quote="'")
                raise InputError(
                    f"suite '{self.name}' has no prompt type {', '.join(unknown)}: "
                    f"{hint}its types are {', '.join(sorted(set(frame['type'])))}"
                )
            frame = frame[frame["type"].isin(types)]
        if ids:
            ids = list(dict.fromkeys(str(i) for i in ids))  # `--ids 1 1` is prompt 1 once
            missing = [i for i in ids if i not in set(frame["id"])]
            if missing:
                raise InputError(f"suite '{self.name}' has no id {', '.join(missing[:5])}: check --ids")
            frame = frame.set_index("id", drop=False).loc[ids].reset_index(drop=True)
        if limit is not None:
            if limit < 1:
                raise InputError(f"--limit must be at least 1, got {limit}")
            frame = frame.head(limit)
        return Suite(self.name, frame.reset_index(drop=True), self.source, self.full)


def list_suites() -> list[tuple[str, int, str]]:
    return [(s.name, len(s.loader()), s.description) for s in BUNDLED.values()]


def load_suite(
    spec: str,
    prompt_column: str = "prompt",
    id_column: str = "id",
    type_column: str = "type",
    label_column: str = "label",
) -> Suite:
    """A bundled suite by name, or a user file with a column mapping."""
    if spec in BUNDLED:
        mapped = [
            f"--{r}-column {c}"
            for r, c in zip(ROLES, (prompt_column, id_column, type_column, label_column))
            if c != r
        ]
        if mapped:
            raise InputError(
                f"{mapped[0]} maps a suite file's columns; the bundled suite '{spec}' has its own (drop the flag)"
            )
        return Suite(spec, _validate(BUNDLED[spec].loader(), spec), f"bundled:{spec}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"suite '{spec}' is neither a bundled suite ({', '.join(BUNDLED)}) nor an existing file: "
            f"{did_you_mean(spec, BUNDLED, quote=chr(39))}check the name or path"
        )
    frame = read_table(path)
    mapping = {prompt_column: "prompt", id_column: "id", type_column: "type", label_column: "label"}
    if prompt_column not in frame.columns:
        raise InputError(
            f"suite file '{path}' has no column '{prompt_column}' (columns: {', '.join(map(str, frame.columns))}): "
            "pass --prompt-column NAME"
        )
    sources = [c for c in (prompt_column, id_column, type_column, label_column) if c in frame.columns]
    twice = sorted({c for c in sources if sources.count(c) > 1})
    if twice:
        raise InputError(
            f"column '{twice[0]}' of '{path}' is mapped to two roles: give each --*-column its own column"
        )
    clash = [v for k, v in mapping.items() if k in frame.columns and k != v and v in frame.columns]
    if clash:
        raise InputError(
            f"'{path}' has a column '{clash[0]}' and another mapped onto it: rename one, or map '{clash[0]}' itself"
        )
    frame = frame.rename(columns={k: v for k, v in mapping.items() if k in frame.columns and k != v})
    if "id" not in frame.columns:
        frame.insert(0, "id", [str(i) for i in range(1, len(frame) + 1)])
    frame["type"] = frame["type"].astype(str) if "type" in frame.columns else "all"
    frame["label"] = frame["label"].astype(str) if "label" in frame.columns else ""
    return Suite(path.stem, _validate(frame, str(path)), str(path.resolve()))


def read_table(path: Path) -> pd.DataFrame:
    """Read CSV/TSV/JSONL/JSON/Parquet into strings; bad encodings and formats become LexprobeError."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(
            f"'{path}' has an unsupported extension '{suffix}': use .csv, .tsv, .jsonl, .json or .parquet"
        )
    try:
        if path.is_dir():
            raise InputError(f"suite '{path}' is a directory: give a table file")
        if suffix in (".parquet", ".pq"):
            return as_text(pd.read_parquet(path), str(path))
        raw = path.read_bytes()
        if b"\x00" in raw[: 1 << 16]:
            raise InputError(
                f"'{path}' holds NUL bytes, so it is not a text table (binary or UTF-16?): re-save it as UTF-8"
            )
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first column's name
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise InputError(f"'{path}' has two columns named '{twice[0]}': rename one")
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".ndjson"):
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    records.append(_json_object(line, f"'{path}' line {n}"))
            return as_text(pd.DataFrame.from_records(records), str(path))
        data = json.loads(text)
        if isinstance(data, dict):  # {"column": [values]} or {"column": {"row": value}}
            return as_text(pd.DataFrame(data), str(path))
        if not isinstance(data, list):
            raise InputError(
                f"'{path}' holds a JSON {type(data).__name__}: give a list of objects with a prompt each"
            )
        records = [_check_object(r, f"'{path}' item {n}") for n, r in enumerate(data, 1)]
        return as_text(pd.DataFrame.from_records(records), str(path))
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text: re-save it as UTF-8") from None
    except (ValueError, TypeError, pd.errors.ParserError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read '{path}' as {suffix[1:]}: {first}") from err


def _json_object(line: str, where: str) -> dict:
    try:
        value = json.loads(line)
    except ValueError as err:
        raise InputError(f"{where} is not JSON ({err})") from None
    return _check_object(value, where)


def _check_object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where} is a JSON {type(value).__name__}, not an object with a prompt")
    for key, cell in value.items():
        if isinstance(cell, str) and SURROGATE.search(cell):
            raise InputError(
                f"{where} has text with an unpaired surrogate in '{key}' (a broken UTF-16 escape such as "
                "\\ud800): fix its text"
            )
    return value


def as_text(frame: pd.DataFrame, where: str = "the table") -> pd.DataFrame:
    """Every cell as the text a CSV would hold: null (None, NaN) as "", a whole number as "7" even where
    nulls made its column float (7.0), bytes decoded as UTF-8, a number or a string as `str`; a list,
    an object or any other structure is an InputError naming its column."""

    def text(value, column) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return ""
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    f"column '{column}' of {where} holds bytes that are not UTF-8 text"
                ) from None
        if isinstance(value, str | int | float | bool | np.integer | np.floating | np.bool_):
            return str(value)
        raise InputError(
            f"column '{column}' of {where} holds a {type(value).__name__} ({str(value)[:40]}), not text: "
            "give one string per cell"
        )

    if not len(frame.columns):
        return frame
    return frame.apply(lambda column: column.map(lambda v: text(v, column.name)))


LABELS = ("safe", "unsafe", "")
ROLES = ("prompt", "id", "type", "label")
SURROGATE = re.compile("[\ud800-\udfff]")
INVISIBLE = re.compile(r"[\u200b-\u200d\u2060\ufeff\u00ad]")  # zero-width characters, soft hyphen


def _validate(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    frame = frame.copy()
    if frame.empty:
        raise InputError(f"suite '{where}' has no rows: give a file with at least one prompt")
    frame["id"] = frame["id"].astype(str)
    frame["prompt"] = frame["prompt"].astype(str)
    frame["label"] = frame["label"].astype(str).str.strip().str.lower()
    odd = frame[~frame["label"].isin(LABELS)]
    if len(odd):
        raise InputError(
            f"suite '{where}' labels id '{odd['id'].iloc[0]}' '{odd['label'].iloc[0]}': a label is safe, "
            "unsafe or empty (--label-column names the column)"
        )
    no_id = frame.index[frame["id"].str.strip() == ""]
    if len(no_id):
        rows = ", ".join(str(i + 1) for i in no_id[:5])
        raise InputError(
            f"suite '{where}' has no id in row {rows}: fill the ids in, or leave the id column out to number the rows"
        )
    empty = frame[frame["prompt"].map(lambda p: INVISIBLE.sub("", p).strip() == "")]
    if len(empty):
        raise InputError(
            f"suite '{where}' has an empty prompt at id {', '.join(repr(i) for i in empty['id'].head(5))}: "
            "fill it in or drop the row"
        )
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise InputError(
            f"suite '{where}' repeats id {', '.join(repr(i) for i in dup.head(5))}: ids must be unique (--id-column)"
        )
    rest = [c for c in frame.columns if c not in REQUIRED]
    return frame[REQUIRED + rest].reset_index(drop=True)


TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")
Prompts = Union[str, Path, Sequence[str], pd.DataFrame, Suite]  # noqa: UP007  (a runtime alias)


def as_suite(prompts: Prompts, types=None, ids=None, limit: int | None = None) -> Suite:
    """What the Python API takes as prompts, as a suite: a `Suite`; a DataFrame with a `prompt` column
    (`id`, `type`, `label` optional); a `Path` or a string naming a bundled suite or a table file; any
    other string with a space in it is one prompt (a one-word prompt goes in a list); a list of
    strings is one prompt each (ids 1..n). `types`, `ids`, `limit` select as `--type`, `--ids`,
    `--limit` do: one value, a list, or values separated by commas."""
    if isinstance(prompts, Suite):
        suite = prompts
    elif isinstance(prompts, pd.DataFrame):
        suite = suite_from_frame(prompts, "dataframe", "a DataFrame")
    elif isinstance(prompts, Path):
        suite = load_suite(str(prompts))
    elif isinstance(prompts, str):
        if not prompts.strip():
            raise InputError("the prompt is empty: give a non-empty text, a list of texts or a suite")
        if prompts in BUNDLED or not any(c.isspace() for c in prompts.strip()):
            suite = load_suite(prompts.strip())  # a name or a path: a typo must not become a prompt
        else:
            suite = suite_from_frame(_frame_of([prompts]), "prompts", "given in Python")
    elif isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        suite = suite_from_frame(_frame_of(list(prompts)), "prompts", "given in Python")
    else:
        raise InputError(
            f"prompts of type {type(prompts).__name__}: give a string, a non-empty list of strings, a "
            "DataFrame with a `prompt` column, a bundled suite name or a file path"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise InputError(f"limit must be a whole number, not {limit!r}")
    return suite.select(listed(types), listed(ids), limit)


def _frame_of(prompts: list[str]) -> pd.DataFrame:
    """Prompts given in Python as a frame; text no file can hold (a lone surrogate) is an InputError."""
    for i, text in enumerate(prompts):
        if SURROGATE.search(text):
            raise InputError(
                f"prompt {i + 1} given in Python has an unpaired surrogate (a broken UTF-16 escape such as "
                "\\ud800): fix its text"
            )
    return pd.DataFrame({"prompt": prompts})


def listed(values) -> list[str] | None:
    """None, one value, values separated by commas, or a list of them -> a list of strings."""
    if values is None:
        return None
    items = [values] if isinstance(values, str | int) else list(values)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def suite_from_frame(frame: pd.DataFrame, name: str, source: str) -> Suite:
    """A suite of in-memory prompts: ids 1..n where the frame has none, type `prompt`, no label."""
    if "prompt" not in frame.columns:
        raise InputError(
            f"the prompts have no `prompt` column (columns: {', '.join(map(str, frame.columns))})"
        )
    frame = frame.reset_index(drop=True).copy()
    not_text = ~frame["prompt"].map(lambda p: isinstance(p, str))
    if not_text.any():
        row = int(not_text.to_numpy().nonzero()[0][0])
        raise InputError(
            f"prompt {row + 1} of {source} is {frame['prompt'].iloc[row]!r}, not text: fill it in or drop the row"
        )
    for column in [c for c in ROLES if c in frame.columns]:
        broken = frame[column].map(lambda v: isinstance(v, str) and bool(SURROGATE.search(v)))
        if broken.any():
            row = int(broken.to_numpy().nonzero()[0][0])
            raise InputError(
                f"the {column} of row {row + 1} of {source} has an unpaired surrogate (a broken UTF-16 "
                "escape such as \\ud800): fix its text"
            )
    if "id" not in frame.columns:
        frame.insert(0, "id", [str(i) for i in range(1, len(frame) + 1)])
    frame["id"] = as_text(frame[["id"]])["id"]  # None is no id, 7.0 is "7"
    for column, default in (("type", "prompt"), ("label", "")):
        frame[column] = frame[column].astype(str) if column in frame.columns else default
    return Suite(name, _validate(frame, source), source)
