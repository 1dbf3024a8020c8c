"""The cost ledger: every successful model call appends one row to a local SQLite file.

File: $RAGKIT_HOME/ledger.sqlite, else ~/.local/share/ragkit/ledger.sqlite ($XDG_DATA_HOME honoured).
A row holds the model, task, strategy, tokens as the API reported them, cost, latency and a
SHA-256 of the question; the question text only when the caller asks (`log_question=True`).
Never a key, never a row for a failed call: every paid call (ask, eval, ...) goes through
`account()` once its answer is complete, which prices it and writes its row.

Schema changes are numbered migration functions (m001_..., m002_...), each recorded by name in
`_migrations` once applied, like simonw/llm: an old ledger upgrades in place, nothing is lost.
Many processes and threads may open a new ledger at once (each migration runs under the write
lock); a file that is damaged or another program's is reported, never rewritten.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from ragkit import config
from ragkit.errors import InputError, RagkitError

DAYS_PER_MONTH = 30


def ledger_path() -> Path:
    return config.data_home() / "ledger.sqlite"  # $RAGKIT_HOME, else ~/.local/share/ragkit


def question_hash(question: str) -> str:
    """Stable id of a question without storing it: sha256 of its whitespace-normalised text."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()


# ---- migrations --------------------------------------------------------------------------------
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,                 -- UTC ISO-8601, e.g. 2026-11-28T02:30:00.123456+00:00
            task TEXT NOT NULL,               -- "ask", "eval", ...
            model TEXT NOT NULL,              -- registry id
            api_model TEXT NOT NULL,          -- model id the API answered with
            provider TEXT NOT NULL,
            strategy TEXT,                    -- "stuff" | "retrieve" | NULL
            input_tokens INTEGER NOT NULL CHECK (input_tokens >= 0),
            output_tokens INTEGER NOT NULL CHECK (output_tokens >= 0),
            cost_usd REAL NOT NULL CHECK (cost_usd >= 0),
            latency_s REAL NOT NULL CHECK (latency_s >= 0),
            ttft_s REAL,
            question_sha256 TEXT,
            question TEXT                     -- only when the user asked to log it
        )""")
    db.execute("CREATE INDEX calls_ts ON calls (ts)")


def m002_usage_reported(db: sqlite3.Connection) -> None:
    # 1 = tokens as the API reported them; 0 = the endpoint sent no usage and ragkit estimated.
    db.execute("ALTER TABLE calls ADD COLUMN usage_reported INTEGER NOT NULL DEFAULT 1")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [m001_initial, m002_usage_reported]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Applies pending migrations in order, each in its own transaction; returns the names applied.

    Each takes the write lock first (BEGIN IMMEDIATE) and re-reads what is applied inside it, so
    processes and threads opening a fresh ledger at once apply every migration exactly once.
    """
    if not _pending(db, locked=False):
        return []  # the common case: one read, no write lock
    applied = []
    for fn in MIGRATIONS:
        db.execute("BEGIN IMMEDIATE")
        try:
            if fn.__name__ in _pending(db, locked=True):
                fn(db)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                           (fn.__name__, _now().isoformat()))
                applied.append(fn.__name__)
            db.execute("COMMIT")  # the migration and its record land together or not at all
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return applied


def _pending(db: sqlite3.Connection, *, locked: bool) -> list[str]:
    """Migrations not yet applied. Refuses another program's database; under the write lock
    (`locked`) creates the bookkeeping table of a new ledger."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "_migrations" not in tables:
        if tables:  # some other program's database: never write into it
            raise LedgerError(_not_a_ledger(db))
        if not locked:
            return [fn.__name__ for fn in MIGRATIONS]
        db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    return [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in done]


def _use_wal(db: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """WAL journal, so readers never block the writer. Switching a new file needs its exclusive lock,
    and SQLite refuses at once (without waiting) when processes switch together: retry until wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class LedgerError(RagkitError):
    """The ledger file is unusable: damaged, or not a ragkit ledger. It is never deleted or rewritten."""


