"""`ragkit eval schema`: the malformed rate, measured. Structured extraction from the bundled NQ passages,
per model and per enforcement (the registry's deepest, e.g. the local grammar, or validation only).

Each task is one passage (cut to `max_chars`) and its NQ question; the model fills EXTRACT_SCHEMA
through the ask path's own pieces (prompt.build_prompt + the schema's frame, structured.complete_structured
with its one repair turn, ledger.account for every paid call). References come from the data: the
passage's title, the question's gold answers, the first year written in the passage (or null).

The eval machinery does the rest, as for `ragkit compare`: one EvalRecord per task in results.jsonl,
runner.execute (ledger -> cache -> log, so a killed run resumes without paying twice; every completion,
repairs included, is its own cache entry keyed with the schema and the enforcement).

    run_schema_eval = extraction_tasks -> plan (prompt per task, model, mode) -> execute -> compact
                    -> render_schema_report (report.md, summary.json)
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ragkit.errors import ConfigError, InputError
from ragkit.evals.cache import CachedResponse, ResponseCache, call_key
from ragkit.evals.records import EvalRecord, RecordLog, latest_by_call, plural, read, read_meta, results_path, \
    write_meta
from ragkit.evals.runner import DEFAULT_CONCURRENCY, Plan, _Tally, compact, execute
from ragkit.redact import redact

FORMAT = "ragkit-eval-schema/1"
TASK = "schema"
# One field per line: the shorthand splits fields at commas.
EXTRACT_SCHEMA = ("title str: the title of the source\n"
                  "answer str: the short answer to the question as written in the source\n"
                  "year int | null: the first year (four digits) written in the source or null if it has none")
FIELDS = ("title", "answer", "year")
DEFAULT_TASKS = 100
DEFAULT_MAX_CHARS = 1200
DEFAULT_MAX_TOKENS = 80
_YEAR = re.compile(r"(?<![\d,.])(1\d{3}|20\d{2})(?![\d,])")


# ---------------------------------------------------------------- the tasks and their references

@dataclass(frozen=True)
class ExtractionTask:
    index: int                     # order in the task set
    passage_id: str                # the NQ passage's record id
    question: str
    answers: tuple[str, ...]       # NQ gold answers, each found in the cut passage
    title: str                     # the passage's title: the reference for `title`
    year: int | None               # the first year in the cut passage: the reference for `year`
    source: object                 # prompt.SourceRef: the cut passage, source [1]

    @property
    def reference(self) -> dict:
        return {"title": self.title, "answer": list(self.answers), "year": self.year}


def first_year(text: str) -> int | None:
    """The first four-digit number from 1000 to 2099 standing alone in `text` (not part of 1,500 or 3.1415)."""
    m = _YEAR.search(text)
    return int(m.group(1)) if m else None


def cut(text: str, max_chars: int) -> str:
    """`text` up to max_chars, cut back to the last white space (no half word)."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    return head[: head.rfind(" ")] if " " in head[max_chars // 2:] else head


def extraction_tasks(n: int = DEFAULT_TASKS, *, corpus=None, questions=None,
                     max_chars: int = DEFAULT_MAX_CHARS) -> list[ExtractionTask]:
    """The first n questions (file order) whose passage, cut to max_chars, has a title and still holds a
    gold answer; one question per passage. Deterministic: the same n gives the same tasks."""
    from ragkit.evals.scoring import normalize_answer
    from ragkit.evals.tasks import BUNDLED_CORPUS, BUNDLED_QUESTIONS
    from ragkit.loaders import load_documents
    from ragkit.prompt import as_sources

    if n < 1:
        raise InputError("the schema eval needs at least one task: -n 100.")
    if max_chars < 200:
        raise InputError("--max-chars below 200 leaves too little of a passage to extract from; use e.g. 1200.")
    docs = {str(d.meta.get("id")): d for d in load_documents(corpus or BUNDLED_CORPUS)}
    path = Path(questions or BUNDLED_QUESTIONS)
    tasks: list[ExtractionTask] = []
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else None
        doc = docs.get(str((row or {}).get("passage_id")))
        if doc is None or doc.id in seen or not isinstance(doc.meta.get("title"), str) or not doc.meta["title"].strip():
            continue
        text = cut(doc.text, max_chars)
        held = tuple(a for a in row.get("answers", ()) if normalize_answer(a) and
                     normalize_answer(a) in normalize_answer(text))
        if not held:
            continue
        seen.add(doc.id)
        span = replace(doc.span(), end_char=len(text), text=text)
        tasks.append(ExtractionTask(len(tasks), str(doc.meta["id"]), row["question"].strip(), held,
                                    doc.meta["title"].strip(), first_year(text), as_sources([span])[0]))
        if len(tasks) == n:
            break
    if len(tasks) < n:
        raise InputError(f"only {len(tasks)} extraction tasks can be built from {path} (asked for {n}); "
                         "lower -n or raise --max-chars.")
    return tasks


