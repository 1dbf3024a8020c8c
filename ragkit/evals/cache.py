"""SQLite response cache: one row per successful model call, keyed by model + exact prompt + parameters.

An interrupted run resumes from it and a re-run costs nothing. Only successes are stored, so a
failed call is retried next time. Schema changes are numbered migrations, recorded once applied.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ragkit.cache_file import connecting, open_cache, recovering


def default_cache_path() -> Path:
    """$RAGKIT_EVAL_CACHE, else eval-cache.sqlite in ragkit's cache folder ($RAGKIT_CACHE_DIR, ~/.cache/ragkit)."""
    from ragkit.config import eval_cache_path

    return eval_cache_path()


def call_key(model_id: str, api_model: str, system: str, prompt: str, max_tokens: int, temperature: float,
             extra: dict | None = None) -> str:
    """sha256 over everything that changes the answer (not the endpoint: same model, same answer).
    extra: anything else that does (a schema and how it is enforced); absent, keys are as before."""
    fields = {"model": model_id, "api_model": api_model, "system": system, "prompt": prompt,
              "max_tokens": max_tokens, "temperature": temperature}
    if extra:
        fields["extra"] = extra
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    cost_usd: float
    created: float
    ttft_s: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_COLUMNS = ("text", "input_tokens", "output_tokens", "latency_s", "cost_usd", "created", "ttft_s")


def _m001_initial(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE responses (
        key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL,
        input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
        latency_s REAL NOT NULL, cost_usd REAL NOT NULL, created REAL NOT NULL)""")


def _m002_ttft(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE responses ADD COLUMN ttft_s REAL")


MIGRATIONS = [_m001_initial, _m002_ttft]


def _setup(db: sqlite3.Connection) -> None:
    """WAL, and the migrations a new connection's file lacks (before the connection is shared)."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied REAL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    for migration in MIGRATIONS:
        if migration.__name__ not in done:
            db.execute("BEGIN IMMEDIATE")
            migration(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (migration.__name__, time.time()))
            db.execute("COMMIT")


class ResponseCache:
    """Thread-safe (one connection behind a lock; WAL so a crash mid-write loses nothing committed)."""

    WHAT, LOSS = "eval response cache", "answers it held are asked for again, and paid for, when next needed"

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = open_cache(self.path, self._connect, self.WHAT, self.LOSS)

    _connect = staticmethod(connecting(_setup, check_same_thread=False, isolation_level=None))

    @recovering
    def get(self, key: str) -> CachedResponse | None:
        """The cached answer, or None. A row whose columns hold the wrong types (SQLite lets any cell hold
        anything) is a miss, with one warning per cache: the call is asked again and its row replaced."""
        from ragkit.evals.records import wrong_type

        with self._lock:
            row = self._db.execute("SELECT text, input_tokens, output_tokens, latency_s, cost_usd, created, ttft_s "
                                   "FROM responses WHERE key = ?", (key,)).fetchone()
        if not row:
            return None
        wrong = wrong_type(CachedResponse, dict(zip(_COLUMNS, row)))
        if wrong is None:
            return CachedResponse(*row)
        if not self._warned_damaged:
            self._warned_damaged = True
            from ragkit.console import warn

            warn(f"the eval cache {self.path} has a damaged row ({wrong}); such calls are asked again and "
                 "their rows replaced.")
        return None

    _warned_damaged = False  # get() warns about damaged rows once per cache

    @recovering
    def put(self, key: str, model: str, response: CachedResponse) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, model, text, input_tokens, output_tokens, "
                             "latency_s, cost_usd, created, ttft_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (key, model, response.text, response.input_tokens, response.output_tokens,
                              response.latency_s, response.cost_usd, response.created, response.ttft_s))

    @recovering
    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
