"""A run folder's files: results.jsonl (one EvalRecord per call, one JSON line each) and run.json.

This module is their only reader and writer; the runner writes records, the report and the CLI read
them. Every line carries its format version ("v"): a line written by a newer ragkit is refused with
a sentence, lines written by older ragkit read as they are (a missing optional field takes its
default), so committed reports re-render. A line cut short by a kill is dropped, on reading and
before the next append: its response is in the cache, so resuming logs that call again for free.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

from ragkit.errors import InputError

SCHEMA_VERSION = 1
RESULTS = "results.jsonl"
META = "run.json"


def plural(n: int, word: str) -> str:
    """How eval messages count: 1 call, 2 calls, 1,000 scored calls."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True, kw_only=True)
class EvalRecord:
    """One finished call of a grid: where it sits (task, length, depth, strategy, sample), what came back,
    its score (None when the call failed: unscored, not wrong) and what it cost."""

    call_id: str                      # "stuff/L2000/D50/S0": unique within a run folder
    task: str
    model: str
    length: int
    length_unit: str                  # "tokens" | "docs"
    depth: float
    depth_unit: str                   # "percent" | "position"
    strategy: str                     # "stuff" | "retrieve"
    sample: int
    question: str = ""
    answers: tuple[str, ...] = ()
    prediction: str | None = None
    score: float | None = None
    status: str                       # "ok" | "failed" (fields are in the order of the file's keys)
    error: str | None = None
    context_tokens: int = 0
    gold_in_context: bool | None = None
    input_tokens: int = 0             # as the API reported them
    output_tokens: int = 0
    cost_usd: float = 0.0             # what the answer cost when it was paid for (cached: not paid again)
    latency_s: float = 0.0
    cached: bool = False              # answered from the response cache in this run
    key: str = ""                     # the response cache key: model + exact prompt + parameters
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["answers"] = list(self.answers)
        return {"v": d.pop("schema_version"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "a record") -> "EvalRecord":
        version = d.get("v", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise InputError(f"{where} was written by a newer ragkit (results format v{version}; this ragkit "
                             f"reads up to v{SCHEMA_VERSION}): upgrade ragkit to read or resume this run.")
        missing = [f.name for f in _REQUIRED if f.name not in d]
        if missing:
            raise InputError(f"{where} is not an eval record (no {', '.join(missing)}); "
                             "a run folder's results.jsonl holds only what `ragkit eval` wrote.")
        known = {k: d[k] for k in _NAMES if k in d}
        known["answers"] = tuple(known.get("answers") or ())
        return cls(**known, schema_version=version)


_REQUIRED = [f for f in fields(EvalRecord) if f.default is MISSING and f.default_factory is MISSING]
_NAMES = {f.name for f in fields(EvalRecord)} - {"schema_version"}


def results_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / RESULTS


def read(run_dir: Path | str) -> list[EvalRecord]:
    """Every record of the folder's log in file order (a retried call appears more than once)."""
    path = results_path(run_dir)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            data = _parse(line)
            if data is not None:
                out.append(EvalRecord.from_dict(data, f"{path} line {n}"))
    return out


def _parse(line: str) -> dict | None:
    """A line's JSON object; None for a blank or torn line. A whole record glued after a torn one
    (logs appended by ragkit before it dropped torn lines) is recovered."""
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        glued = line.rfind('{"v": ')
        if glued > 0:
            return _parse(line[glued:])
        return None


def latest_by_call(records: Iterable[EvalRecord]) -> dict[str, EvalRecord]:
    """One record per call: a success wins over a failure, then the latest wins."""
    best: dict[str, EvalRecord] = {}
    for r in records:
        prev = best.get(r.call_id)
        if prev is None or r.ok or not prev.ok:
            best[r.call_id] = r
    return best


class RecordLog:
    """Appends records to a run folder's results.jsonl, one flushed and fsynced line each.

    Opening it drops a torn last line (a run killed mid-write), so every line appended after it is whole.
    """

    def __init__(self, run_dir: Path | str):
        self.path = results_path(run_dir)
        self._lock = threading.Lock()
        drop_torn_tail(self.path)

    def read(self) -> list[EvalRecord]:
        return read(self.path.parent)

    def append(self, record: EvalRecord) -> None:
        line = record.to_json() + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self, records: Sequence[EvalRecord]) -> None:
        """Replaces the log at once (compaction): a kill leaves the old file or the new, never half."""
        with self._lock:
            atomic_write(self.path, "".join(r.to_json() + "\n" for r in records))


def drop_torn_tail(path: Path) -> None:
    """Cuts the file back to its last newline: what follows it is a line whose write never finished."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with open(path, "rb+") as fh:
        fh.truncate(data.rfind(b"\n") + 1)
        fh.flush()
        os.fsync(fh.fileno())


def write_meta(run_dir: Path | str, meta: dict) -> None:
    atomic_write(Path(run_dir) / META, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def read_meta(run_dir: Path | str) -> dict:
    path = Path(run_dir) / META
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
