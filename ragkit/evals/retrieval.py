"""The `retrieve` strategy over an eval's own haystack, and hard-distractor search for multi-doc QA.

Both go through ragkit's retrieval stack (the in-memory index of ragkit.corpus) so the eval measures
what `ragkit ask` would do: rank the units against the question, pack the best into the planner's
budget, order them against lost-in-the-middle.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

Ranker = Callable[[Sequence[str], str], list[int]]  # (unit texts, query) -> unit indices, best first

_lock = threading.Lock()
_searchers: dict[object, Callable[[str, int], list[str]]] = {}


def _memory_index(texts: Sequence[str], ids: Sequence[str] | None = None):
    """ragkit's in-memory index (shared embedder, loaded once per process)."""
    from ragkit.corpus import build_memory_index

    return build_memory_index(list(texts), list(ids) if ids is not None else None)


def rank_units(units: Sequence[str], query: str) -> list[int]:
    """All unit indices, most relevant to the query first (ragkit's embedder, exact search)."""
    if not units:
        return []
    hits = _memory_index(units, [str(i) for i in range(len(units))]).search(query, k=len(units))
    ranked = list(dict.fromkeys(int(h.doc_id) for h in hits))
    seen = set(ranked)
    return ranked + [i for i in range(len(units)) if i not in seen]


def retrieve_units(units: Sequence[str], query: str, budget_tokens: int, counter, *, order: str = "edges",
                   ranker: Ranker | None = None, top_k: int | None = None, per_unit_tokens: int = 0) -> list[int]:
    """The units `ragkit ask` would send: the `top_k` best ranked (ask's default cap), packed by
    ragkit.retrieve.pack_hits into the budget (model tokens, estimates inflated by the margin, plus
    `per_unit_tokens` of the prompt's framing around each unit, as ask reserves each source's fence),
    ordered against lost-in-the-middle, or in the units' own order ("document", as ask puts chunks in
    corpus order)."""
    from ragkit.retrieve import DEFAULT_TOP_K, Hit, in_file_order, pack_hits

    ranked = (ranker or rank_units)(units, query)[:DEFAULT_TOP_K if top_k is None else top_k]
    hits = [Hit(str(i), f"unit-{i}", 0, len(units[i]), units[i], score=1.0 - k / (len(ranked) + 1), chunk_id=i)
            for k, i in enumerate(ranked)]
    packed = pack_hits(hits, budget_tokens, counter, order=order, per_chunk_overhead_tokens=per_unit_tokens).chunks
    if order == "document":
        packed = in_file_order(list(packed), {str(i): i for i in range(len(units))})
    return [int(c.doc_id) for c in packed]


def stuff_units(texts: Sequence[str], query: str, *, order: str = "document") -> list[int]:
    """Every unit, as the stuff strategy sends them: in their own order ("document"), or in the order
    `ragkit ask --order edges` gives stuffed documents (retrieve.stuffed_order over `texts`, the units as
    ask would read them: Task.ranking_texts), the strongest at both edges. (For QA-style units: a needle
    haystack's pieces only read in order.)"""
    from ragkit.retrieve import TermRanker, stuffed_order

    if order == "document":
        return list(range(len(texts)))
    return stuffed_order(TermRanker(list(texts)), query, order)


def planner_budget(spec, task, sample, answer_tokens: int) -> int:
    """The context budget ragkit's planner (budget.plan, the one `ragkit ask` follows) leaves this
    eval prompt: the task's own instructions and question, counted as rendered, are reserved."""
    from ragkit.budget import plan
    from ragkit.tokens import counter_for

    counter = counter_for(spec)
    scaffold = counter.count(task.system) + counter.count(task.render(sample, [], retrieved=True))
    return plan(spec, corpus_tokens=0, instructions_tokens=scaffold, question_tokens=0,
                answer_tokens=min(answer_tokens, spec.max_output_tokens)).budget_tokens


def passage_searcher(passages: Sequence[dict]) -> Callable[[str, int], list[str]]:
    """search(question, k) -> passage ids, nearest first; the index is built once per passage set."""
    key = id(passages)
    with _lock:
        if key in _searchers:
            return _searchers[key]
    index = _memory_index([f"{p['title']}\n{p['text']}" for p in passages], [p["id"] for p in passages])

    def search(question: str, k: int) -> list[str]:
        return [h.doc_id for h in index.search(question, k=k)]

    with _lock:
        _searchers[key] = search
    return search


def corpus_searcher(path, passages: Sequence[dict]) -> Callable[[str, int], list[str]]:
    """search(question, k) -> passage ids through the corpus folder's persistent ragkit index.

    The index is built once (`ragkit index PATH` builds the same one) and reused by later runs,
    so hard distractors over the bundled 2,599 passages cost the embedding only the first time.
    Chunks map back to passages by the JSONL record id (`file#id`); several chunks of one passage
    count once.
    """
    from ragkit.corpus import Corpus

    key = ("corpus", str(path))
    with _lock:
        if key in _searchers:
            return _searchers[key]
    corpus = Corpus.open(path)
    corpus.index()
    known = {p["id"] for p in passages}

    def search(question: str, k: int) -> list[str]:
        hits = corpus.search(question, k=k * 2)
        ids = [h.doc_id.rsplit("#", 1)[-1] for h in hits]
        return [i for i in dict.fromkeys(ids) if i in known][:k]

    with _lock:
        _searchers[key] = search
    return search