def score_fields(value: dict | None, reference: dict) -> dict[str, float]:
    """1.0 / 0.0 per field against a task's reference: title equal (normalised); answer holding one of the
    gold answers (the QA eval's subspan match) in at most twice its words plus 5, so a copied passage does
    not count; year equal (null when the passage has none). No valid object: every field 0."""
    from ragkit.evals.scoring import normalize_answer

    if not isinstance(value, dict):
        return {f: 0.0 for f in FIELDS}
    title, year = value.get("title"), value.get("year")
    answer = normalize_answer(str(value.get("answer") or ""))
    golds = [g for g in map(normalize_answer, reference["answer"]) if g]
    return {"title": float(isinstance(title, str) and normalize_answer(title) == normalize_answer(reference["title"])),
            "answer": float(any(g in answer and len(answer.split()) <= 2 * len(g.split()) + 5 for g in golds)),
            "year": float(year == reference["year"] and type(year) is type(reference["year"]))}


# ---------------------------------------------------------------- modes: how the schema is enforced

def enforcement_modes(spec, wanted: Sequence[str]) -> list[tuple[str, object]]:
    """(label, spec as run) per mode asked. "native": the registry's structured_output for the model
    (local: grammar, Anthropic: tool, OpenAI: strict or json_mode); "validated": none, the reply is only
    validated; or a structured_output value the provider has."""
    from ragkit.models import STRUCTURED_OUTPUT

    own = STRUCTURED_OUTPUT[spec.provider]
    out: list[tuple[str, object]] = []
    for mode in wanted:
        mode = mode.strip()
        setting = {"native": spec.structured_output, "validated": "none"}.get(mode, mode)
        if setting not in own:
            raise InputError(f"--enforcement {mode!r} does not apply to {spec.id} (provider {spec.provider}); use "
                             f"native, validated or one of {', '.join(own)}.")
        label = "validated" if setting == "none" else setting
        if label not in (m[0] for m in out):
            out.append((label, replace(spec, structured_output=setting)))
    if not out:
        raise InputError("give at least one --enforcement: native, validated or both (native,validated).")
    return out


# ---------------------------------------------------------------- planning

@dataclass(frozen=True)
class SchemaCall:
    call_id: str                  # "MODEL/MODE/PASSAGE"
    task: ExtractionTask
    label: str                    # the enforcement asked: grammar, strict, tool, json_mode, validated
    spec: object                  # the model spec as run (its structured_output set to the mode)
    provider: object
    system: str
    user: str
    key: str                      # the first completion's cache key (the record's key)


def plan_schema(tasks: Sequence[ExtractionTask], runs: Sequence[tuple[str, object, object]], schema, answered: dict,
                *, max_tokens: int, temperature: float) -> Plan:
    """Every call, task by task (then model, then mode) so that a partial run compares modes on the same
    tasks. runs: (label, spec, provider). answered: call id -> logged key."""
    from ragkit.prompt import build_prompt

    calls = []
    for task in tasks:
        system, user = build_prompt(task.question, [task.source], frame=schema.frame)
        for label, spec, provider in runs:
            key = call_key(spec.id, spec.api_model, system, user, max_tokens, temperature, schema_key_extra(schema, spec))
            calls.append(SchemaCall(f"{spec.id}/{label}/{task.passage_id}", task, label, spec, provider,
                                    system, user, key))
    todo = [c for c in calls if answered.get(c.call_id) != c.key]
    return Plan(calls, todo, {})  # no hits: every completion (repairs too) is looked up by the caller


# ---------------------------------------------------------------- executing: complete_structured, cached, accounted