def _not_a_ledger(where: "sqlite3.Connection | Path") -> str:
    path = where if isinstance(where, Path) else Path(where.execute("PRAGMA database_list").fetchone()[2])
    moved = path.with_name(path.name + ".broken")
    return (f"{path} is not a ragkit ledger or is damaged; move it aside "
            f"(mv {shlex.quote(str(path))} {shlex.quote(str(moved))}) and ragkit starts a new one.")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerEntry:
    task: str
    model: str
    api_model: str
    provider: str
    strategy: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    ttft_s: float | None
    question_sha256: str | None
    question: str | None = None
    usage_reported: bool = True
    ts: str = ""                  # filled on write when empty
    id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CostGroup:
    key: str                      # the model id, the day (YYYY-MM-DD) or the task
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    mean_cost_usd: float          # per call
    p50_latency_s: float          # median latency of the group's calls

    @classmethod
    def of(cls, key: str, rows: list[LedgerEntry]) -> "CostGroup":
        import statistics  # (not at import time: light commands start fast)

        cost = sum(e.cost_usd for e in rows)
        return cls(key, len(rows), sum(e.input_tokens for e in rows), sum(e.output_tokens for e in rows), cost,
                   cost / len(rows), statistics.median(e.latency_s for e in rows))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CostSummary:
    since: str | None             # ISO start of the window, None = everything
    by: str                       # "model" | "day" | "task"
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    groups: tuple[CostGroup, ...]
    first_ts: str | None
    last_ts: str | None
    rate_days: float              # the span the rate is measured over
    projected_monthly_usd: float  # cost_usd / rate_days * 30
    path: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["groups"] = [g.to_dict() for g in self.groups]
        return d


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.I)
_UNIT = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


MAX_TASK_LABEL = 64


