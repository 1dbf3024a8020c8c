"""Grid runner: task x lengths x depths x strategies x samples -> one model call each -> results.jsonl.

Log first, render later (inspect_ai's habit): every call becomes one JSON line as soon as it ends,
and the report is re-rendered from that file without calling a model. Responses are cached in
SQLite before their line is written, so a run killed at any point resumes without paying twice;
a failed call is logged as failed (unscored) and retried on resume.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ragkit.errors import ConfigError, InputError
from ragkit.evals.cache import CachedResponse, ResponseCache, call_key
from ragkit.evals.retrieval import Ranker, planner_budget, retrieve_units, stuff_units
from ragkit.evals.tasks import Sample, Task

FORMAT = "ragkit-eval/1"
STRATEGIES = ("stuff", "retrieve")
DEFAULT_CONCURRENCY = {"local": 1, "anthropic": 4, "openai": 8}
MESSAGE_OVERHEAD_TOKENS = 8  # chat framing around system + user turns, for estimates only


@dataclass(frozen=True)
class GridSpec:
    """What to run. Lengths are tokens (or documents for the paper's QA setting); depths percent/positions."""

    task: str
    model: str
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    samples: int = 3
    strategies: tuple[str, ...] = ("stuff",)
    max_tokens: int = 64
    temperature: float = 0.0
    retrieve_budget_tokens: int | None = None   # None: the planner's budget for the model
    order: str = "edges"
    stuff_order: str = "document"               # "edges": stuffed units ordered like `ragkit ask` orders documents
    task_options: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise InputError(f"unknown strategy {bad[0]!r}: use stuff, retrieve or both (stuff,retrieve)")
        if not self.lengths or not self.depths or self.samples < 1:
            raise InputError("an eval needs at least one length, one depth and one sample")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"], d["depths"], d["strategies"] = list(self.lengths), list(self.depths), list(self.strategies)
        return d


@dataclass(frozen=True)
class Call:
    call_id: str
    sample: Sample
    strategy: str
    system: str
    prompt: str
    context_tokens: int
    prompt_tokens: int          # estimate in the model's counting encoding (system + user + framing)
    gold_in_context: bool
    key: str


@dataclass(frozen=True)
class Estimate:
    calls: int
    done: int                   # already in this run's results
    cached: int                 # answered by the response cache (free)
    to_call: int
    input_tokens: int           # for the calls still to make (planning estimate)
    output_tokens_max: int
    cost_usd: float             # upper bound: every answer at max tokens

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, model: str) -> str:
        return (f"{self.calls} calls to {model}: {self.done} already done, {self.cached} cached, "
                f"{self.to_call} to make (~{self.input_tokens:,} input tokens, <= {self.output_tokens_max:,} output); "
                f"estimated cost ${self.cost_usd:.4f}")


@dataclass(frozen=True)
class RunResult:
    out_dir: str
    estimate: Estimate
    calls_made: int
    failed: int
    accuracy: float | None
    cost_usd: float             # paid in this run (cache hits cost nothing)
    wall_s: float

    def to_dict(self) -> dict:
        return {**asdict(self), "estimate": self.estimate.to_dict()}


def call_id(strategy: str, sample: Sample) -> str:
    return f"{strategy}/L{sample.length}/D{sample.depth:g}/S{sample.sample}"


