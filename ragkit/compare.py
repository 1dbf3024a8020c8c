"""`ragkit compare`: your golden questions answered through the real ask path by several models, scored.

Each question goes through Session.prepare (the one plan, retrieval and prompt of `ragkit ask`) and
Session.complete (its provider, its ledger row, task "compare"). The eval machinery does the rest:
the call key and response cache (ragkit.evals.cache), one EvalRecord per call in results.jsonl
(ragkit.evals.records) and the runner's execute step (cached answers first, one paid call per
distinct prompt, ledger -> cache -> log so a kill -9 resumes without paying twice).

    run_compare = load_golden -> plan (every prompt prepared once, cost bound) -> execute per model
                -> compact -> summarize (compare_report) -> report.md, summary.json, plots
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ragkit.costs import check_max_cost, usd
from ragkit.errors import ConfigError, InputError
from ragkit.evals.cache import CachedResponse, ResponseCache, call_key
from ragkit.evals.records import EvalRecord, RecordLog, latest_by_call, plural, write_meta
from ragkit.evals.runner import DEFAULT_CONCURRENCY, Plan, _Tally, compact, execute
from ragkit.judge import JUDGE_SYSTEM, Judge, judge_prompt
from ragkit.redact import redact

FORMAT = "ragkit-compare/1"
STRATEGIES = ("auto", "stuff", "retrieve")
SAMPLE_SEED = 0


@dataclass(frozen=True)
class GoldQuestion:
    index: int                    # line order in the golden file
    question: str
    answers: tuple[str, ...]      # acceptable answers
    gold: tuple[str, ...] = ()    # source paths or record ids holding the answer ("passage_id" counts)
    reference: dict | None = None  # with --schema: the expected object, field by field ("reference")

    @property
    def qid(self) -> str:
        return hashlib.sha256(self.question.encode("utf-8")).hexdigest()[:12]


def load_golden(path: Path | str, sample: int | None = None, seed: int = SAMPLE_SEED) -> tuple[list[GoldQuestion], str]:
    """The golden set (JSON Lines: question, answers, optional gold / passage_id) and its sha256.

    A line that is not such an object, and a question asked twice, are refused naming the line(s).
    `sample` keeps that many questions, drawn with a fixed seed (the same questions every run)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the golden set {path}: {exc.strerror}.") from None
    questions, first_line = [], {}
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path} line {n} is not JSON; each line must be an object like "
                             '{"question": "...", "answers": ["..."]}.') from None
        reference = row.get("reference") if isinstance(row, dict) else None
        if reference is not None and not isinstance(reference, dict):
            raise InputError(f'{path} line {n}: "reference" must be an object of the fields a --schema answer '
                             'should hold, e.g. {"title": "...", "year": 1859}.')
        q = GoldQuestion(len(questions), *_golden_fields(row, f"{path} line {n}"), reference)
        # The question is the call's identity (GoldQuestion.qid, stable across runs for resume): one line each.
        if q.qid in first_line:
            raise InputError(f"{path} lines {first_line[q.qid]} and {n} ask the same question; merge their answers "
                             f"into one line.")
        first_line[q.qid] = n
        questions.append(q)
    if not questions:
        raise InputError(f"{path} holds no questions.")
    if sample is not None:
        if sample < 1:
            raise InputError("--sample must be at least 1.")
        if sample < len(questions):
            questions = sorted(random.Random(seed).sample(questions, sample), key=lambda q: q.index)
    return questions, hashlib.sha256(raw).hexdigest()