def check_task_label(label) -> str:
    """A task label as given (`ask --task`, Session(task=...)): one printable line, not empty, at most
    MAX_TASK_LABEL characters, since `ragkit costs --by task` prints it as a table row."""
    if not isinstance(label, str) or not label.strip():
        raise InputError(f"task label {label!r}: give a short name like ask or support-bot.")
    if not label.isprintable() or len(label) > MAX_TASK_LABEL:
        raise InputError(f"task label {label!r}: use at most {MAX_TASK_LABEL} printable characters on one line, "
                         "like support-bot.")
    return label


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """'7d', '24h', '2w', '30m' or an ISO date/time (UTC if no zone) -> an aware datetime."""
    if value is None or not str(value).strip():
        return None
    now = now or _now()
    m = _DURATION.match(str(value))
    if m:
        try:
            return now - timedelta(**{_UNIT[m.group(2).lower()]: float(m.group(1))})
        except OverflowError:  # past timedelta's or datetime's range (year 1)
            raise InputError(f"--since {value!r} reaches back before the year 1: use a shorter window, or leave "
                             "--since out to summarise every call.") from None
    try:
        when = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise InputError(f"--since {value!r}: use a duration like 7d, 24h, 2w, or a date like 2026-11-01.") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class Ledger:
    """The SQLite ledger. One short connection per operation, so threads can share one Ledger."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else ledger_path()
        self._ready = False
        self._lock = threading.Lock()
        self._warned = False

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A migrated connection, closed after use; a damaged file becomes one LedgerError sentence."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)  # waits up to 30 s for another writer's lock
        try:
            if not self._ready:
                with self._lock:
                    if not self._ready:
                        _use_wal(db)
                        migrate(db)
                        self._ready = True
            yield db
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:  # SQLITE_NOTADB / SQLITE_CORRUPT, not locks or constraints
                raise LedgerError(_not_a_ledger(self.path)) from None
            raise
        finally:
            db.close()

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        """Appends one row (one transaction) and returns it with id and timestamp."""
        row = asdict(entry)
        row.pop("id")
        row["ts"] = entry.ts or _now().isoformat()
        row["usage_reported"] = int(bool(entry.usage_reported))
        cols = ", ".join(row)
        with self._db() as db, db:
            cur = db.execute(f"INSERT INTO calls ({cols}) VALUES ({', '.join('?' * len(row))})",
                             tuple(row.values()))
        return LedgerEntry(**{**asdict(entry), "ts": row["ts"], "id": cur.lastrowid})

    def warn(self, exc: Exception) -> None:
        """A paid call that could not be recorded: said once per Ledger on stderr, never raised."""
        with self._lock:
            if self._warned:
                return
            self._warned = True
        detail = str(exc) if isinstance(exc, LedgerError) else f"could not write {self.path}: {exc}"
        from ragkit.console import warn

        warn(f"calls are not being recorded in the cost ledger: {detail}")

    def entries(self, since: datetime | None = None) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        names = [f for f in LedgerEntry.__dataclass_fields__]
        sql = f"SELECT {', '.join(names)} FROM calls"
        args: tuple = ()
        if since is not None:
            sql += " WHERE ts >= ?"
            args = (since.astimezone(timezone.utc).isoformat(),)
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(sql + " ORDER BY ts, id", args).fetchall()
        return [LedgerEntry(**{**dict(r), "usage_reported": bool(r["usage_reported"])}) for r in rows]

    def summary(self, since: str | datetime | None = None, by: str = "model",
                now: datetime | None = None) -> CostSummary:
        """Totals and groups over the window; the monthly projection uses the window's rate.

        The rate's span runs from the window start (or the first call, if later) to now, and is at
        least one day, so a single call an hour ago is not projected as 720 calls a month.
        """
        if by not in ("model", "day", "task"):
            raise InputError(f"--by {by!r}: use model, day or task.")
        now = now or _now()
        start = parse_since(since, now) if isinstance(since, (str, type(None))) else since
        rows = self.entries(start)
        groups: dict[str, list[LedgerEntry]] = {}
        for e in rows:
            key = {"model": e.model, "day": e.ts[:10], "task": e.task}[by]
            groups.setdefault(key, []).append(e)
        ordered = sorted(groups.items(), key=(lambda kv: kv[0]) if by == "day" else (lambda kv: -sum(x.cost_usd for x in kv[1])))
        total = sum(e.cost_usd for e in rows)
        first = rows[0].ts if rows else None
        span_start = start
        if first:
            first_dt = datetime.fromisoformat(first)
            span_start = max(span_start, first_dt) if span_start else first_dt
        days = max(1.0, (now - span_start).total_seconds() / 86400) if span_start else 1.0
        return CostSummary(
            since=start.isoformat() if start else None, by=by, calls=len(rows),
            input_tokens=sum(e.input_tokens for e in rows), output_tokens=sum(e.output_tokens for e in rows),
            cost_usd=total,
            groups=tuple(CostGroup.of(k, v) for k, v in ordered),
            first_ts=first, last_ts=rows[-1].ts if rows else None, rate_days=days,
            projected_monthly_usd=total / days * DAYS_PER_MONTH, path=str(self.path),
        )


def account(completion, spec, *, task: str, strategy: str | None, question: str | None = None,
            log_question: bool = False, ledger: Ledger | None = None) -> LedgerEntry:
    """The one accounting step of every paid model call (ask, eval, ...): prices a providers.Completion
    with the registry's prices for `spec` and appends its row to `ledger` (None: price only).

    Returns the row (id None when it was not written). A ledger that cannot be written is a warning,
    never an exception: the call is paid for and its answer must still reach the caller.
    """
    from ragkit.costs import cost_usd

    row = LedgerEntry(
        task=task, model=spec.id, api_model=completion.model or spec.api_model, provider=spec.provider,
        strategy=strategy, input_tokens=int(completion.input_tokens), output_tokens=int(completion.output_tokens),
        cost_usd=float(cost_usd(spec, completion.input_tokens, completion.output_tokens)),
        latency_s=float(completion.latency_s), ttft_s=completion.ttft_s,
        question_sha256=question_hash(question) if question is not None else None,
        question=question if (log_question and question is not None) else None,
        usage_reported=getattr(completion, "usage_reported", True),
    )
    if ledger is None:
        return row
    try:
        return ledger.record(row)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not lose an answer already paid for
        ledger.warn(exc)
        return row