def build_calls(task: Task, grid: GridSpec, spec, counter, ranker: Ranker | None = None,
                samples: Sequence[Sample] | None = None) -> list[Call]:
    """Every prompt of the grid, exactly as it will be sent (deterministic: same grid, same prompts)."""
    if samples is None:
        samples = task.samples(counter, grid.lengths, grid.depths, grid.samples)
    system_tokens = counter.count(task.system)
    calls = []
    for sample in samples:
        unit_tokens = counter.count_many(sample.units)
        for strategy in grid.strategies:
            if strategy == "stuff":
                chosen = stuff_units(sample.units, sample.question, order=grid.stuff_order)
            else:
                budget = grid.retrieve_budget_tokens or planner_budget(spec, task, sample, grid.max_tokens)
                chosen = retrieve_units(sample.units, sample.question, budget, counter, order=grid.order,
                                        ranker=ranker)
            prompt = task.render(sample, [sample.units[i] for i in chosen], retrieved=strategy == "retrieve")
            prompt_tokens = system_tokens + counter.count(prompt) + MESSAGE_OVERHEAD_TOKENS
            calls.append(Call(
                call_id=call_id(strategy, sample), sample=sample, strategy=strategy, system=task.system,
                prompt=prompt, context_tokens=sum(unit_tokens[i] for i in chosen), prompt_tokens=prompt_tokens,
                gold_in_context=any(i in chosen for i in sample.gold_units),
                key=call_key(spec.id, spec.api_model, task.system, prompt, grid.max_tokens, grid.temperature)))
    return calls


def upper_bound_cost(task: Task, grid: GridSpec, spec, counter, samples: Sequence[Sample], done_ids: set[str],
                     cache: ResponseCache) -> tuple[int, int, float]:
    """Cost if every call not yet logged or cached is paid at its largest prompt (retrieve at its full
    budget) and longest answer: checked before any ranking, so a run past --max-cost is refused at once.
    (A retrieve call cached but not in this run's log is counted: its prompt is not known yet.)"""
    from ragkit.costs import cost_usd

    system_tokens = counter.count(task.system) + MESSAGE_OVERHEAD_TOKENS
    tokens = calls = 0
    for sample in samples:
        prompt = task.render(sample, sample.units, retrieved=False)
        stuff = system_tokens + counter.count(prompt)
        for strategy in grid.strategies:
            if call_id(strategy, sample) in done_ids:
                continue
            if strategy == "retrieve":
                calls += 1
                budget = grid.retrieve_budget_tokens or planner_budget(spec, task, sample, grid.max_tokens)
                tokens += min(stuff, system_tokens + counter.count(task.render(sample, [], retrieved=True)) + budget)
            elif cache.get(call_key(spec.id, spec.api_model, task.system, prompt, grid.max_tokens,
                                    grid.temperature)) is None:
                calls += 1
                tokens += stuff
    tokens = counter.planning_tokens(tokens)
    return calls, tokens, cost_usd(spec, tokens, calls * grid.max_tokens)


# ---------------------------------------------------------------- the results log

class ResultsLog:
    """Append-only JSON Lines, one line per finished call, flushed and fsynced as it is written."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def read_results(path: Path) -> list[dict]:
    """All parseable lines (a line cut short by a kill is skipped: its response is in the cache)."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def latest_by_call(records: Sequence[dict]) -> dict[str, dict]:
    """One record per call: a success wins over a failure, then the latest wins."""
    best: dict[str, dict] = {}
    for r in records:
        prev = best.get(r["call_id"])
        if prev is None or r["status"] == "ok" or prev["status"] != "ok":
            best[r["call_id"]] = r
    return best


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- running

