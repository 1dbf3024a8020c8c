"""ask(): plan -> context -> prompt -> provider -> Answer; and Session, for apps asking many questions.

    from ragkit.answer import Session
    with Session("corpora/nq-wiki", model="gpt-4o-mini") as s:      # corpus opened once
        a = s.ask("who wrote the origin of species")                  # thread-safe
        print(a.answer, [src.span for src in a.sources], a.cost_usd)

The planner decides per question: "stuff" sends every document whole, "retrieve" builds/updates
the index once per session and sends the chunks packed into the budget. Nothing is written to
the ledger unless the model call completed.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from ragkit.config import default_model
from ragkit.errors import InputError
from ragkit.prompt import SourceRef, as_sources, build_prompt, cited_numbers
from ragkit.retrieve import DEFAULT_TOP_K
from ragkit.structured import make_schema

ORDERS = ("edges", "document")   # sources in the prompt: strongest matches at both ends, or file order


def _question(question: str | None, *, required: bool = True) -> str:
    """The question stripped; InputError when it is empty (and required) or not valid text."""
    from ragkit.console import require_text

    question = require_text((question or "").strip(), "the question")
    if required and not question:
        raise InputError("the question is empty: ask something, e.g. ragkit ask DOCS \"what is X?\".")
    return question


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    reported: bool = True         # False: the endpoint sent no usage, counts are ragkit's estimate

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreparedPrompt:
    """Everything decided before the model is called: what --dry-run prints."""

    question: str
    model: str
    plan: object                  # ragkit.budget.Plan
    system: str
    user: str
    context: tuple[SourceRef, ...]
    input_tokens: int             # the prompt counted with the model's counting encoding
    estimated_input_tokens: int   # the same, inflated by the counting margin (== input_tokens when exact)
    estimated_cost_usd: float     # estimated input + a full-length answer: an upper bound
    prepare_s: float
    index: object = None          # corpus.IndexStatus when retrieving (stale => its note says why)

    @property
    def strategy(self) -> str:
        return self.plan.strategy

    def to_dict(self) -> dict:
        return {
            "question": self.question, "model": self.model, "strategy": self.plan.strategy,
            "reason": self.plan.reason, "plan": self.plan.to_dict(),
            "prompt": {"system": self.system, "user": self.user},
            "context": [s.to_dict() for s in self.context],
            "input_tokens": self.input_tokens, "estimated_input_tokens": self.estimated_input_tokens,
            "max_output_tokens": self.plan.answer_tokens, "estimated_cost_usd": self.estimated_cost_usd,
            "prepare_s": self.prepare_s, "index": self.index.to_dict() if self.index else None,
        }


@dataclass(frozen=True)
class Answer:
    answer: str
    strategy: str
    plan: object                  # ragkit.budget.Plan
    sources: tuple[SourceRef, ...]    # the sources the answer cites, in citation order
    context: tuple[SourceRef, ...]    # every source sent to the model
    usage: Usage
    cost_usd: float               # usage times the registry prices
    model: str                    # registry id
    api_model: str                # the model id the API answered with
    latency_s: float              # the model call, retries included
    ttft_s: float
    prepare_s: float              # planning + retrieval + prompt building
    finish_reason: str
    question: str
    index: object = None          # corpus.IndexStatus when retrieving (stale => its note says why)
    # Structured answers (ask(schema=...)): the validated object and, per top-level field, its sources.
    data: object = None           # a Pydantic instance when a model was given, else the JSON object
    citations: dict | None = None         # field -> tuple[SourceRef, ...] (only sources actually sent)
    dropped_citations: dict | None = None  # field -> numbers the model cited that name no source sent
    enforcement: str | None = None        # strict | tool | grammar | validated
    repairs: int = 0              # repair round-trips (each a paid call, in usage/cost and the ledger)
    calls: int = 1
    route: dict | None = None     # model="auto": who answered, why, the failed attempts (ragkit.route)

    def to_dict(self) -> dict:
        d = self._plain_dict()
        if self.citations is not None:
            d.update(self._structured_dict())
        if self.route is not None:
            d["route"] = self.route
        return d

    def _structured_dict(self) -> dict:
        data = self.data.model_dump(mode="json") if hasattr(self.data, "model_dump") else self.data
        return {"answer": data, "schema_valid": True, "enforcement": self.enforcement, "repairs": self.repairs,
                "calls": self.calls, "citations": {f: [s.to_dict() for s in refs] for f, refs in self.citations.items()},
                "dropped_citations": {f: list(ns) for f, ns in (self.dropped_citations or {}).items()}}

    def _plain_dict(self) -> dict:
        return {
            "question": self.question, "answer": self.answer, "strategy": self.strategy,
            "reason": self.plan.reason, "model": self.model, "api_model": self.api_model,
            "sources": [s.to_dict() for s in self.sources],
            "context": [s.to_dict() for s in self.context],
            "usage": self.usage.to_dict(), "cost_usd": self.cost_usd,
            "latency_s": self.latency_s, "ttft_s": self.ttft_s, "prepare_s": self.prepare_s,
            "finish_reason": self.finish_reason, "plan": self.plan.to_dict(),
            "index": self.index.to_dict() if self.index else None,
        }


class Session:
    """A corpus opened once for many questions: documents, counts, index, embedder and providers
    stay loaded. `ask` is safe to call from several threads at once."""

    def __init__(self, path: str | Path, *, model: str | None = None, base_url: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 2, index_dir: str | Path | None = None,
                 ledger=True, log_question: bool = False, task: str = "ask", corpus=None,
                 progress: bool = False, index_wait_s: float | None = None, embed_backend: str | None = None,
                 store: str | None = None, where: str | None = None, nprobe: int | None = None,
                 rerank: int | None = None):
        from ragkit.corpus import DEFAULT_INDEX_WAIT_S, _check_nprobe, _check_rerank
        from ragkit.ledger import Ledger, check_task_label

        self.path = Path(path)
        self.model = model or default_model()
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.index_dir = index_dir
        self.embed_backend = embed_backend  # None: the index's own (a new index: the default)
        self.store, self.where = store, where  # stores.parse_store URL (None: the FAISS folder); a retrieval filter
        # IVF-PQ indexes (checked here: the corpus opens at the first question, too late for a bad value)
        self.nprobe = _check_nprobe(nprobe)  # clusters scanned per query (None: the index's measured default)
        self.rerank = _check_rerank(rerank)  # candidates re-scored exactly (None: store.rerank_pool's; 0: none)
        self.log_question = log_question
        self.task = check_task_label(task)
        self.progress = progress      # index-building progress bar on stderr
        # how long a question waits for another process that is building the first index
        self.index_wait_s = DEFAULT_INDEX_WAIT_S if index_wait_s is None else index_wait_s
        self.ledger = Ledger() if ledger is True else (ledger or None)
        self._corpus = corpus
        self._docs = None
        self._doc_tokens: dict[str, tuple] = {}   # per counting encoding: (sources, prompt.SourceTokens)
        self._doc_sources: list[SourceRef] | None = None
        self._docs_read_ns = 0        # when the documents were read (time.time_ns)
        # doc_id -> the document's whole title: an index chunk holds the title cut to what the embedder
        # reads (chunking.MAX_TITLE_TOKENS), the prompt shows it whole
        self._doc_titles: dict[str, str] = {}
        self._term_ranker = None      # (sources, retrieve.TermRanker) that ranks stuffed documents
        self._index_status = None     # corpus.IndexStatus of the last check; None: check before retrieving
        self._providers: dict[tuple, object] = {}
        self._lock = threading.RLock()          # lazy state
        self._retrieval_lock = threading.Lock()  # pack(): milliseconds; serialised in case the index isn't re-entrant

    # ---- lazily loaded state (each once per session) ------------------------------------------------
    @property
    def corpus(self):
        with self._lock:
            if self._corpus is None:
                from ragkit.corpus import Corpus

                self._corpus = Corpus.open(self.path, index_dir=self.index_dir, embed_backend=self.embed_backend,
                                           store=self.store, nprobe=self.nprobe, rerank=self.rerank)
            return self._corpus

    def documents(self) -> list:
        with self._lock:
            if self._docs is None:
                self._docs_read_ns = time.time_ns()  # files stamped after this are not cached (tokens.file_stamps)
                docs = list(self.corpus.documents())
                if not docs:
                    raise InputError(f"no readable documents under {self.path}.")
                self._docs = docs
                self._doc_sources = as_sources(docs)
                self._doc_titles = {s.doc_id: s.title for s in self._doc_sources if s.title}
            return self._docs

    def ensure_index(self):
        """The index to retrieve from (a corpus.IndexStatus). Checked once per session and never
        blocked by another process updating it: a stale index is re-checked on the next question."""
        with self._lock:
            if self._index_status is None or not self._index_status.fresh:
                self._index_status = self.corpus.update_for_reading(progress=self.progress,
                                                                    wait_s=self.index_wait_s)
            return self._index_status

    def provider(self, spec):
        from ragkit.providers import provider_for

        key = (spec.id, self.base_url, self.timeout_s, self.max_retries)
        with self._lock:
            if key not in self._providers:
                self._providers[key] = provider_for(spec, base_url=self.base_url, timeout_s=self.timeout_s,
                                                    max_retries=self.max_retries)
            return self._providers[key]

    # ---- the pipeline ---------------------------------------------------------------------------------
    def plan(self, question: str = "", *, model: str | None = None, answer_tokens: int | None = None,
             strategy: str | None = None):
        """The plan for this corpus and question (ragkit.budget.Plan): what `ragkit plan` prints and
        what prepare() and ask() then do, unchanged."""
        from ragkit.models import get_model

        return self._plan(get_model(model or self.model), self._sources(), _question(question, required=False),
                          answer_tokens, strategy)

    def prepare(self, question: str, *, model: str | None = None, answer_tokens: int | None = None,
                strategy: str | None = None, top_k: int = DEFAULT_TOP_K, order: str = "edges",
                schema=None) -> PreparedPrompt:
        """Plans and builds the exact prompt, without calling any model (what --dry-run shows).

        strategy forces "stuff" or "retrieve" (None: the planner decides); top_k is how many chunks
        retrieval considers before packing the best of them into the budget; order puts the sources
        that best match the question at the prompt's edges ("edges") or keeps file order ("document").
        schema (see ask) adds the reply-format block to the prompt (and so to the plan) and, unless
        answer_tokens is given, sizes the answer from it.
        """
        from ragkit.costs import cost_usd
        from ragkit.models import get_model
        from ragkit.tokens import counter_for

        question = _question(question)
        if order not in ORDERS:
            raise InputError(f"order {order!r}: use edges or document.")
        t0 = time.perf_counter()
        spec = get_model(model or self.model)
        counter = counter_for(spec)
        doc_sources = self._sources()
        structured = make_schema(schema) if schema is not None else None
        frame = structured.frame if structured is not None else None
        if structured is not None and answer_tokens is None:
            answer_tokens = min(structured.answer_reserve(counter.count), spec.max_output_tokens)
        # followed, never rewritten
        the_plan = self._plan(spec, doc_sources, question, answer_tokens, strategy, frame=frame)

        def prompt_tokens(system: str, user: str) -> int:
            """The prompt as the plan counts it (margin included for estimates)."""
            return counter.planning_tokens(counter.count(system) + counter.count(user))

        if the_plan.strategy == "stuff":
            sources = self._stuffed(doc_sources, question, order)
            system, user = build_prompt(question, sources, frame=frame)
        else:
            # Pack, build the real prompt, count it; shrink the packing budget by any overshoot of the
            # plan's figure and re-pack (chunk fences are estimated per chunk; the plan stays as it is).
            budget = the_plan.budget_tokens
            per_source = self._counts(counter, doc_sources).framing_per_source
            for _ in range(6):
                sources = self._retrieve(question, spec, counter, budget, top_k, per_source)
                sources = self._in_file_order(doc_sources, sources) if order == "document" else sources
                system, user = build_prompt(question, sources, frame=frame)
                over = prompt_tokens(system, user) - the_plan.estimated_input_tokens
                if over <= 0:
                    break
                budget -= over
            else:
                raise InputError(f"could not fit retrieved chunks into {spec.name}'s practical limit of "
                                 f"{the_plan.practical_limit_tokens:,} tokens; lower --answer-tokens or shorten the question.")
        input_tokens = counter.count(system) + counter.count(user)
        estimated = counter.planning_tokens(input_tokens)
        return PreparedPrompt(
            question=question, model=spec.id, plan=the_plan, system=system, user=user, context=tuple(sources),
            input_tokens=input_tokens, estimated_input_tokens=estimated,
            estimated_cost_usd=cost_usd(spec, estimated, the_plan.answer_tokens),
            prepare_s=time.perf_counter() - t0,
            index=self._index_status if the_plan.strategy == "retrieve" else None,
        )

    def _sources(self) -> list[SourceRef]:
        """The documents as numbered sources, in file order (loaded once)."""
        with self._lock:
            self.documents()
            return self._doc_sources

    def _counts(self, counter, sources: list[SourceRef]):
        """The sources' texts and fenced blocks counted once per encoding (prompt.SourceTokens; the
        on-disk count cache keeps each unchanged file's totals, so a new process reads them)."""
        from ragkit.prompt import Framing
        from ragkit.tokens import file_stamps

        with self._lock:
            known = self._doc_tokens.get(counter.encoding_name)
            if known is None or known[0] is not sources:
                path = Path(getattr(self.corpus, "path", self.path)).resolve()
                stamps = file_stamps(path if path.is_dir() else path.parent, {s.source for s in sources},
                                     self._docs_read_ns)
                counts = Framing(counter).count_sources(
                    sources, stamps=stamps, shape=f"text_field={getattr(self.corpus, 'text_field', 'text')}")
                known = self._doc_tokens[counter.encoding_name] = (sources, counts)
            return known[1]

    def _plan(self, spec, sources: list[SourceRef], question: str, answer_tokens: int | None, strategy: str | None,
              frame=None):
        from ragkit.budget import plan_for_sources
        from ragkit.tokens import counter_for

        if self.where:  # a filter selects retrieved chunks: stuffing would send every document regardless
            if strategy == "stuff":
                raise InputError("--where filters retrieved chunks, so it cannot be used with --strategy stuff; "
                                 "drop one of them")
            strategy = "retrieve"
        return plan_for_sources(spec, sources, question, answer_tokens=answer_tokens, strategy=strategy,
                                counts=self._counts(counter_for(spec), sources), frame=frame)

    def _stuffed(self, sources: list[SourceRef], question: str, order: str) -> list[SourceRef]:
        """Every document, renumbered in prompt order: the best matches for the question (BM25, see
        retrieve.TermRanker) at the edges like retrieved chunks, or file order."""
        from ragkit.retrieve import TermRanker, ranked_text, stuffed_order

        if order == "document" or len(sources) < 2:
            return sources
        with self._lock:
            known = self._term_ranker
            if known is None or known[0] is not sources:
                known = self._term_ranker = (sources, TermRanker([ranked_text(s.title, s.text) for s in sources]))
        return [replace(sources[i], number=n) for n, i in enumerate(stuffed_order(known[1], question, order), 1)]

    @staticmethod
    def _in_file_order(doc_sources: list[SourceRef], sources: list[SourceRef]) -> list[SourceRef]:
        """Retrieved chunks renumbered in the order their documents and characters appear in the corpus."""
        from ragkit.retrieve import in_file_order

        ordered = in_file_order(sources, {s.doc_id: i for i, s in enumerate(doc_sources)})
        return [replace(s, number=n) for n, s in enumerate(ordered, 1)]

    def _retrieve(self, question: str, spec, counter, budget: int, top_k: int, per_source: int) -> list[SourceRef]:
        """The best chunks packed into `budget` (the model's tokens), leaving room for each chunk's fence.

        pack() counts chunks in planning tokens (margin included), like the planner; the caller checks
        the finished prompt and calls again with a smaller budget if it still overshoots.
        """
        self.ensure_index()
        with self._lock:
            titles = self._doc_titles
        per_chunk = counter.planning_tokens(per_source)
        if budget <= per_chunk:
            raise InputError(f"no room for any retrieved chunk ({budget:,}-token budget); "
                             "lower --answer-tokens or shorten the question.")
        with self._retrieval_lock:
            packed = self.corpus.pack(question, budget_tokens=budget, model=spec, k=top_k,
                                      per_chunk_overhead_tokens=per_chunk, where=self.where)
        sources = [replace(s, title=titles.get(s.doc_id, s.title)) for s in as_sources(packed.chunks)]  # the whole title
        if not sources:
            raise InputError(f"retrieval found nothing that fits the {budget:,}-token budget for this question "
                             f"under {self.path}; check the index (ragkit index {self.path}).")
        return sources

    def ask(self, question: str, *, model: str | None = None, answer_tokens: int | None = None,
            strategy: str | None = None, on_text: Callable[[str], None] | None = None,
            temperature: float = 0.0, top_k: int = DEFAULT_TOP_K, order: str = "edges", schema=None,
            max_cost_usd: float | None = None, task: str | None = None, floor: float | None = None) -> Answer:
        """Answers one question from the corpus. on_text given => the answer streams through it.

        model "auto" routes (ragkit.route: the policy for `task`, the quality `floor`, the daily budget)
        and falls back to the next candidate when one fails. max_cost_usd refuses a question whose
        upper-bound cost is higher; so does [budget] daily_usd when today's spend plus it would pass it.

        schema (a Pydantic model class, a JSON Schema dict or file, or shorthand like 'name str, year int'):
        the answer is a validated object (Answer.data) with per-field citations (Answer.citations); nothing
        partial is streamed, and a reply that does not validate gets one repair round-trip.
        """
        from ragkit.costs import check_max_cost
        from ragkit.models import get_model

        _question(question)  # before routing: an empty or undecodable question is refused once
        max_cost_usd = check_max_cost(max_cost_usd)  # nan would pass every cost check and pay
        if (model or self.model) == "auto":
            from ragkit.route import DEFAULT_TASK, ask_routed

            return ask_routed(self, question, task=task or DEFAULT_TASK, floor=floor, max_cost_usd=max_cost_usd,
                              answer_tokens=answer_tokens, strategy=strategy, on_text=on_text,
                              temperature=temperature, top_k=top_k, order=order, schema=schema)
        spec = get_model(model or self.model)
        provider = self.provider(spec)  # a missing key fails here, before any indexing work
        structured = make_schema(schema) if schema is not None else None  # a bad schema fails before any work
        prepared = self.prepare(question, model=spec.id, answer_tokens=answer_tokens, strategy=strategy, top_k=top_k,
                                order=order, schema=structured)
        from ragkit.route import check_spend

        check_spend(prepared.estimated_cost_usd, max_cost_usd, self.ledger)  # before any call
        if structured is not None:
            return self._ask_structured(spec, provider, prepared, structured, temperature)
        return self.complete(prepared, on_text=on_text, temperature=temperature)

    def complete(self, prepared: PreparedPrompt, *, on_text: Callable[[str], None] | None = None,
                 temperature: float = 0.0) -> Answer:
        """Sends a prompt prepare() built and accounts for it: ask() for callers that look at the exact
        prompt first (`ragkit compare` keys its response cache on it)."""
        from ragkit.ledger import account
        from ragkit.models import get_model

        spec = get_model(prepared.model)
        done = self.provider(spec).complete(prepared.system, prepared.user, max_tokens=prepared.plan.answer_tokens,
                                            temperature=temperature, on_text=on_text)
        # Only a completed call gets this far: no partial answer, no ledger row for failures.
        cost = account(done, spec, task=self.task, strategy=prepared.plan.strategy, question=prepared.question,
                       log_question=self.log_question, ledger=self.ledger).cost_usd
        cited = cited_numbers(done.text, len(prepared.context))
        answer = Answer(
            answer=done.text.strip(), strategy=prepared.plan.strategy, plan=prepared.plan,
            sources=tuple(prepared.context[n - 1] for n in cited), context=prepared.context,
            usage=Usage(done.input_tokens, done.output_tokens, getattr(done, "usage_reported", True)),
            cost_usd=cost, model=spec.id, api_model=done.model, latency_s=done.latency_s, ttft_s=done.ttft_s,
            prepare_s=prepared.prepare_s, finish_reason=done.finish_reason, question=prepared.question,
            index=prepared.index,
        )
        return answer

    def _ask_structured(self, spec, provider, prepared: PreparedPrompt, structured, temperature: float) -> Answer:
        """The schema's answer: every call (a repair included) is its own ledger row and adds to usage and cost."""
        from ragkit.ledger import account
        from ragkit.structured import complete_structured

        costs: list[float] = []
        result = complete_structured(
            provider, structured, prepared.system, prepared.user, max_tokens=prepared.plan.answer_tokens,
            temperature=temperature, n_sources=len(prepared.context),
            on_call=lambda done: costs.append(account(
                done, spec, task=self.task, strategy=prepared.plan.strategy, question=prepared.question,
                log_question=self.log_question, ledger=self.ledger).cost_usd))
        calls, parsed, last = result.completions, result.parsed, result.completions[-1]
        cited = list(dict.fromkeys(n for numbers in parsed.citations.values() for n in numbers))
        refs = lambda numbers: tuple(prepared.context[n - 1] for n in numbers)  # noqa: E731
        return Answer(
            answer=json.dumps(parsed.value, ensure_ascii=False), strategy=prepared.plan.strategy, plan=prepared.plan,
            sources=refs(cited), context=prepared.context,
            usage=Usage(sum(c.input_tokens for c in calls), sum(c.output_tokens for c in calls),
                        all(getattr(c, "usage_reported", True) for c in calls)),
            cost_usd=sum(costs), model=spec.id,
            api_model=last.model, latency_s=sum(c.latency_s for c in calls), ttft_s=calls[0].ttft_s,
            prepare_s=prepared.prepare_s, finish_reason=last.finish_reason, question=prepared.question,
            index=prepared.index, data=parsed.data, citations={f: refs(ns) for f, ns in parsed.citations.items()},
            dropped_citations=dict(parsed.dropped), enforcement=result.enforcement, repairs=result.repairs,
            calls=len(calls))

    def refresh(self) -> None:
        """Re-reads the documents and re-checks the index on the next question (files changed on disk)."""
        with self._lock:
            self._docs = None
            self._doc_sources = None
            self._doc_titles = {}
            self._doc_tokens.clear()
            self._term_ranker = None
            self._index_status = None

    def close(self) -> None:
        with self._lock:
            corpus, self._corpus = self._corpus, None
            self._providers.clear()
        close = getattr(corpus, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ask(path: str | Path, question: str, *, model: str | None = None, base_url: str | None = None,
        answer_tokens: int | None = None, strategy: str | None = None,
        on_text: Callable[[str], None] | None = None, top_k: int = DEFAULT_TOP_K, order: str = "edges", schema=None,
        **session_kw) -> Answer:
    """One question, one corpus: opens a Session, asks, closes. For many questions keep a Session."""
    with Session(path, model=model, base_url=base_url, **session_kw) as session:
        return session.ask(question, answer_tokens=answer_tokens, strategy=strategy, on_text=on_text, top_k=top_k,
                           order=order, schema=schema)
