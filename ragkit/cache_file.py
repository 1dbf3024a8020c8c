"""Opening a SQLite cache file that may be damaged (the embedding, token-count and eval response caches).

A cache only saves work, so a file that is not a database any more (garbage, a truncated copy, another
program's file, a damaged page found later) is not an error: it is moved aside to `<name>.damaged` (kept
for a look, replacing an older one), one warning line says so, and a new cache starts. The ledger is
different: it is a record, never moved or rewritten (ragkit.ledger).
"""
from __future__ import annotations

import functools
import os
from contextlib import nullcontext
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


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def connecting(setup: Callable[[sqlite3.Connection], None], **connect_kw) -> Connect:
    """A Connect that opens the file and runs `setup` on it (pragmas, tables), closing it if that fails."""
    def connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30, **connect_kw)
        try:
            setup(db)
        except BaseException:
            db.close()
            raise
        return db
    return connect


def open_cache(path: Path, connect: Connect, what: str, loss: str) -> sqlite3.Connection:
    """`connect(path)` (see connecting): a connection with the cache's tables set up, or
    sqlite3.DatabaseError. When the file is damaged it is moved aside and `connect` runs again."""
    damaged_inode = _inode(path)
    try:
        return connect(path)
    except sqlite3.DatabaseError as exc:
        if not _damaged(exc):
            raise
        return _start_afresh(path, connect, what, loss, exc, damaged_inode)


def _start_afresh(path: Path, connect: Connect, what: str, loss: str, exc: Exception,
                  damaged_inode: int | None) -> sqlite3.Connection:
    """Moves the damaged file aside and connects to a new one. Many processes may find one damaged
    cache at once: the move happens under a lock file, and only while `path` is still the file found
    damaged, so a cache another process has just started is kept."""
    from filelock import FileLock

    with FileLock(str(path) + ".lock", timeout=60):
        if damaged_inode is not None and _inode(path) == damaged_inode:
            aside = move_aside(path)
            warn(f"the {what} {path} is damaged ({exc}); moved it to {aside.name} and started a new one ({loss})")
        return connect(path)


def recovering(method):
    """For a method of a cache class (attributes path, _db, _connect, WHAT, LOSS and, when threads
    share it, _lock): a damaged page met while it runs moves the file aside with one warning, starts a
    new cache and runs the method again on it."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        db, inode = self._db, _inode(self.path)
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            lock = getattr(self, "_lock", None)
            with lock if lock is not None else nullcontext():
                if self._db is db:  # another thread has not replaced it already
                    db.close()
                    self._db = _start_afresh(self.path, self._connect, self.WHAT, self.LOSS, exc, inode)
        return method(self, *args, **kwargs)
    return wrapper


def move_aside(path: Path) -> Path:
    """Renames the file to <name>.damaged (replacing an older one) and drops its WAL files."""
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return aside
