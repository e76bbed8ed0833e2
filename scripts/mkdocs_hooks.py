"""MkDocs hook: the installed `lexprobe` namespace laid out as folders, for mkdocstrings to read.

The repository's `toolkit/`, `probes/`, `analyses/` and `prompts/` folders are installed as
`lexprobe.toolkit` and so on (pyproject.toml's `package-dir`); a documentation tool that reads the
sources finds `lexprobe/` without them. Before each build this links them together under
`build/api-src/lexprobe/` (links only: the sources stay where they are)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "api-src"


def on_startup(command, dirty):  # before the plugins read their config (mkdocstrings keeps existing paths)
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = TREE / "lexprobe"
    top.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in (ROOT / dirs["lexprobe"]).iterdir() if p.name != "__pycache__"}
    links |= {name.split(".", 1)[1]: ROOT / folder for name, folder in dirs.items() if name != "lexprobe"}
    for name, target in links.items():
        link = top / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