def _golden_fields(row, where: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(question, answers, gold) of one golden line; InputError naming `where` (file and line) when a field
    is missing, of the wrong type, or not valid text (a lone "\\ud800" escape)."""
    from ragkit.console import require_text

    question = row.get("question") if isinstance(row, dict) else None
    if question is None or (isinstance(question, str) and not question.strip()):
        raise InputError(f'{where} has no "question"; each line needs "question" and "answers".')
    if not isinstance(question, str):
        raise InputError(f'{where}: "question" must be a string, not {_json_type(question)}.')
    answers = row.get("answers", row.get("answer"))
    answers = [answers] if isinstance(answers, str) else answers
    if not answers or not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
        raise InputError(f'{where} has no "answers": give the acceptable answers as a list of strings.')
    given = row.get("gold", row.get("passage_id"))
    def an_id(g) -> bool:  # a path or record id; a number is an id too (a passage_id of 17)
        return isinstance(g, (str, int)) and not isinstance(g, bool)

    gold = [] if given in (None, "", []) else [given] if an_id(given) else given
    wrong = [g for g in gold if not an_id(g)] if isinstance(gold, list) else [given]
    if wrong:
        held = f"a list holding {_json_type(wrong[0])}" if isinstance(gold, list) else _json_type(given)
        raise InputError(f'{where}: "gold" must be a source path or record id, or a list of them, not {held}.')
    require_text(question, f"{where}: the question")
    for text in (*answers, *map(str, gold)):
        require_text(text, f"{where}: an answer or gold id")
    return question.strip(), tuple(answers), tuple(str(g) for g in gold)


def _json_type(value) -> str:
    """The JSON name of a parsed value's type, for messages about a file the user wrote."""
    return {bool: "true/false", int: "a number", float: "a fractional number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- scoring one answer

def abstained(text: str) -> bool:
    """The prompt's refusal sentence (or close to it): not an answer, counted apart."""
    from ragkit.evals.scoring import normalize_answer
    from ragkit.prompt import NO_ANSWER

    norm = normalize_answer(text)
    return normalize_answer(NO_ANSWER) in norm or "do not contain answer" in norm or "does not contain answer" in norm


def holds(source, question: GoldQuestion) -> bool:
    """A source is right to cite: it is a gold source, or it holds one of the answers."""
    from ragkit.evals.scoring import normalize_answer

    ids = {source.doc_id, source.source}
    if any(g in ids or source.doc_id.endswith("#" + g) for g in question.gold):
        return True
    text = normalize_answer(source.text)
    return any(normalize_answer(a) and normalize_answer(a) in text for a in question.answers)


def score_answer(text: str, question: GoldQuestion, context: Sequence) -> dict:
    """Every deterministic score of one answer: subspan EM (the accuracy), containment, token F1,
    whether it abstained, which sources it cited and whether one of them holds the answer."""
    from ragkit.evals.scoring import best_subspan_em, contains, token_f1
    from ragkit.prompt import cited_numbers

    cited = [context[n - 1] for n in cited_numbers(text, len(context))]
    refused = abstained(text)
    return {"subspan_em": best_subspan_em(text, question.answers),
            "containment": contains()(text, question.answers),
            "f1": round(token_f1(text, question.answers), 4),
            "abstained": refused,
            "cited": [s.doc_id for s in cited],
            "citation_ok": None if refused else any(holds(s, question) for s in cited)}


def score_structured(value: dict | None, question: GoldQuestion) -> dict:
    """A --schema answer's scores: subspan EM over the object's text (the accuracy; 0 when it never
    validated) and, when the golden line has a "reference", the share of its fields matched (strings
    compared normalised, other values equal)."""
    from ragkit.evals.scoring import best_subspan_em, normalize_answer

    text = json.dumps(value, ensure_ascii=False) if value is not None else ""
    scores = {"subspan_em": best_subspan_em(text, question.answers) if value is not None else 0.0}
    if question.reference:
        same = lambda a, b: (normalize_answer(a) == normalize_answer(b) if isinstance(a, str) and isinstance(b, str)  # noqa: E731
                             else a == b and type(a) is type(b))
        scores["field_accuracy"] = sum(1.0 for k, v in question.reference.items()
                                       if isinstance(value, dict) and k in value and same(value[k], v)) / len(question.reference)
    return scores


# ---------------------------------------------------------------- planning: every prompt prepared once

@dataclass(frozen=True)
class CompareCall:
    call_id: str                  # "MODEL/STRATEGY/QID"
    model: str
    strategy: str                 # as asked: auto | stuff | retrieve
    question: GoldQuestion
    prepared: object              # answer.PreparedPrompt: exactly what is sent
    key: str


def plan_compare(session, questions: Sequence[GoldQuestion], models: Sequence[str], strategies: Sequence[str],
                 cache: ResponseCache, answered: dict[str, str], *, temperature: float = 0.0, schema=None,
                 max_cost_usd: float | None = None, judge: Judge | None = None) -> Plan:
    """Every call, its prompt prepared by the ask path; `answered` maps call ids to logged cache keys.

    schema (structured.StructuredSpec): prompts with its reply-format block, keys with it and its enforcement.
    max_cost_usd: refuse as soon as the calls prepared so far already cost more (the same upper bound
    estimate_compare sums, judge included), so a huge golden set is refused without preparing it all."""
    from ragkit.evals.extraction import schema_key_extra
    from ragkit.models import get_model

    calls, hits, total, bound = [], {}, len(models) * len(strategies) * len(questions), 0.0
    for model in models:
        spec = get_model(model)
        for strategy in strategies:
            for q in questions:
                p = session.prepare(q.question, model=spec.id, strategy=None if strategy == "auto" else strategy,
                                    schema=schema)
                key = call_key(spec.id, spec.api_model, p.system, p.user, p.plan.answer_tokens, temperature,
                               schema_key_extra(schema, spec) if schema is not None else None)
                calls.append(CompareCall(f"{spec.id}/{strategy}/{q.qid}", spec.id, strategy, q, p, key))
                if answered.get(calls[-1].call_id) == key:
                    continue
                if (hit := cache.get(key)) is not None:  # the cache is read once per call, here
                    hits[key] = hit
                if max_cost_usd is None:
                    continue
                bound += _call_bound(p, key in hits, judge, 1 if schema is None else 2)
                if bound > max_cost_usd and len(calls) < total:
                    raise ConfigError(f"the estimated cost exceeds --max-cost {usd(max_cost_usd)}: the first {len(calls):,} "
                                      f"of {total:,} calls may already cost {usd(bound)} (about "
                                      f"{usd(bound * total / len(calls))} for all of them); use --sample, fewer models "
                                      f"or raise --max-cost.")
    todo = [c for c in calls if answered.get(c.call_id) != c.key]
    return Plan(calls, todo, hits)


def _call_bound(prepared, cached: bool, judge: Judge | None, calls_each: int) -> float:
    """Upper bound (USD) of one call still to do: its answer unless cached, calls_each times (a structured
    answer may need its repair), plus its grade. plan_compare's early refusal and estimate_compare sum it."""
    answer = 0.0 if cached else calls_each * prepared.estimated_cost_usd
    return answer + (judge.estimated_cost_usd(1, prepared.plan.answer_tokens) if judge else 0.0)


@dataclass(frozen=True)
class CompareEstimate:
    calls: int
    done: int
    cached: int
    to_call: int
    input_tokens: int
    output_tokens_max: int
    cost_usd: float               # upper bound: every prompt as planned, every answer at its full length
    by_model: dict
    judge_cost_usd: float = 0.0   # upper bound of the judge's grades (included in cost_usd)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"{plural(self.calls, 'call')}: {self.done} already done, {self.cached} cached, {self.to_call} to make "
                f"(~{self.input_tokens:,} input tokens, <= {self.output_tokens_max:,} output); "
                f"at most ${self.cost_usd:.4f}"
                + (f" (the judge's grades at most ${self.judge_cost_usd:.4f} of it)" if self.judge_cost_usd else ""))


def estimate_compare(plan: Plan, judge: Judge | None = None, calls_per_question: int = 1) -> CompareEstimate:
    """calls_per_question: 2 with --schema (a reply and its repair, both at full size, at most)."""
    to_call = plan.to_call
    k = calls_per_question
    by_model: dict[str, float] = {}
    for c in to_call:
        by_model[c.model] = by_model.get(c.model, 0.0) + _call_bound(c.prepared, False, None, k)
    # every todo call is graded (cached answers too); a grade already cached is only overcounted
    judged = sum(_call_bound(c.prepared, True, judge, k) for c in plan.todo) if judge else 0.0
    return CompareEstimate(len(plan.calls), len(plan.calls) - len(plan.todo), len(plan.todo) - len(to_call),
                           len(to_call), k * sum(c.prepared.estimated_input_tokens for c in to_call),
                           k * sum(c.prepared.plan.answer_tokens for c in to_call), sum(by_model.values()) + judged,
                           by_model, judged)


# ---------------------------------------------------------------- executing: the ask path, accounted, cached, logged

@dataclass
class _CompareCaller:
    """runner.execute's caller for compare: Session.complete (ledger row, task "compare"), then the
    cache, then the record (execute logs it)."""

    session: object
    cache: ResponseCache
    temperature: float = 0.0
    judge: object = None          # judge.Judge: its verdict is the score; deterministic scores stay in metrics
    schema: object = None         # structured.StructuredSpec: --schema answers (first reply + one repair)

    def send(self, call: CompareCall) -> tuple[EvalRecord, CachedResponse | None]:
        if self.schema is not None:
            return self._send_structured(call), None
        t0 = time.monotonic()
        try:
            # streamed (to nobody) so the provider measures the time to the first token
            a = self.session.complete(call.prepared, on_text=_ignore, temperature=self.temperature)
        except Exception as exc:  # noqa: BLE001 - a failure is logged unscored, and retried on resume
            return self.failed(call, redact(f"{type(exc).__name__}: {exc}")[:500], time.monotonic() - t0), None
        answer = CachedResponse(a.answer, a.usage.input_tokens, a.usage.output_tokens, a.latency_s, a.cost_usd,
                                time.time(), a.ttft_s)
        self.cache.put(call.key, call.model, answer)
        return self.answered(call, answer, cached=False), answer

    def _send_structured(self, call: CompareCall) -> EvalRecord:
        """complete_structured through the cache (each completion, the repair too, cached and accounted)."""
        from ragkit.evals.extraction import CachedProvider, complete_cached, schema_key_extra
        from ragkit.models import get_model

        spec, p, s = get_model(call.model), call.prepared, self.session
        provider = CachedProvider(s.provider(spec), spec, self.cache, extra=schema_key_extra(self.schema, spec),
                                  ledger=s.ledger, task=s.task, strategy=p.plan.strategy, question=call.question.question,
                                  log_question=s.log_question)
        t0 = time.monotonic()
        try:
            calls, outcome = complete_cached(provider, self.schema, p.system, p.user, max_tokens=p.plan.answer_tokens,
                                             temperature=self.temperature, n_sources=len(p.context))
        except Exception as exc:  # noqa: BLE001 - a failure is logged unscored, and retried on resume
            return self.failed(call, redact(f"{type(exc).__name__}: {exc}")[:500], time.monotonic() - t0)
        scores = score_structured(outcome["value"], call.question)
        return self._record(call, status="ok", prediction=calls[-1].text, score=scores.pop("subspan_em"),
                            input_tokens=sum(c.input_tokens for c in calls),
                            output_tokens=sum(c.output_tokens for c in calls), cost_usd=round(provider.cost, 8),
                            latency_s=round(sum(c.latency_s for c in calls), 3), ttft_s=round(calls[0].ttft_s, 3),
                            cached=provider.paid == 0, metrics={**scores, "schema": outcome})

    def answered(self, call: CompareCall, answer: CachedResponse, *, cached: bool) -> EvalRecord:
        scores = score_answer(answer.text, call.question, call.prepared.context)
        score = scores["subspan_em"]
        if self.judge is not None:
            t0 = time.monotonic()
            try:
                grade = self.judge.grade(call.question.question, call.question.answers, answer.text)
            except Exception as exc:  # noqa: BLE001 - ungraded is unscored: logged failed, graded again on resume
                error = redact(f"judge {self.judge.model}: {type(exc).__name__}: {exc}")[:500]
                return self.failed(call, error, time.monotonic() - t0)
            score = grade.verdict
            scores.update(judge_model=self.judge.model, judge_cost_usd=grade.cost_usd, judge_cached=grade.cached)
        return self._record(call, status="ok", prediction=answer.text, score=score,
                            input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
                            cost_usd=answer.cost_usd, latency_s=round(answer.latency_s, 3),
                            ttft_s=None if answer.ttft_s is None else round(answer.ttft_s, 3), cached=cached,
                            metrics=scores)

    def failed(self, call: CompareCall, error: str, latency_s: float) -> EvalRecord:
        return self._record(call, status="failed", error=error, latency_s=round(latency_s, 3), metrics={})

    def _record(self, call: CompareCall, *, metrics: dict, **outcome) -> EvalRecord:
        q, p = call.question, call.prepared
        return EvalRecord(call_id=call.call_id, task="compare", model=call.model, length=p.input_tokens,
                          length_unit="tokens", depth=0, depth_unit="position", strategy=call.strategy,
                          sample=q.index, question=q.question, answers=q.answers,
                          context_tokens=p.input_tokens, key=call.key,
                          metrics={"qid": q.qid, "strategy_used": p.strategy, **metrics}, **outcome)


def _ignore(_text: str) -> None:
    pass


@dataclass(frozen=True)
class CompareResult:
    out_dir: str
    estimate: CompareEstimate
    calls_made: int
    failed: int
    cost_usd: float               # paid in this run
    wall_s: float

    def to_dict(self) -> dict:
        return {**asdict(self), "estimate": self.estimate.to_dict()}


def run_compare(corpus: Path | str, golden: Path | str, models: Sequence[str], out_dir: Path | str, *,
                strategies: Sequence[str] = ("auto",), sample: int | None = None, tasks_per_day: int = 1000,
                task_label: str = "qa", max_cost_usd: float | None = None, concurrency: int | None = None,
                base_url: str | None = None, cache: ResponseCache | None = None, index_dir=None,
                progress: bool = True, echo: Callable[[str], None] = print, ledger=True, max_retries: int = 2,
                timeout_s: float = 60.0, judge: str | None = None, schema=None) -> CompareResult:
    """Runs (or resumes) a comparison into out_dir: run.json + results.jsonl + report.md, summary.json, plots.

    schema (see Session.ask): every answer is a structured one; the report adds the schema-valid rate on the
    first reply and after the repair, repairs, and field accuracy against the golden lines' "reference".
    judge: a model that grades free-text answers against the references (not with a schema)."""
    from ragkit.answer import Session
    from ragkit.evals.compare_report import render_compare
    from ragkit.models import get_model

    started = time.monotonic()
    max_cost_usd = check_max_cost(max_cost_usd)
    models = list(dict.fromkeys(get_model(m).id for m in models))  # unknown models fail before any work
    if not models:
        raise InputError("compare needs at least one model: -m gpt-4o -m gpt-4o-mini.")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise InputError(f"unknown strategy {(bad or [''])[0]!r}: use auto, stuff, retrieve or a list (stuff,retrieve).")
    if tasks_per_day < 0:
        raise InputError("--tasks-per-day cannot be negative.")
    from ragkit.structured import make_schema

    structured = make_schema(schema) if schema is not None else None  # a bad schema fails before any work
    if structured is not None and judge:
        raise InputError("--judge grades free-text answers and --schema answers are scored field by field: "
                         "use one of them.")
    questions, golden_sha = load_golden(golden, sample)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else ResponseCache()
    log = RecordLog(out)
    judge_id = get_model(judge).id if judge else None
    # a record scored by another judge (or none) is scored again: from the cached answer, paying only the judge
    previous = {cid: r for cid, r in latest_by_call(log.read()).items()
                if r.ok and (r.metrics or {}).get("judge_model") == judge_id}
    with Session(corpus, base_url=base_url, index_dir=index_dir, ledger=ledger, task="compare",
                 progress=progress, max_retries=max_retries, timeout_s=timeout_s) as session:
        grader = Judge(session, judge_id, cache) if judge_id else None
        plan = plan_compare(session, questions, models, strategies, cache, {c: r.key for c, r in previous.items()},
                            schema=structured, max_cost_usd=max_cost_usd, judge=grader)
        est = estimate_compare(plan, grader, 1 if structured is None else 2)
        echo(est.describe())
        if max_cost_usd is not None and est.cost_usd > max_cost_usd:
            for model, cost in est.by_model.items():
                echo(f"  {model}: at most {usd(cost)}")
            raise ConfigError(f"the estimated cost {usd(est.cost_usd)} exceeds --max-cost {usd(max_cost_usd)}; "
                              "use --sample, fewer models or raise --max-cost.")
        write_meta(out, {"format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         "corpus": str(corpus), "golden": str(golden), "golden_sha256": golden_sha,
                         "questions": len(questions), "sample": sample, "models": models,
                         "strategies": list(strategies), "tasks_per_day": tasks_per_day, "task": task_label,
                         # each model as this run saw it: an override (practical limit, prices) changes the answers
                         "model_specs": {m: get_model(m).to_dict() for m in models},
                         "judge": {"model": judge_id, "system": JUDGE_SYSTEM,
                                   "prompt": judge_prompt("QUESTION", ["REFERENCE"], "ANSWER")} if judge_id else None,
                         **({"schema": structured.schema} if structured is not None else {})})
        caller = _CompareCaller(session, cache, judge=grader, schema=structured)
        made, paid, done = 0, 0.0, plan.done_ids
        for model in models:  # one model at a time, at its provider's concurrency
            spec = get_model(model)
            part = Plan([c for c in plan.calls if c.model == model], [c for c in plan.todo if c.model == model],
                        plan.hits)
            tally = _Tally([previous[c.call_id] for c in part.calls if c.call_id in done])
            execute(part, caller, log, tally, workers=concurrency or DEFAULT_CONCURRENCY.get(spec.provider, 4),
                    progress=progress, label=f"compare {model}")
            made, paid = made + tally.made, paid + tally.cost
    lines = compact(log, plan.calls)
    render_compare(out)
    return CompareResult(str(out), est, made, sum(1 for r in lines if not r.ok), round(paid, 6),
                         round(time.monotonic() - started, 2))
