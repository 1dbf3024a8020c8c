"""A run folder's files: results.jsonl (one EvalRecord per call, one JSON line each) and run.json.

This module is their only reader and writer; the runner writes records, the report and the CLI read
them. Every line carries its format version ("v"): a line written by a newer ragkit is refused with
a sentence, lines written by older ragkit read as they are (a missing optional field takes its
default), so committed reports re-render. A line cut short by a kill is dropped, on reading and
before the next append: its response is in the cache, so resuming logs that call again for free.
"""
from __future__ import annotations

import functools
import json
import os
import threading
import types
import typing
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
    ttft_s: float | None = None       # time to the first token, when the call streamed (compare)
    metrics: dict | None = None       # further scores and facts of the answer, by name (compare: f1, citation...)
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["answers"] = list(self.answers)
        for name in _OMITTED_WHEN_NONE:  # fields added later: lines without them keep their exact bytes
            if d[name] is None:
                del d[name]
        return {"v": d.pop("schema_version"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "a record") -> "EvalRecord":
        if not isinstance(d, dict):
            raise InputError(f"{where} is not an eval record (it holds {type(d).__name__}, not a JSON object); "
                             "a run folder's results.jsonl holds only what `ragkit eval` wrote.")
        version = d.get("v", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise InputError(f"{where} was written by a newer ragkit (results format v{version}; this ragkit "
                             f"reads up to v{SCHEMA_VERSION}): upgrade ragkit to read or resume this run.")
        missing = [f.name for f in _REQUIRED if f.name not in d]
        if missing:
            raise InputError(f"{where} is not an eval record (no {', '.join(missing)}); "
                             "a run folder's results.jsonl holds only what `ragkit eval` wrote.")
        known = {k: d[k] for k in _NAMES if k in d}
        wrong = wrong_type(cls, known)
        if wrong:
            raise InputError(f"{where} is damaged ({wrong}); restore the file or delete that line "
                             "(resuming the run asks that call again, or takes it from the cache).")
        known["answers"] = tuple(known.get("answers") or ())
        return cls(**known, schema_version=version)


_OMITTED_WHEN_NONE = ("ttft_s", "metrics")
_REQUIRED = [f for f in fields(EvalRecord) if f.default is MISSING and f.default_factory is MISSING]
_NAMES = {f.name for f in fields(EvalRecord)} - {"schema_version"}


def wrong_type(cls, values: dict) -> str | None:
    """What in `values` does not have the type dataclass `cls` declares for it ("score is 'x' (str), not
    float or null"), or None: run files and cache rows pass this before any report does arithmetic on them."""
    hints = _hints(cls)
    for name, value in values.items():
        if name in hints and not _is(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return f"{name} is {shown} ({type(value).__name__}), not {_hint_name(hints[name])}"
    return None


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:  # tuple[str, ...]: a JSON list of strings
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if hint in (int, float):  # JSON has one number type; a bool is not a number here
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _hint_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(map(_hint_name, typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return "null" if hint is type(None) else hint.__name__


def results_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / RESULTS


def read(run_dir: Path | str) -> list[EvalRecord]:
    """Every record of the folder's log in file order (a retried call appears more than once)."""
    path = results_path(run_dir)
    if not path.exists():
        return []
    out = []
    # split at b"\n" only, so line numbers are the ones `wc -l` counts; a byte that is not UTF-8 reads as U+FFFD
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        data = _parse(raw.decode("utf-8", errors="replace"))
        if data is not None:
            out.append(EvalRecord.from_dict(data, f"{path} line {n}"))
    return out


def _parse(line: str) -> dict | None:
    """A line's JSON value; None for a blank or torn line. A whole record glued after a torn one
    (logs appended by ragkit before it dropped torn lines) is recovered."""
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except (json.JSONDecodeError, RecursionError):
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
    """The folder's run.json ({} when there is none); one sentence when it is not a JSON object."""
    path = Path(run_dir) / META
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("format", ""), str):
        raise InputError(f"{path} is not a run's run.json (it should be the JSON object ragkit wrote, with its "
                         '"format"); restore it, or run again into a new --out folder.')
    return meta


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
