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

from tqdm.std import tqdm

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


def count(n: int, noun: str) -> str:
    """'1 prompt', '2 prompts': a number of things, for progress bars and summaries."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def close_bars() -> None:
    """Close the progress bars still drawn (they clear their line), so what follows starts a line."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (its stderr is a notebook cell's, not a terminal)."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


def progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    """A progress bar over `iterable`. A bar that is not inside another stays when it ends, with its
    rate; in a notebook it is a widget (with ipywidgets installed) or a plain line of text, never
    terminal escapes; a terminal of unknown or zero width gets 80 columns."""
    NOTES.flush()
    options = dict(desc=desc, total=total, unit=unit, leave=None)
    options["disable"] = os.environ.get("LEXPROBE_QUIET") == "1"
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook falls back to escapes without it)
            from tqdm.notebook import tqdm as widget

            return widget(iterable, **options)
        except ImportError:  # one plain line per top-level bar: nested ones would move the cursor
            options["disable"] |= bool(getattr(tqdm, "_instances", ()))
            return tqdm(iterable, ascii=True, ncols=80, mininterval=1.0, file=sys.stderr, **options)
    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):  # not a terminal: tqdm draws its default width
        width = None
    if width == 0:
        return tqdm(iterable, ncols=80, **options)
    return tqdm(iterable, dynamic_ncols=True, **options)
