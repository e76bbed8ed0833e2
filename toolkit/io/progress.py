"""Progress bars for long work and lexprobe's notes on stderr (silent when LEXPROBE_QUIET=1).

Notes (INFO records of lexprobe's own loggers, e.g. which dtype `--dtype auto` chose) are held back
until work starts, that is until the first progress bar or the end of a command, so that bad input
still gets exactly one line on stderr: the CLI drops held notes when a command fails on bad input.
Warnings (a first-use build, a readout fallback) are written at once.
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

PACKAGES = ("lexprobe",)


class HeldNotes(logging.Handler):
    """Formats records as `lexprobe: ...` and holds them until `flush` (to the current sys.stderr)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("lexprobe: %(message)s"))
        self.held: list[str] = []

    def emit(self, record):
        self.held.append(self.format(record))
        if record.levelno >= logging.WARNING:
            self.flush()

    def flush(self):
        lines, self.held = self.held, []
        for line in lines:
            sys.stderr.write(line + "\n")

    def drop(self):
        self.held = []


NOTES = HeldNotes()


def install_notes() -> None:
    """Route lexprobe's loggers (INFO and up) to the held notes; idempotent."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if NOTES not in logger.handlers:
            logger.addHandler(NOTES)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def close_bars() -> None:
    """Close the progress bars still drawn (they clear their line), so what follows starts a line."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    NOTES.flush()
    quiet = os.environ.get("LEXPROBE_QUIET") == "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)
