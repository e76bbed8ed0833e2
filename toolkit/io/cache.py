"""Where lexprobe keeps what it computes once per model (dequantized weights, refusal readouts)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lexprobe.toolkit.errors import OutputError


def cache_root() -> Path:
    """`$LEXPROBE_CACHE`, else `$XDG_CACHE_HOME/lexprobe`, else `~/.cache/lexprobe`."""
    if os.environ.get("LEXPROBE_CACHE"):
        return Path(os.environ["LEXPROBE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lexprobe"


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keyed_entry(directory: Path, key: dict, legacy: dict | None = None) -> Path:
    """`directory/<sha256 of key>.json`: where a cache entry of `key` lives (its other files beside it,
    other suffixes). Where only the entry of `legacy` is there (the same key as an earlier version
    spelled it), its files are renamed to this name first, so an upgrade never redoes finished work."""

    def name(k: dict) -> str:
        return hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]

    path = directory / f"{name(key)}.json"
    if legacy is not None and legacy != key and not path.exists():
        for old in directory.glob(f"{name(legacy)}.*"):
            with contextlib.suppress(OSError):  # another process moved it first
                old.rename(path.with_suffix(old.suffix))
    return path


def model_entry(kind: str, lm, key: dict) -> tuple[Path, dict]:
    """`keyed_entry` in the `kind` cache of `lm`'s weights, and the key lexprobe 0.2 gave the same entry
    (the dtype spelled `torch.float32`), whose entry is renamed to this one's name on first use."""
    legacy = key | {"dtype": str(lm.dtype)}
    return keyed_entry(cache_dir(kind, lm.weights_sha256[:16]), key, legacy), legacy


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only if the block succeeds.

    A crash leaves a `*.tmp-*` sibling, never a half-written `final`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_directory(path: Path) -> None:
    """OutputError where `path`, a file lexprobe writes, is a directory."""
    if path.is_dir():
        raise OutputError(f"'{path}' is a directory, where lexprobe writes a file: move it away")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary sibling and move it into place: a reader sees the old file or
    the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_directory(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; the file is the user's like any other
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:  # written as given
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
