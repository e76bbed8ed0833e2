"""Terminal output with rich: tables of results."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table


def print_table(frame: pd.DataFrame, title: str | None = None, console: Console | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for col in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    (console or Console()).print(table)
