"""Hash a weights file once: its sha256 is recorded with its size, mtime and inode in
`cache_root()/file-hashes.json`, and later starts reuse it while those are unchanged. An edited,
replaced or touched file is hashed again; `verify=True` (`--verify-weights`) hashes whatever the record.

As in git's index ("racy git"), a record is trusted only for a file last modified well before it was
hashed: file times tick coarsely, so an edit of the same size in the same tick as the write before
it would leave size and mtime unchanged.

A 7B model is about 15 GB of weights in bf16: without the record, every start would read them all once
more just to hash them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from filelock import FileLock

from lexprobe.toolkit.io.cache import cache_root, sha256_file, write_json_atomic

log = logging.getLogger(__name__)
STORE = "file-hashes.json"
SETTLED_NS = 2_000_000_000  # a file modified less than this before it was hashed is hashed again


def file_sha256(path: Path, verify: bool = False) -> str:
    """sha256 of the file at `path` (links resolved): from the record while its size, mtime and inode
    match, else (and with `verify`) computed and recorded."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    store = store_path()
    known = _read(store).get(str(path))
    if not verify and _trusted(known, stamp):
        return known["sha256"]
    hashed_at = time.time_ns()
    digest = sha256_file(path)
    if verify and _trusted(known, stamp) and known["sha256"] != digest:
        log.warning("%s changed without a new size or mtime: its recorded sha256 was wrong", path)
    store.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(store) + ".lock"):
        records = {k: v for k, v in _read(store).items() if Path(k).exists()}  # forget removed files
        records[str(path)] = {"stamp": stamp, "sha256": digest, "hashed_at_ns": hashed_at}
        write_json_atomic(store, records)
    return digest


def store_path() -> Path:
    return cache_root() / STORE


def _trusted(known, stamp: list[int]) -> bool:
    return (
        isinstance(known, dict)
        and known.get("stamp") == stamp
        and isinstance(known.get("sha256"), str)
        and isinstance(known.get("hashed_at_ns"), int)
        and known["hashed_at_ns"] - stamp[1] > SETTLED_NS
    )


def _read(store: Path) -> dict:
    try:
        records = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or damaged: every file is hashed again
    return records if isinstance(records, dict) else {}
