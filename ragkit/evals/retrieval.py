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
_searchers: dict[int, Callable[[str, int], list[str]]] = {}


def _memory_index(texts: Sequence[str]):
    """ragkit's in-memory index (shared embedder, loaded once per process)."""
    from ragkit.corpus import build_memory_index

    return build_memory_index(list(texts))


def _hit_index(hit) -> int:
    for name in ("index", "idx", "position", "i"):
        if hasattr(hit, name):
            return int(getattr(hit, name))
    if isinstance(hit, tuple):
        return int(hit[0])
    return int(hit.doc_id)


def rank_units(units: Sequence[str], query: str) -> list[int]:
    """All unit indices, most relevant to the query first."""
    if not units:
        return []
    index = _memory_index(units)
    hits = index.search(query, k=len(units))
    ranked = list(dict.fromkeys(_hit_index(h) for h in hits))
    return ranked + [i for i in range(len(units)) if i not in set(ranked)]


def order_edges(ranked: list[int]) -> list[int]:
    """Best at the start, second best at the end, and so on inwards: the weakest sit in the middle."""
    front, back = [], []
    for k, i in enumerate(ranked):
        (front if k % 2 == 0 else back).append(i)
    return front + back[::-1]


def pack_units(units: Sequence[str], ranked: list[int], unit_tokens: Sequence[int], budget_tokens: int,
               order: str = "edges") -> list[int]:
    """Greedy by rank into the budget (skipping units that don't fit), then ordered for the prompt."""
    chosen, used = [], 0
    for i in ranked:
        if used + unit_tokens[i] <= budget_tokens:
            chosen.append(i)
            used += unit_tokens[i]
    if order == "edges":
        return order_edges(chosen)
    if order == "document":
        return sorted(chosen)
    return chosen  # "rank"


def passage_searcher(passages: Sequence[dict]) -> Callable[[str, int], list[str]]:
    """search(question, k) -> passage ids, nearest first; the index is built once per passage set."""
    key = id(passages)
    with _lock:
        if key in _searchers:
            return _searchers[key]
    texts = [f"{p['title']}\n{p['text']}" for p in passages]
    index = _memory_index(texts)
    ids = [p["id"] for p in passages]

    def search(question: str, k: int) -> list[str]:
        return [ids[_hit_index(h)] for h in index.search(question, k=k)]

    with _lock:
        _searchers[key] = search
    return search