class CachedProvider:
    """A provider behind complete_structured for one question: each completion (the repair too) is looked up
    in the response cache first, keyed with `extra` (the schema and its enforcement); a paid one gets its
    ledger row, then its cache entry (the runner's order: a kill never hides a cost or pays twice)."""

    def __init__(self, provider, spec, cache: ResponseCache, *, extra: dict, ledger, task: str, strategy: str,
                 question: str, log_question: bool = False):
        self.provider, self.spec, self.cache, self.extra, self.ledger = provider, spec, cache, extra, ledger
        self.task, self.strategy, self.question, self.log_question = task, strategy, question, log_question
        self.paid = 0
        self.cost = 0.0

    def complete(self, system, prompt, *, max_tokens, temperature=0.0, on_text=None, schema=None):
        from ragkit.ledger import account
        from ragkit.providers.base import Completion

        spec = self.spec
        key = call_key(spec.id, spec.api_model, system, prompt, max_tokens, temperature, self.extra)
        hit = self.cache.get(key)
        if hit is not None:
            return Completion(hit.text, hit.input_tokens, hit.output_tokens, hit.ttft_s or hit.latency_s,
                              hit.latency_s, spec.api_model, "length" if hit.output_tokens >= max_tokens else "stop",
                              enforcement=_ENFORCED.get(self.extra.get("enforcement"), "validated"))
        done = self.provider.complete(system, prompt, max_tokens=max_tokens, temperature=temperature, schema=schema)
        cost = account(done, spec, task=self.task, strategy=self.strategy, question=self.question,
                       log_question=self.log_question, ledger=self.ledger).cost_usd
        self.cache.put(key, spec.id, CachedResponse(done.text, done.input_tokens, done.output_tokens,
                                                     done.latency_s, cost, time.time(), done.ttft_s))
        self.paid += 1
        self.cost += cost
        return done


def schema_key_extra(schema, spec) -> dict:
    """What a structured call's cache key adds: the schema sent and how it is enforced."""
    setting = spec.structured_output
    return {"schema": schema.wire(), "enforcement": "validated" if setting == "none" else setting}


def structured_outcome(schema, calls: Sequence, value, enforcement: str, error: str | None) -> dict:
    """The facts of one structured answer every report reads: validity on the first reply and after the
    repair, why the first failed, repairs, calls, the tokens and decode time of each call."""
    first = _first_reply(schema, calls[0].text)
    return {"valid_first": first is None, "valid": value is not None, "first_error": first,
            "first_reply": calls[0].text if len(calls) > 1 else None,
            "repairs": len(calls) - 1, "calls": len(calls), "enforcement": enforcement,
            "cut_at_limit": [c.finish_reason == "length" for c in calls],
            "output_tokens": [c.output_tokens for c in calls],
            "decode_s": [round(max(0.0, c.latency_s - c.ttft_s), 4) for c in calls],
            "value": value, "error": error}


def complete_cached(provider: CachedProvider, schema, system: str, user: str, *, max_tokens: int,
                    temperature: float, n_sources: int) -> tuple[list, dict]:
    """complete_structured through the cache: (the calls, structured_outcome). A reply that never validates
    is an outcome (valid False); a provider failure raises."""
    from ragkit.structured import StructuredOutputError, complete_structured

    calls: list = []
    try:
        result = complete_structured(provider, schema, system, user, max_tokens=max_tokens, temperature=temperature,
                                     n_sources=n_sources, on_call=calls.append)
        value, error, enforcement = result.parsed.value, None, result.enforcement
    except StructuredOutputError as exc:  # measured: invalid after the repair, not a failed call
        value, error, enforcement = None, str(exc), getattr(calls[-1], "enforcement", "") or "validated"
    return calls, structured_outcome(schema, calls, value, enforcement, error)


# What each provider reports for a mode (json_mode: JSON only, the schema itself is validated).
_ENFORCED = {"grammar": "grammar", "strict": "strict", "tool": "tool", "json_mode": "validated", "validated": "validated"}


