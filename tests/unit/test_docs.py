"""The README and docs: every fenced `lexprobe ...` command parses with the real parser, the Python API
example runs, and they name only files a user of the repository has."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lexprobe.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "prompts" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_FOLDERS = ("toolkit/", "probes/", "analyses/", "prompts/", "docs/", "benchmarks/", "scripts/", "tests/",
                "lexprobe/", "requirements/")  # fmt: skip


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def fenced_commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for _, block in fenced_blocks(doc.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("lexprobe "):
                    out.append((doc.name, line))
    return out


def test_the_docs_have_commands_to_check():
    names = {cmd.split()[1] for _, cmd in fenced_commands()}
    assert {
        "score",
        "generate",
        "classify",
        "evaluate",
        "attribute",
        "heatmap",
        "perturb",
        "diagnose",
    } <= names


@pytest.mark.parametrize(("doc", "command"), fenced_commands())
def test_every_documented_command_parses(doc, command):
    argv = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # the parser wrote why on stderr
        pytest.fail(f"{doc}: `{command}` does not parse (exit {stop.code})")
    assert callable(args.func)


def test_the_readme_python_example_is_short_and_runs(tmp_path, readme_python_example):
    """Run as written, but on tiny-random (the slow test `test_readme_example_on_the_default_model` runs
    it on the default model)."""
    code = readme_python_example
    lines = [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert 3 <= len(lines) <= 7, lines  # import + 3-6 lines to load, score, attribute, show, save
    assert 'lexprobe.load("default")' in code
    script = code.replace('lexprobe.load("default")', 'lexprobe.load("tiny-random")')
    env = {**os.environ, "LEXPROBE_QUIET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "attributions.csv" for p in written), written


def test_the_docs_name_only_files_a_user_has():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "../" not in text, f"{doc.relative_to(ROOT)} points outside the repository"
        assert not re.search(r"\bthe issue\b|\bissue's\b|GUIDE\.md|notes/", text), (
            f"{doc.relative_to(ROOT)}: tracker talk"
        )
        for path in re.findall(r"`([\w./-]+)`", text):
            if path.startswith(REPO_FOLDERS) and "*" not in path:
                assert (ROOT / path.split("::")[0]).exists(), (
                    f"{doc.relative_to(ROOT)} names {path}, which is not in the repo"
                )


def test_the_code_names_no_file_outside_the_repository():
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or "build" in path.parts or path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\.\./shared|notes/\w|GUIDE\.md", text), f"{path.relative_to(ROOT)}"


def test_the_readme_is_a_landing_page_and_the_docs_site_builds_strictly(tmp_path):
    """The README stays short (what it is, install, the two commands, the API example, links); the
    guides in docs/ build as a site with no warning (a broken link or a page outside the nav fails)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")} - {
        "index.md"
    }  # every guide, no dead link
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "speed" / "index.html").exists()
    reference = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")  # from the docstrings
    for name in ("lexprobe.api.load", "lexprobe.api.Probe.score", "lexprobe.api.Probe.attribute"):
        assert f'id="{name}"' in reference, name
