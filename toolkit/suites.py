"""Prompt suites: bundled (XSTest, calibration samples) or user files (CSV, TSV, JSONL, Parquet).

A suite is a DataFrame with at least `id` (str), `prompt`, `type` and `label`; other columns ride along.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lexprobe import prompts
from lexprobe.toolkit.errors import LexprobeError

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
    source: str

    def __len__(self) -> int:
        return len(self.frame)

    def select(
        self, types: list[str] | None = None, ids: list[str] | None = None, limit: int | None = None
    ) -> Suite:
        frame = self.frame
        if types:
            unknown = sorted(set(types) - set(frame["type"]))
            if unknown:
                raise LexprobeError(
                    f"suite '{self.name}' has no prompt type {', '.join(unknown)}: "
                    f"its types are {', '.join(sorted(set(frame['type'])))}"
                )
            frame = frame[frame["type"].isin(types)]
        if ids:
            ids = [str(i) for i in ids]
            missing = [i for i in ids if i not in set(frame["id"])]
            if missing:
                raise LexprobeError(f"suite '{self.name}' has no id {', '.join(missing[:5])}: check --ids")
            frame = frame.set_index("id", drop=False).loc[ids].reset_index(drop=True)
        if limit is not None:
            if limit < 1:
                raise LexprobeError(f"--limit must be at least 1, got {limit}")
            frame = frame.head(limit)
        return Suite(self.name, frame.reset_index(drop=True), self.source)


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
        return Suite(spec, _validate(BUNDLED[spec].loader(), spec), f"bundled:{spec}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise LexprobeError(
            f"suite '{spec}' is neither a bundled suite ({', '.join(BUNDLED)}) nor an existing file: check the name or path"
        )
    frame = read_table(path)
    mapping = {prompt_column: "prompt", id_column: "id", type_column: "type", label_column: "label"}
    if prompt_column not in frame.columns:
        raise LexprobeError(
            f"suite file '{path}' has no column '{prompt_column}' (columns: {', '.join(map(str, frame.columns))}): "
            "pass --prompt-column NAME"
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
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8",
            )
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8").astype(str)
        if suffix == ".json":
            return pd.read_json(path, dtype=False, encoding="utf-8").astype(str)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path).astype(str)
    except UnicodeDecodeError:
        raise LexprobeError(f"'{path}' is not UTF-8 text: re-save it as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LexprobeError(f"cannot read '{path}' as {suffix[1:]}: {first}") from None
    raise LexprobeError(
        f"'{path}' has an unsupported extension '{suffix}': use .csv, .tsv, .jsonl, .json or .parquet"
    )


def _validate(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["id"] = frame["id"].astype(str)
    frame["prompt"] = frame["prompt"].astype(str)
    if frame.empty:
        raise LexprobeError(f"suite '{where}' has no rows: give a file with at least one prompt")
    empty = frame[frame["prompt"].str.strip() == ""]
    if len(empty):
        raise LexprobeError(
            f"suite '{where}' has an empty prompt at id {', '.join(empty['id'].head(5))}: fill it in or drop the row"
        )
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise LexprobeError(
            f"suite '{where}' repeats id {', '.join(dup.head(5))}: ids must be unique (--id-column)"
        )
    rest = [c for c in frame.columns if c not in REQUIRED]
    return frame[REQUIRED + rest].reset_index(drop=True)
