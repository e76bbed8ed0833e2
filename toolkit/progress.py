"""Progress bars for long work (tqdm on stderr; silent when LEXPROBE_QUIET=1)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    quiet = os.environ.get("LEXPROBE_QUIET") == "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)