def _record(call: Call, spec, *, status: str, prediction: str | None, score: float | None, error: str | None,
            input_tokens: int, output_tokens: int, cost_usd: float, latency_s: float, cached: bool) -> dict:
    s = call.sample
    return {"v": 1, "call_id": call.call_id, "task": s.task, "model": spec.id, "length": s.length,
            "length_unit": s.length_unit, "depth": s.depth, "depth_unit": s.depth_unit, "strategy": call.strategy,
            "sample": s.sample, "question": s.question, "answers": list(s.answers), "prediction": prediction,
            "score": score, "status": status, "error": error, "context_tokens": call.context_tokens,
            "gold_in_context": call.gold_in_context, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cost_usd": cost_usd, "latency_s": round(latency_s, 3), "cached": cached, "key": call.key}


def estimate(calls: Sequence[Call], done: set[str], cache: ResponseCache, spec, counter, max_tokens: int) -> Estimate:
    from ragkit.costs import cost_usd

    todo = [c for c in calls if c.call_id not in done]
    cached = [c for c in todo if cache.get(c.key) is not None]
    to_call = [c for c in todo if cache.get(c.key) is None]
    input_tokens = sum(counter.planning_tokens(c.prompt_tokens) for c in to_call)
    output_max = len(to_call) * max_tokens
    return Estimate(len(calls), len(calls) - len(todo), len(cached), len(to_call), input_tokens, output_max,
                    cost_usd(spec, input_tokens, output_max))


def run_grid(task: Task, grid: GridSpec, out_dir: Path | str, *, provider=None, base_url: str | None = None,
             cache: ResponseCache | None = None, max_cost_usd: float | None = None, concurrency: int | None = None,
             ranker: Ranker | None = None, progress: bool = True,
             echo: Callable[[str], None] = print, render: bool = True) -> RunResult:
    """Runs (or resumes) a grid into out_dir: run.json + results.jsonl (+ the report when `render`)."""
    from ragkit.costs import cost_usd
    from ragkit.models import get_model
    from ragkit.tokens import counter_for

    started = time.monotonic()
    spec = get_model(grid.model)
    counter = counter_for(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else ResponseCache()  # (an empty cache is falsy: it has __len__)
    samples = task.samples(counter, grid.lengths, grid.depths, grid.samples)
    results_path = out / "results.jsonl"
    previous = latest_by_call(read_results(results_path))
    if max_cost_usd is not None:
        logged = {cid for cid, r in previous.items() if r["status"] == "ok"}
        n_calls, n_tokens, bound = upper_bound_cost(task, grid, spec, counter, samples, logged, cache)
        if bound > max_cost_usd:
            echo(f"{n_calls} calls to {spec.id} still to make: at most {n_tokens:,} input tokens "
                 f"(retrieve prompts counted at their full budget) + {n_calls * grid.max_tokens:,} output; "
                 f"at most ${bound:.4f}")
            raise ConfigError(f"the estimated cost ${bound:.4f} exceeds --max-cost ${max_cost_usd:.2f}; "
                              "use fewer lengths/depths/samples or raise --max-cost.")
    calls = build_calls(task, grid, spec, counter, ranker, samples)
    wanted = {c.call_id: c.key for c in calls}
    done = {cid for cid, r in previous.items() if r["status"] == "ok" and wanted.get(cid) == r.get("key")}
    est = estimate(calls, done, cache, spec, counter, grid.max_tokens)
    echo(est.describe(spec.id))
    if max_cost_usd is not None and est.cost_usd > max_cost_usd:
        raise ConfigError(f"the estimated cost ${est.cost_usd:.4f} exceeds --max-cost ${max_cost_usd:.2f}; "
                          "use fewer lengths/depths/samples or raise --max-cost.")
    _atomic_write(out / "run.json", json.dumps({
        "format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "grid": grid.to_dict(), "task": task.describe(), "model": spec.to_dict(),
        "system": task.system}, indent=2, ensure_ascii=False) + "\n")

    log = ResultsLog(results_path)
    todo = [c for c in calls if c.call_id not in done]
    workers = concurrency or DEFAULT_CONCURRENCY.get(spec.provider, 4)
    state = {"n": 0, "score": 0.0, "scored": 0, "failed": 0, "cost": 0.0, "made": 0}
    lock = threading.Lock()

    for cid in done:
        r = previous[cid]
        state["score"] += r["score"]
        state["scored"] += 1

    def finish(record: dict) -> None:
        log.append(record)
        with lock:
            state["n"] += 1
            if record["status"] == "ok":
                state["score"] += record["score"]
                state["scored"] += 1
            else:
                state["failed"] += 1
            if not record["cached"]:
                state["cost"] += record["cost_usd"]

    def from_cache(call: Call, hit: CachedResponse) -> dict:
        return _record(call, spec, status="ok", prediction=hit.text, score=task.score(hit.text, call.sample),
                       error=None, input_tokens=hit.input_tokens, output_tokens=hit.output_tokens,
                       cost_usd=hit.cost_usd, latency_s=hit.latency_s, cached=True)

    def make_call(call: Call) -> dict:
        hit = cache.get(call.key)  # another worker or an earlier run may have paid for it already
        if hit is not None:
            return from_cache(call, hit)
        t0 = time.monotonic()
        try:
            completion = provider.complete(call.system, call.prompt, max_tokens=grid.max_tokens,
                                           temperature=grid.temperature)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded as failed (unscored), never as wrong
            return _record(call, spec, status="failed", prediction=None, score=None,
                           error=f"{type(exc).__name__}: {exc}"[:500], input_tokens=0, output_tokens=0,
                           cost_usd=0.0, latency_s=time.monotonic() - t0, cached=False)
        cost = cost_usd(spec, completion.input_tokens, completion.output_tokens)
        cache.put(call.key, spec.id, CachedResponse(completion.text, completion.input_tokens,
                                                    completion.output_tokens, completion.latency_s, cost, time.time()))
        with lock:
            state["made"] += 1
        return _record(call, spec, status="ok", prediction=completion.text,
                       score=task.score(completion.text, call.sample), error=None,
                       input_tokens=completion.input_tokens, output_tokens=completion.output_tokens,
                       cost_usd=cost, latency_s=completion.latency_s, cached=False)

    cached_now = [(c, cache.get(c.key)) for c in todo]
    to_call = [c for c, hit in cached_now if hit is None]
    if to_call and provider is None:
        from ragkit.providers import provider_for

        provider = provider_for(spec, base_url=base_url)

    with _progress(progress, len(calls), len(done)) as bar:
        def tick():
            acc = state["score"] / state["scored"] if state["scored"] else float("nan")
            bar.update(state["n"] + len(done), acc=acc, cost=state["cost"], failed=state["failed"])

        for c, hit in cached_now:
            if hit is not None:
                finish(from_cache(c, hit))
        tick()
        # One call per distinct prompt: identical prompts in a grid wait for the first one's cached answer.
        leaders, followers, seen = [], [], set()
        for c in to_call:
            (followers if c.key in seen else leaders).append(c)
            seen.add(c.key)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = [pool.submit(make_call, c) for c in leaders]
            for fut in as_completed(futures):
                finish(fut.result())
                tick()
            for c in followers:
                finish(make_call(c))
                tick()
        except BaseException:
            # Ctrl-C: stop queued calls now (answers already received are cached and logged).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    # Compact: one line per call (the appended log may hold retries). This grid's calls first, in grid
    # order, answered for the prompt sent now; calls of earlier, different grids in this folder are kept
    # (nothing is lost when a run adds lengths or strategies, or re-runs a subset).
    logged = read_results(results_path)
    grid_ids = {c.call_id: c.key for c in calls}
    current = latest_by_call([r for r in logged if grid_ids.get(r["call_id"]) == r.get("key")])
    lines = [current[c.call_id] for c in calls if c.call_id in current]
    others = latest_by_call([r for r in logged if r["call_id"] not in grid_ids])
    _atomic_write(results_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines + list(others.values())))
    failed = sum(1 for r in lines if r["status"] != "ok")
    scores = [r["score"] for r in lines if r["status"] == "ok"]
    if render:
        from ragkit.evals.report import render_report

        render_report(out)
    return RunResult(str(out), est, state["made"], failed, sum(scores) / len(scores) if scores else None,
                     round(state["cost"], 6), round(time.monotonic() - started, 2))


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *a, **k):
        pass


class _RichBar:
    """Calls done, accuracy so far, cost so far (rich, on stderr)."""

    def __init__(self, total: int, completed: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("acc {task.fields[acc]}"), TextColumn("${task.fields[cost]}"),
                                 TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True))
        self.task = self.progress.add_task("eval", total=total, completed=completed, acc="-", cost="0.0000",
                                           failed=0)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, completed: int, acc: float, cost: float, failed: int) -> None:
        self.progress.update(self.task, completed=completed, acc="-" if acc != acc else f"{acc:.2f}",
                             cost=f"{cost:.4f}", failed=failed)


def _progress(enabled: bool, total: int, completed: int):
    return _RichBar(total, completed) if enabled else _NoBar()
