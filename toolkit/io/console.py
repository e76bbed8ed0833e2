"""Terminal output with rich: tables of results. Text from suites and files is shown as text: rich markup
in it (`[/red]`) is escaped and control characters (escape sequences) are spelled out, never obeyed."""

from __future__ import annotations

import re

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text) -> str:
    """`text` for the terminal: control characters as \\xNN, rich markup escaped."""
    return escape(CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)))


def print_table(frame: pd.DataFrame, title: str | None = None, console: Console | None = None) -> None:
    table = Table(title=safe(title) if title else None, show_lines=False)
    for col in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(safe(col), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else safe(v) for v in row))
    (console or Console()).print(table)
