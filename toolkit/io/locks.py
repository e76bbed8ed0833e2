"""Locks that keep two lexprobe processes from writing the same place (the `filelock` package).

- An output directory is held by one run at a time (`exclusive`): a second run on the same `--out`
  stops at once with one line naming the holder.
- Nothing in an output directory is a symbolic link (`refuse_links`): an output is never written
  through a link to a file elsewhere.
- A cache entry (a dequantized model, a calibrated readout) is built by one process while the others
  wait (`building`), then they read what it built; the builder clears the `*.tmp-*` leftovers of a
  build that was killed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from lexprobe.toolkit.errors import OutputError

LOCK = ".lexprobe.lock"
OWNER = ".lexprobe.lock.owner"
LOCK_FILES = (LOCK, OWNER)


@contextmanager
def exclusive(directory: str | Path) -> Iterator[Path]:
    """Hold `directory` (made if needed) for this process; another holder is an OutputError. A directory
    this made and left holding nothing but the lock is removed again, so a failed run leaves no trace."""
    directory = Path(directory).expanduser()
    made = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only, no permission
        raise OutputError(f"cannot make the output directory '{directory}': {err.strerror or err}") from err
    lock = FileLock(directory / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _read(directory / OWNER) or "another process"
        raise OutputError(
            f"'{directory}' is in use by {holder}: wait for that run to finish, or use another --out"
        ) from None
    except OSError as err:  # a read-only or foreign directory: nothing can be written there
        raise OutputError(
            f"cannot write in the output directory '{directory}': {err.strerror or err}"
        ) from None
    try:
        since = dt.datetime.now().isoformat(timespec="seconds")
        try:
            (directory / OWNER).write_text(f"lexprobe pid {os.getpid()} (since {since})")
        except OSError as err:
            raise OutputError(
                f"cannot write in the output directory '{directory}': {err.strerror or err}"
            ) from None
        refuse_links(directory)
        yield directory
    finally:
        (directory / OWNER).unlink(missing_ok=True)
        lock.release()
        if made and {p.name for p in directory.iterdir()} <= set(LOCK_FILES):
            shutil.rmtree(directory, ignore_errors=True)


def refuse_links(directory: Path) -> None:
    """An OutputError naming the first symbolic link in `directory` (at any depth): lexprobe writes its
    outputs there and would write through the link to wherever it points."""
    for root, dirs, files in os.walk(directory):  # does not descend into linked folders
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                raise OutputError(
                    f"'{os.path.join(root, name)}' is a symbolic link in the output directory: lexprobe "
                    "never writes through a link, so remove it or use another --out"
                )


@contextmanager
def building(entry: Path) -> Iterator[None]:
    """Build the cache entry `entry` (a file or directory) alone: other processes wait here until the
    builder is done. Leftover `<name>.tmp-*` siblings of a killed build are removed first."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(entry.parent / f".{entry.name}.lock"):
        for stale in entry.parent.glob(f"{entry.name}.tmp-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        yield


def user_files(directory: Path) -> list[Path]:
    """What a directory holds besides lexprobe's lock files."""
    return [p for p in directory.iterdir() if p.name not in LOCK_FILES]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