@dataclass
class _SchemaCaller:
    """runner.execute's caller: one task = complete_structured (first reply + at most one repair)."""

    cache: ResponseCache
    ledger: object
    schema: object
    max_tokens: int
    temperature: float

    def send(self, call: SchemaCall) -> tuple[EvalRecord, CachedResponse | None]:
        provider = CachedProvider(call.provider, call.spec, self.cache, extra=schema_key_extra(self.schema, call.spec),
                                  ledger=self.ledger, task=f"eval:{TASK}", strategy=call.label,
                                  question=call.task.question)
        t0 = time.monotonic()
        try:
            calls, outcome = complete_cached(provider, self.schema, call.system, call.user, max_tokens=self.max_tokens,
                                             temperature=self.temperature, n_sources=1)
        except Exception as exc:  # noqa: BLE001 - a provider failure is logged unscored, retried on resume
            return EvalRecord(**self._where(call), status="failed", error=redact(f"{type(exc).__name__}: {exc}")[:500],
                              latency_s=round(time.monotonic() - t0, 3), metrics={}), None
        fields = score_fields(outcome["value"], call.task.reference)
        metrics = {**outcome, "paid": provider.paid, "reference": call.task.reference, "fields": fields}
        record = EvalRecord(**self._where(call), status="ok", prediction=calls[-1].text,
                            score=sum(fields.values()) / len(FIELDS),
                            input_tokens=sum(c.input_tokens for c in calls),
                            output_tokens=sum(c.output_tokens for c in calls), cost_usd=round(provider.cost, 8),
                            latency_s=round(sum(c.latency_s for c in calls), 3), ttft_s=round(calls[0].ttft_s, 3),
                            cached=provider.paid == 0, metrics=metrics)
        return record, None

    def answered(self, call: SchemaCall, answer, *, cached: bool) -> EvalRecord:  # execute's API; unused: no hits
        raise AssertionError("schema eval calls are answered through send (the cache is read per completion)")

    def failed(self, call: SchemaCall, error: str, latency_s: float) -> EvalRecord:
        return EvalRecord(**self._where(call), status="failed", error=error, latency_s=latency_s, metrics={})

    @staticmethod
    def _where(call: SchemaCall) -> dict:
        t = call.task
        return dict(call_id=call.call_id, task=TASK, model=call.spec.id, length=len(t.source.text),
                    length_unit="chars", depth=0, depth_unit="position", strategy=call.label, sample=t.index,
                    question=t.question, answers=t.answers, context_tokens=0, gold_in_context=True, key=call.key)


