"""Grid runner: task x lengths x depths x strategies x samples -> one model call each -> results.jsonl.

Log first, render later (inspect_ai's habit): every call becomes one EvalRecord line (ragkit.evals.records)
as soon as it ends, and the report is re-rendered from that file without calling a model. A paid call
reaches the cost ledger, then the response cache, then the log, so a run killed at any point resumes
without paying twice; a failed call is logged as failed (unscored) and retried on resume.

    run_grid = plan_calls (every prompt rendered once, the cache asked once per prompt, the cost bound)
             -> estimate -> execute (send, account, log) -> compact (one line per call)
"""
from __future__ import annotations

import datetime as _dt
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ragkit.costs import check_max_cost, usd
from ragkit.errors import ConfigError, InputError
from ragkit.evals.cache import CachedResponse, ResponseCache, call_key
from ragkit.evals.records import EvalRecord, RecordLog, latest_by_call, plural, read_meta, write_meta
from ragkit.evals.retrieval import Ranker, planner_budget, retrieve_units, stuff_units
from ragkit.evals.tasks import Sample, Task
from ragkit.redact import redact

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
        if self.stuff_order not in ("document", "edges"):
            raise InputError(f"stuff order {self.stuff_order!r}: use document or edges")

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
        return (f"{plural(self.calls, 'call')} to {model}: {self.done} already done, {self.cached} cached, "
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


# ---------------------------------------------------------------- planning: every prompt, rendered once

@dataclass(frozen=True)
class Plan:
    calls: list[Call]                     # the whole grid, in grid order
    todo: list[Call]                      # not yet answered in this run folder
    hits: dict[str, CachedResponse]       # cached answers of the todo calls, by key (looked up once each)

    @property
    def done_ids(self) -> set[str]:
        todo = {c.call_id for c in self.todo}
        return {c.call_id for c in self.calls if c.call_id not in todo}

    @property
    def to_call(self) -> list[Call]:
        return [c for c in self.todo if c.key not in self.hits]


def plan_calls(task: Task, grid: GridSpec, spec, counter, cache: ResponseCache, answered: dict[str, str], *,
               ranker: Ranker | None = None, max_cost_usd: float | None = None,
               echo: Callable[[str], None] = print) -> Plan:
    """Every call of the grid, its prompt exactly as it will be sent (same grid, same prompts).

    `answered` maps call ids to the cache key of their logged answer. Each prompt is rendered once and
    the cache consulted once per distinct prompt. Stuff prompts come first: the cost bound is checked
    on them before any retrieval ranking, so a run past max_cost_usd is refused at once.
    """
    samples = task.samples(counter, grid.lengths, grid.depths, grid.samples)
    lookup = _memo(cache.get)
    system_tokens = counter.count(task.system) + MESSAGE_OVERHEAD_TOKENS
    units = [counter.count_many(s.units) for s in samples]
    stuffed = [_call(task, grid, spec, "stuff", s,
                     stuff_units(task.ranking_texts(s), s.question, order=grid.stuff_order), n, system_tokens, counter)
               for s, n in zip(samples, units)]
    budgets = [(grid.retrieve_budget_tokens or planner_budget(spec, task, s, grid.max_tokens))
               if "retrieve" in grid.strategies else 0 for s in samples]
    if max_cost_usd is not None:
        bound = upper_bound_cost(task, grid, spec, counter, stuffed, budgets, system_tokens, answered, lookup)
        _refuse_above(max_cost_usd, bound, spec, grid, echo)
    calls = []
    for stuff, n, budget in zip(stuffed, units, budgets):
        for strategy in grid.strategies:
            if strategy == "stuff":
                calls.append(stuff)
            else:
                sample = stuff.sample
                chosen = retrieve_units(sample.units, sample.question, budget, counter, order=grid.order,
                                        ranker=ranker, per_unit_tokens=task.unit_framing_tokens(sample, counter, n))
                calls.append(_call(task, grid, spec, "retrieve", sample, chosen, n, system_tokens, counter))
    todo = [c for c in calls if answered.get(c.call_id) != c.key]
    hits = {c.key: hit for c in todo if (hit := lookup(c.key)) is not None}
    return Plan(calls, todo, hits)


def _call(task: Task, grid: GridSpec, spec, strategy: str, sample: Sample, chosen: Sequence[int],
          unit_tokens: Sequence[int], system_tokens: int, counter) -> Call:
    """One call with its prompt rendered and counted (system_tokens: the system turn + chat framing)."""
    prompt = task.render(sample, [sample.units[i] for i in chosen], retrieved=strategy == "retrieve")
    return Call(call_id=call_id(strategy, sample), sample=sample, strategy=strategy, system=task.system,
                prompt=prompt, context_tokens=sum(unit_tokens[i] for i in chosen),
                prompt_tokens=system_tokens + counter.count(prompt),
                gold_in_context=any(i in chosen for i in sample.gold_units),
                key=call_key(spec.id, spec.api_model, task.system, prompt, grid.max_tokens, grid.temperature))


def _memo(get: Callable[[str], CachedResponse | None]) -> Callable[[str], CachedResponse | None]:
    """`get`, asked at most once per key (the cost bound and the plan look up the same stuff prompts)."""
    seen: dict[str, CachedResponse | None] = {}

    def lookup(key: str) -> CachedResponse | None:
        if key not in seen:
            seen[key] = get(key)
        return seen[key]

    return lookup


def upper_bound_cost(task: Task, grid: GridSpec, spec, counter, stuffed: Sequence[Call], budgets: Sequence[int],
                     system_tokens: int, answered: dict[str, str], lookup) -> tuple[int, int, float]:
    """Cost if every call not yet logged or cached is paid at its largest prompt (retrieve at its full
    budget, capped by the stuff prompt) and longest answer: (calls, input tokens, USD).
    (A retrieve call logged with any prompt is counted done: its prompt is not known before ranking.)"""
    from ragkit.costs import cost_usd

    tokens = calls = 0
    for stuff, budget in zip(stuffed, budgets):
        sample = stuff.sample
        if "stuff" in grid.strategies and answered.get(stuff.call_id) != stuff.key and lookup(stuff.key) is None:
            calls += 1
            tokens += stuff.prompt_tokens
        if "retrieve" in grid.strategies and call_id("retrieve", sample) not in answered:
            scaffold = system_tokens + counter.count(task.render(sample, [], retrieved=True))
            calls += 1
            tokens += min(stuff.prompt_tokens, scaffold + budget)
    tokens = counter.planning_tokens(tokens)
    return calls, tokens, cost_usd(spec, tokens, calls * grid.max_tokens)


def _refuse_above(max_cost_usd: float, bound: tuple[int, int, float], spec, grid: GridSpec, echo) -> None:
    n_calls, n_tokens, cost = bound
    if cost > max_cost_usd:
        echo(f"{plural(n_calls, 'call')} to {spec.id} still to make: at most {n_tokens:,} input tokens "
             f"(retrieve prompts counted at their full budget) + {n_calls * grid.max_tokens:,} output; "
             f"at most {usd(cost)}")
        raise ConfigError(f"the estimated cost {usd(cost)} exceeds --max-cost {usd(max_cost_usd)}; "
                          "use fewer lengths/depths/samples or raise --max-cost.")


def estimate(plan: Plan, spec, counter, max_tokens: int) -> Estimate:
    from ragkit.costs import cost_usd

    to_call = plan.to_call
    input_tokens = sum(counter.planning_tokens(c.prompt_tokens) for c in to_call)
    output_max = len(to_call) * max_tokens
    return Estimate(len(plan.calls), len(plan.calls) - len(plan.todo), len(plan.todo) - len(to_call), len(to_call),
                    input_tokens, output_max, cost_usd(spec, input_tokens, output_max))


# ---------------------------------------------------------------- executing: send, account, log

@dataclass
class _Caller:
    """Sends a call and accounts for it: ledger row, then cache, then the record (the caller logs it)."""

    task: Task
    grid: GridSpec
    spec: object
    provider: object
    cache: ResponseCache
    ledger: object

    def send(self, call: Call) -> tuple[EvalRecord, CachedResponse | None]:
        from ragkit.ledger import account

        t0 = time.monotonic()
        try:
            done = self.provider.complete(call.system, call.prompt, max_tokens=self.grid.max_tokens,
                                          temperature=self.grid.temperature)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded as failed (unscored), never as wrong
            return self.failed(call, redact(f"{type(exc).__name__}: {exc}")[:500], time.monotonic() - t0), None
        # Paid: its ledger row first, then the cache, then the log line (a kill between them never hides a cost).
        cost = account(done, self.spec, task=f"eval:{self.task.name}", strategy=call.strategy,
                       question=call.sample.question, ledger=self.ledger).cost_usd
        answer = CachedResponse(done.text, done.input_tokens, done.output_tokens, done.latency_s, cost, time.time())
        self.cache.put(call.key, self.spec.id, answer)
        return self.answered(call, answer, cached=False), answer

    def answered(self, call: Call, answer: CachedResponse, *, cached: bool) -> EvalRecord:
        return self._record(call, status="ok", prediction=answer.text, score=self.task.score(answer.text, call.sample),
                            input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
                            cost_usd=answer.cost_usd, latency_s=round(answer.latency_s, 3), cached=cached)

    def failed(self, call: Call, error: str, latency_s: float) -> EvalRecord:
        return self._record(call, status="failed", error=error, latency_s=round(latency_s, 3))

    def _record(self, call: Call, **outcome) -> EvalRecord:
        s = call.sample
        return EvalRecord(call_id=call.call_id, task=s.task, model=self.spec.id, length=s.length,
                          length_unit=s.length_unit, depth=s.depth, depth_unit=s.depth_unit, strategy=call.strategy,
                          sample=s.sample, question=s.question, answers=tuple(s.answers),
                          context_tokens=call.context_tokens, gold_in_context=call.gold_in_context, key=call.key,
                          **outcome)


class _Tally:
    """Running totals of a run (accuracy so far includes the calls already done before it)."""

    def __init__(self, done: Sequence[EvalRecord]):
        self.logged = self.failed = self.made = 0
        self.score = sum(r.score for r in done)
        self.scored = len(done)
        self.cost = 0.0

    def add(self, record: EvalRecord) -> None:
        self.logged += 1
        if record.ok:
            self.score += record.score
            self.scored += 1
        else:
            self.failed += 1
        if not record.cached and record.ok:
            self.made += 1
            self.cost += record.cost_usd

    @property
    def accuracy(self) -> float:
        return self.score / self.scored if self.scored else float("nan")


def execute(plan: Plan, caller: _Caller, log: RecordLog, tally: _Tally, *, workers: int, progress: bool,
            label: str = "eval") -> None:
    """Logs every call still to do: cached answers at once, then one call per distinct prompt in
    parallel; calls with an identical prompt take that call's answer (or its failure) without paying."""
    done = len(plan.calls) - len(plan.todo)
    with _progress(progress, len(plan.calls), done, label) as bar:
        def finish(record: EvalRecord) -> None:
            log.append(record)
            tally.add(record)
            bar.update(tally.logged + done, acc=tally.accuracy, cost=tally.cost, failed=tally.failed)

        for c in plan.todo:
            if c.key in plan.hits:
                finish(caller.answered(c, plan.hits[c.key], cached=True))
        by_prompt: dict[str, list[Call]] = {}
        for c in plan.to_call:
            by_prompt.setdefault(c.key, []).append(c)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            followers = {pool.submit(caller.send, first): rest for first, *rest in by_prompt.values()}
            for fut in as_completed(followers):
                record, answer = fut.result()
                finish(record)
                for c in followers[fut]:
                    finish(caller.answered(c, answer, cached=True) if answer is not None
                           else caller.failed(c, record.error, record.latency_s))
        except BaseException:
            # Ctrl-C: stop queued calls now (answers already received are cached and logged).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def compact(log: RecordLog, calls: Sequence[Call]) -> list[EvalRecord]:
    """One line per call (the appended log may hold retries): this grid's calls first, in grid order,
    answered for the prompt sent now; calls of earlier, different grids in this folder are kept
    (nothing is lost when a run adds lengths or strategies, or re-runs a subset). Returns this grid's."""
    logged = log.read()
    keys = {c.call_id: c.key for c in calls}
    current = latest_by_call(r for r in logged if keys.get(r.call_id) == r.key)
    lines = [current[c.call_id] for c in calls if c.call_id in current]
    others = latest_by_call(r for r in logged if r.call_id not in keys)
    log.rewrite(lines + list(others.values()))
    return lines


# ---------------------------------------------------------------- running

def run_grid(task: Task, grid: GridSpec, out_dir: Path | str, *, provider=None, base_url: str | None = None,
             cache: ResponseCache | None = None, max_cost_usd: float | None = None, concurrency: int | None = None,
             ranker: Ranker | None = None, progress: bool = True,
             echo: Callable[[str], None] = print, render: bool = True, ledger=True) -> RunResult:
    """Runs (or resumes) a grid into out_dir: run.json + results.jsonl (+ the report when `render`).

    Every call sent is priced and recorded in the cost ledger (`ledger`: True = the user's, None = none);
    answers from the cache cost nothing and are not recorded again."""
    from ragkit.ledger import Ledger
    from ragkit.models import get_model
    from ragkit.tokens import counter_for

    started = time.monotonic()
    max_cost_usd = check_max_cost(max_cost_usd)
    spec = get_model(grid.model)
    counter = counter_for(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_another_stuff_order(out, grid)
    cache = cache if cache is not None else ResponseCache()  # (an empty cache is falsy: it has __len__)
    log = RecordLog(out)  # drops a line torn by a kill before anything is appended after it
    previous = {cid: r for cid, r in latest_by_call(log.read()).items() if r.ok}
    plan = plan_calls(task, grid, spec, counter, cache, {cid: r.key for cid, r in previous.items()},
                      ranker=ranker, max_cost_usd=max_cost_usd, echo=echo)
    est = estimate(plan, spec, counter, grid.max_tokens)
    echo(est.describe(spec.id))
    if max_cost_usd is not None and est.cost_usd > max_cost_usd:
        raise ConfigError(f"the estimated cost {usd(est.cost_usd)} exceeds --max-cost {usd(max_cost_usd)}; "
                          "use fewer lengths/depths/samples or raise --max-cost.")
    write_meta(out, {"format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "grid": grid.to_dict(), "task": task.describe(), "model": spec.to_dict(), "system": task.system})
    if plan.to_call and provider is None:
        from ragkit.providers import provider_for

        provider = provider_for(spec, base_url=base_url)
    caller = _Caller(task, grid, spec, provider, cache, Ledger() if ledger is True else (ledger or None))
    tally = _Tally([previous[cid] for cid in plan.done_ids])
    execute(plan, caller, log, tally, workers=concurrency or DEFAULT_CONCURRENCY.get(spec.provider, 4),
            progress=progress)
    lines = compact(log, plan.calls)
    if render:
        from ragkit.evals.report import render_report

        render_report(out)
    scores = [r.score for r in lines if r.ok]
    return RunResult(str(out), est, tally.made, sum(1 for r in lines if not r.ok),
                     sum(scores) / len(scores) if scores else None, round(tally.cost, 6),
                     round(time.monotonic() - started, 2))


def _refuse_another_stuff_order(out: Path, grid: GridSpec) -> None:
    """A folder holds one stuff order: the orders share call ids, so the other order's answers would
    replace this folder's (and its report would mix the two)."""
    before = read_meta(out).get("grid")
    logged = before.get("stuff_order", "document") if before else None   # (older runs stuffed in file order)
    if logged is not None and logged != grid.stuff_order and "stuff" in grid.strategies:
        raise InputError(f"{out} holds a --stuff-order {logged} run: resume it with --stuff-order {logged}, "
                         f"or write the {grid.stuff_order} run to another folder (-o).")


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *a, **k):
        pass


class _RichBar:
    """Calls done, accuracy so far, cost so far (rich, on stderr)."""

    def __init__(self, total: int, completed: int, label: str = "eval"):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn(label.replace("[", r"\[")), BarColumn(), MofNCompleteColumn(),
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


def _progress(enabled: bool, total: int, completed: int, label: str = "eval"):
    return _RichBar(total, completed, label) if enabled else _NoBar()
