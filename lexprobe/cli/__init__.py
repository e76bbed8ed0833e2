"""The `lexprobe` command line: it parses flags into a study's config, runs the study, prints, and sets
the exit code. One module per command group; `options` holds the flags they share.

Exit codes: 0 done, 2 bad input (one line on stderr naming the problem and the fix), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from lexprobe.cli import attribution, behaviour, compare, core, diagnose, mechanism, minimal_pairs
from lexprobe.cli.options import Parser, plain
from lexprobe.toolkit.errors import InputError, LexprobeError, OutputError
from lexprobe.toolkit.io.locks import exclusive
from lexprobe.toolkit.io.results import claim

GROUPS = (core, behaviour, attribution, minimal_pairs, diagnose, compare, mechanism)


def build_parser() -> Parser:
    from importlib import metadata

    parser = Parser(prog="lexprobe", description="Why do chat models refuse safe prompts? Word by word.")
    parser.add_argument("--version", action="version", version=f"lexprobe {metadata.version('lexprobe')}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def run_kinds() -> set[str]:
    """The commands that write a run.json: each result type declares its kind (= its command) once."""
    from lexprobe.analyses.compare import CompareResult
    from lexprobe.api import result_types

    return {cls.kind for cls in (*result_types(), CompareResult)}


def refuse_to_replace(args) -> None:
    """A command that can replace its results (it has --overwrite) must not do so silently: an --out that
    already holds an earlier run's run.json needs --resume (where the command has it) or --overwrite,
    and --overwrite replaces a run of the same command only, never another command's files or a
    folder that holds no lexprobe run."""
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise InputError("--resume continues a run and --overwrite replaces it: give one of them")
    out = getattr(args, "out", None)
    if not out or not hasattr(args, "overwrite") or not Path(out).is_dir():
        return
    out = Path(out)
    run_json = out / "run.json"
    if args.command in run_kinds():
        resuming = getattr(args, "resume", False)  # rows without their run.json: the resume check says so
        if not (run_json.exists() or resuming) and any(
            not p.name.startswith(".lexprobe") for p in out.iterdir()
        ):
            raise OutputError(
                f"'{out}' holds files but no lexprobe run.json: give a new or empty --out, so nothing "
                "of yours is mixed with or replaced by this run"
            )
        claim(out, args.command)
    if run_json.exists() and not (args.overwrite or getattr(args, "resume", False)):
        resume = " --resume to continue it," if hasattr(args, "resume") else ""
        raise OutputError(
            f"'{out}' already holds an earlier run (run.json): pass{resume} --overwrite to replace it, "
            "or use another --out"
        )


VIEWS = (".png", ".svg", ".pdf", ".html")


def drop_stale_views(out: Path, started: float) -> None:
    """After an --overwrite run: the figures and pages of the run it replaced that this one did not draw
    again (a label it no longer has, --no-figures) would show the old run beside the new tables."""
    for path in out.rglob("*"):
        if (
            path.suffix in VIEWS
            and path.is_file()
            and not path.is_symlink()
            and path.stat().st_mtime < started
        ):
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # lexprobe never downloads
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # bad flags (one line already written), --help, --version
        return int(stop.code or 0)
    from transformers.utils import logging as hf_logging

    from lexprobe.toolkit.io.progress import NOTES, close_bars, install_notes

    install_notes()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        out = getattr(args, "out", None)
        with exclusive(out) if out else contextlib.nullcontext():  # one run per output directory
            refuse_to_replace(args)
            started = time.time()
            args.func(args)
            if out and getattr(args, "overwrite", False) and args.command in run_kinds():
                drop_stale_views(Path(out), started)
    except LexprobeError as err:
        close_bars()  # an error after work started: its line starts where the bar was
        NOTES.drop()  # bad input: the one line that names it, nothing else
        sys.stderr.write(f"lexprobe: error: {plain(' '.join(str(err).splitlines()))}\n")
        return 2
    except OSError as err:  # a read-only file, a full disk: rows written so far stay (writes are atomic)
        close_bars()
        NOTES.drop()
        where = f" '{err.filename}'" if err.filename else ""
        out = getattr(args, "out", None)
        again = (
            "; rows finished so far are kept: fix it and rerun with --resume"
            if out and hasattr(args, "resume")
            else ""
        )
        sys.stderr.write(
            f"lexprobe: error: cannot read or write{plain(where)}: {err.strerror or err}{again}\n"
        )
        return 2
    except KeyboardInterrupt:
        close_bars()
        out = getattr(args, "out", None)
        where = f"; rows finished so far are in {out}: rerun with --resume" if out else ""
        sys.stderr.write(f"lexprobe: interrupted{where}\n")
        return 130
    NOTES.flush()
    return 0
