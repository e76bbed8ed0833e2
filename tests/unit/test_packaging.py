"""What gets installed: one `lexprobe` namespace whose sub-packages are the repository's folders."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_installed_under_lexprobe():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(setup["packages"]), setup["package-dir"]
    assert all(name == "lexprobe" or name.startswith("lexprobe.") for name in listed)
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed  # a new sub-package must be listed, or it is not installed


def test_the_library_does_not_pin_torch():
    """The Makefile installs torch==2.13.0 (the CPU wheel) first; the package itself takes a range."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(d for d in deps if d.split(">")[0].split("=")[0].strip() == "torch")
    assert "==" not in torch
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