def _first_reply(schema, text: str) -> str | None:
    """Why the first reply did not match (None: it did)."""
    from ragkit.structured import SchemaMismatch

    try:
        schema.parse(text, n_sources=1)
    except SchemaMismatch as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class SchemaEvalResult:
    out_dir: str
    calls: int                    # tasks x models x modes
    done: int                     # already logged before this run
    made: int                     # tasks run now (their completions paid, or read from the cache)
    failed: int
    cost_usd: float               # paid in this run
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def run_schema_eval(models: Sequence[str], out_dir: Path | str, *, n: int = DEFAULT_TASKS,
                    enforcement: Sequence[str] = ("native", "validated"), max_chars: int = DEFAULT_MAX_CHARS,
                    max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, corpus=None, questions=None,
                    cache: ResponseCache | None = None, base_url: str | None = None,
                    max_cost_usd: float | None = None, concurrency: int | None = None, ledger=True,
                    progress: bool = True, echo: Callable[[str], None] = print, render: bool = True,
                    command: str | None = None) -> SchemaEvalResult:
    """Runs (or resumes) the schema eval into out_dir: run.json + results.jsonl (+ report.md, summary.json).
    Every completion paid is priced and recorded in the cost ledger (`ledger`: True = the user's, None = none).
    command: the command line that runs it, kept in run.json so a partial report says how to resume."""
    from ragkit.costs import check_max_cost, cost_usd, usd
    from ragkit.ledger import Ledger
    from ragkit.models import get_model
    from ragkit.providers import provider_for
    from ragkit.structured import MAX_REPAIRS, make_schema
    from ragkit.tokens import counter_for

    started = time.monotonic()
    max_cost_usd = check_max_cost(max_cost_usd)
    specs = list({s.id: s for s in (get_model(m) for m in models)}.values())  # unknown models fail first
    if not specs:
        raise InputError("the schema eval needs at least one model: -m local.")
    schema = make_schema(EXTRACT_SCHEMA)
    tasks = extraction_tasks(n, corpus=corpus, questions=questions, max_chars=max_chars)
    runs = []
    for spec in specs:
        for label, run_spec in enforcement_modes(spec, enforcement):
            runs.append((label, run_spec, provider_for(run_spec, base_url=base_url)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else ResponseCache()
    log = RecordLog(out)
    previous = {cid: r for cid, r in latest_by_call(log.read()).items() if r.ok}
    plan = plan_schema(tasks, runs, schema, {c: r.key for c, r in previous.items()}, max_tokens=max_tokens,
                       temperature=temperature)
    # Upper bound: every task still to do pays its first reply and its repair at full length.
    bound = sum(cost_usd(c.spec, (1 + MAX_REPAIRS) * counter_for(c.spec).count(c.system + c.user),
                         (1 + MAX_REPAIRS) * max_tokens) for c in plan.todo)
    echo(f"{plural(len(plan.calls), 'task')} ({len(tasks)} passages x {len(runs)} model/mode): "
         f"{len(plan.calls) - len(plan.todo)} already done, {len(plan.todo)} to run; at most ${bound:.4f}")
    if max_cost_usd is not None and bound > max_cost_usd:
        raise ConfigError(f"the estimated cost {usd(bound)} exceeds --max-cost {usd(max_cost_usd)}; "
                          "use fewer tasks (-n) or raise --max-cost.")
    write_meta(out, {"format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "task": TASK, "schema": EXTRACT_SCHEMA, "wire_schema": schema.wire(), "tasks": len(tasks),
                     "max_chars": max_chars, "max_tokens": max_tokens, "temperature": temperature,
                     "max_repairs": MAX_REPAIRS, "corpus": str(corpus or "bundled:nq-wiki"),
                     "questions": str(questions or "bundled:nq-wiki.jsonl"),
                     "command": command, "models": [s.id for s in specs], "modes": {f"{s.id}/{label}": s.structured_output
                                                                for label, s, _ in runs}})
    caller = _SchemaCaller(cache, Ledger() if ledger is True else (ledger or None), schema, max_tokens, temperature)
    tally = _Tally([previous[cid] for cid in plan.done_ids])
    workers = concurrency or min(DEFAULT_CONCURRENCY.get(s.provider, 4) for s in specs)
    execute(plan, caller, log, tally, workers=workers, progress=progress, label="eval schema")
    lines = compact(log, plan.calls)
    if render:
        render_schema_report(out)
    return SchemaEvalResult(str(out), len(plan.calls), len(plan.calls) - len(plan.todo), tally.logged,
                            sum(1 for r in lines if not r.ok), round(tally.cost, 6),
                            round(time.monotonic() - started, 2))


# ---------------------------------------------------------------- summary and report (no model calls)

def load_schema_run(out_dir: Path | str) -> tuple[dict, list[EvalRecord]]:
    out = Path(out_dir)
    if not results_path(out).exists():
        raise InputError(f"{out} has no results.jsonl: run `ragkit eval schema -m MODEL --out {out}` first.")
    return read_meta(out), list(latest_by_call(read(out)).values())


def is_schema_run(out_dir: Path | str) -> bool:
    return str(read_meta(out_dir).get("format", "")).split("/")[0] == FORMAT.split("/")[0]


def _rate(k: float, n: int) -> dict:
    from ragkit.evals.report import wilson

    lo, hi = wilson(k, n) if n else (None, None)
    return {"rate": k / n if n else None, "k": k, "n": n, "low": lo, "high": hi}


def _first_decode_speed(metrics: dict) -> float | None:
    """Decode tokens/s of the first reply: tokens after the first over the time after the first token."""
    tokens, secs = metrics.get("output_tokens") or [0], metrics.get("decode_s") or [0.0]
    return (tokens[0] - 1) / secs[0] if tokens[0] > 1 and secs[0] > 0 else None


def summarize_group(records: Sequence[EvalRecord]) -> dict:
    """One model x mode: validity (first reply, after the repair), how the first replies failed, field
    accuracy (an invalid answer scores 0 on every field), repairs, and decode speed."""
    ok = [r for r in records if r.ok]
    m = [r.metrics or {} for r in ok]
    n = len(ok)
    fields = [score_fields(x.get("value"), x["reference"]) for x in m]  # scored now: the scorer may have improved
    first = [(x.get("first_error") or "", bool((x.get("cut_at_limit") or [False])[0])) for x in m]
    not_json = [cut for e, cut in first if e.startswith("the reply is not valid JSON")]
    wrong_shape = sum(1 for e, _ in first if e and not e.startswith("the reply is not valid JSON"))
    out_tokens = sum(t for x in m for t in x.get("output_tokens", ()))
    decode_s = sum(s for x in m for s in x.get("decode_s", ()))
    speeds = [s for s in map(_first_decode_speed, m) if s is not None]
    return {
        "n": n, "failed": len(records) - n,
        "valid_first": _rate(sum(1 for x in m if x.get("valid_first")), n),
        "valid_after_repair": _rate(sum(1 for x in m if x.get("valid")), n),
        "not_json_first": _rate(len(not_json), n),
        "not_json_cut_first": _rate(sum(not_json), n),        # of those, cut at max tokens
        "wrong_shape_first": _rate(wrong_shape, n),           # valid JSON that does not match the schema
        "field_accuracy": _rate(sum(sum(f.values()) / len(FIELDS) for f in fields), n),
        "fields": {f: _rate(sum(x[f] for x in fields), n) for f in FIELDS},
        "repairs": sum(x.get("repairs", 0) for x in m), "calls": sum(x.get("calls", 1) for x in m),
        "repairs_per_task": sum(x.get("repairs", 0) for x in m) / n if n else None,
        "output_tokens": out_tokens, "decode_s": round(decode_s, 2),
        # the median reply's speed: a sum over replies lets one stalled reply (a paused or starved process)
        # set the figure for a whole mode
        "tokens_per_s": round(statistics.median(speeds), 2) if speeds else None,
        "latency_s_per_task": round(sum(r.latency_s for r in ok) / n, 2) if n else None,
        "cost_usd": round(sum(r.cost_usd for r in ok), 6),
        "enforcement": sorted({x.get("enforcement") for x in m if x.get("enforcement")}),
    }


def summarize_schema(meta: dict, records: Sequence[EvalRecord]) -> dict:
    """Per model and mode, plus paired differences between a model's modes on the tasks both answered."""
    from ragkit.evals.report import paired_bootstrap

    groups: dict[str, list[EvalRecord]] = {}
    for r in sorted(records, key=lambda r: r.sample):
        groups.setdefault(f"{r.model}/{r.strategy}", []).append(r)
    paired = []
    labels = list(groups)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a.split("/")[0] != b.split("/")[0]:
                continue
            ra = {r.sample: r for r in groups[a] if r.ok}
            rb = {r.sample: r for r in groups[b] if r.ok}
            both = sorted(set(ra) & set(rb))
            if not both:
                continue
            row = {"a": a, "b": b, "n": len(both)}
            accuracy = lambda r: sum(score_fields(r.metrics.get("value"), r.metrics["reference"]).values()) / len(FIELDS)  # noqa: E731
            for name, get in (("valid_first", lambda r: float(r.metrics["valid_first"])),
                              ("field_accuracy", accuracy)):
                diffs = [get(ra[s]) - get(rb[s]) for s in both]
                lo, hi = paired_bootstrap(diffs)
                row[name] = {"diff": sum(diffs) / len(diffs), "low": lo, "high": hi}
            ratios = [sa / sb for sa, sb in ((_first_decode_speed(ra[s].metrics), _first_decode_speed(rb[s].metrics))
                                             for s in both) if sa and sb]
            row["decode_speed_ratio"] = round(statistics.median(ratios), 3) if ratios else None  # the same task's replies
            paired.append(row)
    return {"format": meta.get("format"), "created": meta.get("created"), "schema": meta.get("schema"),
            "tasks": meta.get("tasks"), "command": meta.get("command"), "max_chars": meta.get("max_chars"), "max_tokens": meta.get("max_tokens"),
            "temperature": meta.get("temperature"), "max_repairs": meta.get("max_repairs"),
            "groups": {label: summarize_group(rs) for label, rs in groups.items()}, "paired": paired}


def _pct(rate: dict) -> str:
    if rate.get("rate") is None:
        return "-"
    return f"{100 * rate['rate']:.1f}% ({100 * rate['low']:.0f}-{100 * rate['high']:.0f})"


def render_markdown(summary: dict, records: Sequence[EvalRecord], folder: str = "FOLDER") -> str:
    lines = ["# Structured answers: schema-valid rate and field accuracy, by enforcement", "", *_partial(summary),
             f"{summary['tasks']} extraction tasks from the bundled NQ passages (each passage cut to "
             f"{summary['max_chars']:,} characters, sent as source [1] with its NQ question), schema:", "",
             "```", summary["schema"] or "", "```", "",
             f"Max {summary['max_tokens']} output tokens per reply, temperature {summary['temperature']}, at most "
             f"{summary['max_repairs']} repair round-trip (the validation error sent back). References from the data: "
             "`title` = the passage's title (normalised equality), `answer` = one of the NQ gold answers found in the "
             "cut passage (subspan match, in at most twice its words plus 5), `year` = the first four-digit year 1000-2099 in the cut passage, null if "
             "none (equality). A reply that never validates scores 0 on every field. Intervals: 95% Wilson; "
             "differences: paired bootstrap over tasks.", "",
             "| model / enforcement | tasks | schema-valid, first reply | not JSON | of which cut at max tokens | "
             "valid JSON, wrong shape | valid after repair | repairs | field accuracy | title | answer | year | "
             "decode tok/s | s / task |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, g in summary["groups"].items():
        f = g["fields"]
        failed = f" (+{g['failed']} failed)" if g["failed"] else ""
        lines.append(f"| {label} | {g['n']}{failed} | "
                     f"{_pct(g['valid_first'])} | {_pct(g['not_json_first'])} | {_pct(g['not_json_cut_first'])} | "
                     f"{_pct(g['wrong_shape_first'])} | "
                     f"{_pct(g['valid_after_repair'])} | {g['repairs']} ({g['calls']} calls) | "
                     f"{_pct(g['field_accuracy'])} | {_pct(f['title'])} | {_pct(f['answer'])} | {_pct(f['year'])} | "
                     f"{g['tokens_per_s'] if g['tokens_per_s'] is not None else '-'} | "
                     f"{g['latency_s_per_task'] if g['latency_s_per_task'] is not None else '-'} |")
    if summary["paired"]:
        lines += ["", "Paired differences (same tasks; first minus second, percentage points, 95% interval):", ""]
        for p in summary["paired"]:
            v, a = p["valid_first"], p["field_accuracy"]
            speed = (f"; decode speed {p['decode_speed_ratio']:.3f}x (median over tasks of the first's tokens/s over "
                     f"the second's)" if p.get("decode_speed_ratio") else "")
            lines.append(f"- {p['a']} - {p['b']} over {p['n']} tasks: schema-valid first reply "
                         f"{100 * v['diff']:+.1f} ({100 * v['low']:+.1f} to {100 * v['high']:+.1f}); field accuracy "
                         f"{100 * a['diff']:+.1f} ({100 * a['low']:+.1f} to {100 * a['high']:+.1f}){speed}.")
    failures = [r for r in records if r.ok and (r.metrics or {}).get("first_error")]
    if failures:
        lines += ["", "First replies that did not match (up to 3 per model / enforcement):", ""]
        shown: dict[str, int] = {}
        for r in failures:
            label = f"{r.model}/{r.strategy}"
            if shown.get(label, 0) >= 3:
                continue
            shown[label] = shown.get(label, 0) + 1
            lines.append(f"- {label}, task {r.sample}: {r.metrics['first_error'][:160]}; "
                         f"{'repaired' if r.metrics.get('valid') else 'still invalid after the repair'}.")
    lines += ["", "Decode tok/s: output tokens after the first, over the time after the first token, first replies "
              "only, the median reply (the constraint's cost per token; the prompt's prefill is in s / task).",
              f"Re-render without calling a model: `ragkit eval report {folder}`."]
    return "\n".join(lines) + "\n"


def _partial(summary: dict) -> list[str]:
    """A line saying the run is not complete (and how to resume it), or nothing."""
    done = min((g["n"] for g in summary["groups"].values()), default=0)
    if not summary.get("tasks") or done >= summary["tasks"]:
        return []
    resume = f" Resume: `{summary['command']}`." if summary.get("command") else " Resume with the same command."
    return [f"**Partial run**: {done} of the {summary['tasks']} tasks answered by every model / enforcement so "
            f"far (tasks run in order, each under every enforcement in turn, so the rows below compare the same "
            f"tasks).{resume}", ""]


def render_schema_report(out_dir: Path | str) -> dict:
    """Writes report.md and summary.json into out_dir from its results.jsonl; returns the summary."""
    from ragkit.evals.records import atomic_write

    out = Path(out_dir)
    meta, records = load_schema_run(out)
    if not records:
        raise InputError(f"{out}/results.jsonl is empty: nothing to report.")
    summary = summarize_schema(meta, records)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out / "report.md", render_markdown(summary, records, str(out)))
    return summary
