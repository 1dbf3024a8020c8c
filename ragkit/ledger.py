"""The cost ledger: every successful model call appends one row to a local SQLite file.

File: $RAGKIT_HOME/ledger.sqlite, else ~/.local/share/ragkit/ledger.sqlite ($XDG_DATA_HOME honoured).
A row holds the model, task, strategy, tokens as the API reported them, cost, latency and a
SHA-256 of the question; the question text only when the caller asks (`log_question=True`).
Never a key, never a row for a failed call (the caller records only after a complete answer).

Schema changes are numbered migration functions (m001_..., m002_...), each recorded by name in
`_migrations` once applied, like simonw/llm: an old ledger upgrades in place, nothing is lost.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from ragkit import config
from ragkit.errors import InputError

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
    """Applies pending migrations in order, each in its own transaction; returns the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db:  # one transaction: the migration and its record land together or not at all
            fn(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                       (fn.__name__, _now().isoformat()))
        applied.append(fn.__name__)
    return applied


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


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """'7d', '24h', '2w', '30m' or an ISO date/time (UTC if no zone) -> an aware datetime."""
    if value is None or not str(value).strip():
        return None
    now = now or _now()
    m = _DURATION.match(str(value))
    if m:
        return now - timedelta(**{_UNIT[m.group(2).lower()]: float(m.group(1))})
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

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        if not self._ready:
            with self._lock:
                if not self._ready:
                    db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                    migrate(db)
                    self._ready = True
        return db

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        """Appends one row (one transaction) and returns it with id and timestamp."""
        row = asdict(entry)
        row.pop("id")
        row["ts"] = entry.ts or _now().isoformat()
        row["usage_reported"] = int(bool(entry.usage_reported))
        cols = ", ".join(row)
        db = self._connect()
        try:
            with db:
                cur = db.execute(f"INSERT INTO calls ({cols}) VALUES ({', '.join('?' * len(row))})",
                                 tuple(row.values()))
            return LedgerEntry(**{**asdict(entry), "ts": row["ts"], "id": cur.lastrowid})
        finally:
            db.close()

    def entries(self, since: datetime | None = None) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        db = self._connect()
        try:
            db.row_factory = sqlite3.Row
            names = [f for f in LedgerEntry.__dataclass_fields__]
            sql = f"SELECT {', '.join(names)} FROM calls"
            args: tuple = ()
            if since is not None:
                sql += " WHERE ts >= ?"
                args = (since.astimezone(timezone.utc).isoformat(),)
            rows = db.execute(sql + " ORDER BY ts, id", args).fetchall()
        finally:
            db.close()
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
            groups=tuple(CostGroup(k, len(v), sum(x.input_tokens for x in v), sum(x.output_tokens for x in v),
                                   sum(x.cost_usd for x in v)) for k, v in ordered),
            first_ts=first, last_ts=rows[-1].ts if rows else None, rate_days=days,
            projected_monthly_usd=total / days * DAYS_PER_MONTH, path=str(self.path),
        )


def record_call(*, task: str, spec, completion, strategy: str | None, cost_usd: float,
                question: str | None = None, log_question: bool = False,
                ledger: Ledger | None = None) -> LedgerEntry:
    """Convenience for callers holding a ModelSpec and a providers.Completion (answer.py, evals)."""
    return (ledger or Ledger()).record(LedgerEntry(
        task=task, model=spec.id, api_model=completion.model or spec.api_model, provider=spec.provider,
        strategy=strategy, input_tokens=int(completion.input_tokens), output_tokens=int(completion.output_tokens),
        cost_usd=float(cost_usd), latency_s=float(completion.latency_s), ttft_s=completion.ttft_s,
        question_sha256=question_hash(question) if question is not None else None,
        question=question if (log_question and question is not None) else None,
        usage_reported=getattr(completion, "usage_reported", True),
    ))
