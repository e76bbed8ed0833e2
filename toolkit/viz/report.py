"""Self-contained HTML reports: tables, PNG figures embedded as base64 data URIs, inline CSS, no
scripts and no external links, so one file can be mailed or archived. Knows nothing about analyses:
callers hand it frames, paths and text."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:24px;margin-bottom:4px}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f0f0f0}.flag{color:#b2182b;font-weight:600}
.verdict{border-left:5px solid #b2182b;background:#fff5f2;padding:10px 16px;margin:16px 0;font-size:15px;
line-height:1.5}
.verdict p{margin:4px 0}
.note{font-size:13px;color:#555}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px}
dl.prov dt{color:#555}dl.prov dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
details{margin:10px 0}summary{cursor:pointer;font-weight:600}
"""


def esc(text) -> str:
    return html.escape(str(text))


def _cell(value, digits: int) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return esc(value)


def table(
    frame: pd.DataFrame | None, digits: int = 2, empty: str = "(no rows)", flag_column: str | None = None
) -> str:
    """An HTML table of a frame (floats rounded, NaN blank, booleans yes/no); cells of `flag_column`
    that are true are marked in red."""
    if frame is None or not len(frame):
        return f'<p class="note">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for rec in frame.astype(object).itertuples(index=False):
        cells = [
            f'<td class="flag">{_cell(v, digits)}</td>'
            if col == flag_column and bool(v)
            else f"<td>{_cell(v, digits)}</td>"
            for col, v in zip(frame.columns, rec)
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def data_uri(path: str | Path) -> str:
    """The file as a base64 data URI (PNG unless the suffix says SVG or JPEG)."""
    mime = MIME.get(Path(path).suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: str | Path | None, caption: str = "") -> str:
    """A PNG (or SVG) embedded in the page (nothing when the file is missing). Figure functions write
    the format their path's suffix names, so callers that embed pass a .png path."""
    if path is None or not Path(path).exists():
        return ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(caption)}" src="{data_uri(path)}">{cap}</figure>'


def definitions(items: dict) -> str:
    """Key/value pairs (provenance) as a definition list; None values are left out."""
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items() if v is not None)
    return f'<dl class="prov">{rows}</dl>'


def page(title: str, body: list[str], css: str = "") -> str:
    """The whole document: this module's CSS plus `css`, inline."""
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}{css}</style></head><body>{''.join(body)}</body></html>"
    )
