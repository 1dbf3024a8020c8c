"""Opening a SQLite cache file that may be damaged (the embedding, token-count and eval response caches).

A cache only saves work, so a file that is not a database any more (garbage, a truncated copy, another
program's file) is not an error: it is moved aside to `<name>.damaged` (kept for a look, replacing an
older one), one warning line says so, and a new cache starts. The ledger is different: it is a record,
never moved or rewritten (ragkit.ledger).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable

from ragkit.console import warn

Connect = Callable[[Path], sqlite3.Connection]
# What a damaged file gives: SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), by primary result code. Not
# "database is locked", nor two processes racing to create one table: those are raised as they are.
_DAMAGED_CODES = {11, 26}


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    return ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF) in _DAMAGED_CODES


def open_cache(path: Path, connect: Connect, what: str, loss: str) -> sqlite3.Connection:
    """`connect(path)`: a connection with the cache's tables set up, or sqlite3.DatabaseError (having
    closed what it opened). On that error the damaged file is moved aside and `connect` runs again.

    Many processes may open one damaged cache at once: the move happens under a lock file and only
    after opening again still fails there, so a cache another process has just started is kept."""
    try:
        return connect(path)
    except sqlite3.DatabaseError as exc:
        if not _damaged(exc):
            raise
    from filelock import FileLock

    with FileLock(str(path) + ".lock", timeout=60):
        try:
            return connect(path)
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            aside = move_aside(path)
            warn(f"the {what} {path} is damaged ({exc}); moved it to {aside.name} and started a new one ({loss})")
        return connect(path)


def move_aside(path: Path) -> Path:
    """Renames the file to <name>.damaged (replacing an older one) and drops its WAL files."""
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return aside
