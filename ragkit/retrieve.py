"""Search results and budget packing.

`pack_hits` turns scored chunks into a context that fits a budget counted in the *target model's*
tokens (ragkit.tokens): best chunks first, overlapping or adjacent chunks of one document merged,
near-duplicates dropped, and the result ordered against lost-in-the-middle (most relevant at the
edges) unless another order is asked for.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ragkit.span import Span

ORDERS = ("edges", "score", "document")
# Chunks considered before packing the best that fit the budget. Measured on 200 NQ questions over
# nq-wiki (benchmarks/bench_pack_amount.py): the gold passage is in the packed context for 0.990 of
# them at 20 as at 50, 100 or 200, for 42% of k=50's prompt tokens (0.985 at 10, 0.980 at 5).
DEFAULT_TOP_K = 20
DEFAULT_DEDUPE_JACCARD = 0.8


@dataclass(frozen=True, kw_only=True)
class Hit(Span):
    """One retrieved chunk; score = cosine similarity to the query."""

    score: float
    position: int = 0      # chunk number within its document
    chunk_id: int = -1
    # The text's tokens per encoding, stored at index time (None: count when packing). Not part of the result.
    token_counts: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("token_counts")
        return d


@dataclass(frozen=True, kw_only=True)
class PackedChunk(Span):
    """A passage of the packed context, with what a citation needs."""

    score: float
    tokens: int            # in the target model's tokens (planning count, margin included)


@dataclass(frozen=True)
class PackedContext:
    """Chunks in prompt order; `tokens` = sum of chunk tokens + per-chunk overhead, always <= budget_tokens."""

    chunks: tuple[PackedChunk, ...]
    tokens: int
    budget_tokens: int = 0
    order: str = "edges"
    candidates: int = 0    # hits considered
    dropped_duplicates: int = 0
    merged: int = 0
    sources: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"chunks": [c.to_dict() for c in self.chunks], "tokens": self.tokens,
                "budget_tokens": self.budget_tokens, "order": self.order, "candidates": self.candidates,
                "dropped_duplicates": self.dropped_duplicates, "merged": self.merged,
                "sources": list(self.sources)}

    def text(self, separator: str = "\n\n") -> str:
        return separator.join(c.text for c in self.chunks)


_WORDS = re.compile(r"\w+")
# ASCII characters outside \w, to a space: on ASCII text, translate + split finds \w+'s words in half the time
_ASCII_NON_WORD = {i: " " for i in range(128) if not (chr(i).isalnum() or chr(i) == "_")}


def _shingles(text: str, n: int = 3) -> frozenset:
    """Hashed word 3-grams: cheap near-duplicate fingerprints."""
    low = text.lower()
    words = low.translate(_ASCII_NON_WORD).split() if low.isascii() else _WORDS.findall(low)
    if len(words) < n:
        return frozenset([hash(tuple(words))])
    return frozenset(map(hash, zip(*(words[i:] for i in range(n)))))


def _near_duplicate(a: frozenset, b: frozenset, threshold: float) -> bool:
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if not small or len(small) < threshold * len(large):  # Jaccard <= |small| / |large|: can't reach it
        return False
    inter = len(small & large)
    return inter / (len(a) + len(b) - inter) >= threshold


@dataclass
class _Group:
    doc_id: str
    source: str
    start: int
    end: int
    text: str
    score: float
    pos_lo: int
    pos_hi: int
    tokens: int
    rank: int
    shingles: frozenset
    title: str = ""


def _merge_text(g: _Group, h: Hit) -> tuple[int, int, str] | None:
    """Span and text of g joined with h when they overlap or touch (adjacent chunks); else None."""
    adjacent = h.position in (g.pos_lo - 1, g.pos_hi + 1)
    if h.start_char >= g.start and h.end_char <= g.end:
        return g.start, g.end, g.text  # already inside
    if h.start_char <= g.end and h.end_char > g.end:            # h continues g
        return g.start, h.end_char, g.text + h.text[g.end - h.start_char:]
    if h.end_char >= g.start and h.start_char < g.start:        # h precedes g
        return h.start_char, max(g.end, h.end_char), h.text[:g.start - h.start_char] + g.text
    if adjacent and h.start_char > g.end:
        return g.start, h.end_char, g.text + "\n\n" + h.text
    if adjacent and h.end_char < g.start:
        return h.start_char, g.end, h.text + "\n\n" + g.text
    return None


def _order(groups: list[_Group], order: str) -> list[_Group]:
    by_score = sorted(groups, key=lambda g: (-g.score, g.rank))
    if order == "score":
        return by_score
    if order == "document":
        return sorted(groups, key=lambda g: (g.source, g.doc_id, g.start))
    return edges(by_score)


def edges(best_first: list) -> list:
    """Ranks 1,3,5,... from the front, ...,6,4,2 at the back: the weakest end up in the middle,
    where long-context models attend least (Liu et al. 2023)."""
    return best_first[0::2] + best_first[1::2][::-1]


class TermRanker:
    """BM25 over whole documents, for ordering stuffed documents by a question.

    Stuffing sends every document anyway; only their order is at stake, and this costs milliseconds
    with no model to load, where embedding a stuffed corpus costs the embedder's load plus about a
    second per thousand tokens on two cores (and would see only each document's first 256 word
    pieces). Built once per document set, then each question scores in one pass over its terms.
    """

    K1, B = 1.2, 0.75

    def __init__(self, texts: list[str]):
        from collections import Counter

        self.n = len(texts)
        self._tf = [Counter(_WORDS.findall(t.lower())) for t in texts]
        self._len = [sum(tf.values()) for tf in self._tf]
        self._avg = (sum(self._len) / self.n) if self.n else 0.0
        self._postings: dict[str, list[int]] = {}
        for i, tf in enumerate(self._tf):
            for term in tf:
                self._postings.setdefault(term, []).append(i)

    def rank(self, query: str) -> list[int]:
        """Every document index, best match first; ties (and documents sharing no term) keep file order."""
        import math

        scores = [0.0] * self.n
        for term in set(_WORDS.findall(query.lower())):
            docs = self._postings.get(term, ())
            idf = math.log(1.0 + (self.n - len(docs) + 0.5) / (len(docs) + 0.5))
            for i in docs:
                f = self._tf[i][term]
                norm = self.K1 * (1.0 - self.B + self.B * self._len[i] / (self._avg or 1.0))
                scores[i] += idf * f * (self.K1 + 1.0) / (f + norm)
        return sorted(range(self.n), key=lambda i: -scores[i])


def ranked_text(title: str, text: str) -> str:
    """What TermRanker reads of a document: its title (a field, never a word of the text) and its text."""
    return f"{title}\n{text}" if title else text


def in_file_order(spans: list, position: dict[str, int]) -> list:
    """Passages in the order their documents (`position`: doc_id -> place in the corpus) and characters
    appear: `--order document` for retrieved chunks, in ask and in the eval alike."""
    return sorted(spans, key=lambda s: (position.get(s.doc_id, len(position)), s.start_char))


def stuffed_order(ranker: TermRanker, question: str, order: str) -> list[int]:
    """Stuffed documents' indices in prompt order, the one ordering `ragkit ask` and the eval's stuff
    strategy share: the best matches for the question at both edges ("edges"), or as given ("document")."""
    from ragkit.errors import InputError

    if order not in ("edges", "document"):
        raise InputError(f"order {order!r}: use edges or document.")
    if order == "document" or ranker.n < 2:
        return list(range(ranker.n))
    return edges(ranker.rank(question))


def pack_hits(hits: list[Hit], budget_tokens: int, counter, *, order: str = "edges",
              per_chunk_overhead_tokens: int = 0, dedupe_jaccard: float = DEFAULT_DEDUPE_JACCARD) -> PackedContext:
    """Packs hits (any order; sorted by score here) into `budget_tokens` of `counter`'s tokens.

    `counter` is a ragkit.tokens.TokenCounter (count + planning_tokens). Each chunk's cost is its
    planning count (margin included for estimated encodings) plus `per_chunk_overhead_tokens`
    (the prompt's per-source framing); the total never exceeds the budget.
    """
    from ragkit.errors import InputError

    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    cost = lambda text: counter.planning_tokens(counter.count(text))  # noqa: E731

    def hit_cost(h: Hit) -> int:  # the count stored at index time when there is one for this encoding
        known = h.token_counts.get(counter.encoding_name) if h.token_counts else None
        return cost(h.text) if known is None else counter.planning_tokens(known)
    groups: list[_Group] = []
    total = dropped = merged = 0
    for rank, h in enumerate(sorted(hits, key=lambda h: -h.score)):
        target = next((g for g in groups if g.doc_id == h.doc_id and _merge_text(g, h) is not None), None)
        if target is not None:
            start, end, text = _merge_text(target, h)
            if text == target.text:
                continue
            t = cost(text)
            if total - target.tokens + t <= budget_tokens:
                total += t - target.tokens
                target.start, target.end, target.text, target.tokens = start, end, text, t
                target.pos_lo, target.pos_hi = min(target.pos_lo, h.position), max(target.pos_hi, h.position)
                target.shingles = _shingles(text)
                merged += 1
            continue
        if budget_tokens - total - per_chunk_overhead_tokens <= 0:
            break  # full: nothing more can fit
        t = hit_cost(h)
        if total + t + per_chunk_overhead_tokens > budget_tokens:
            continue  # a later, shorter chunk may still fit; this one needs no fingerprint
        sh = _shingles(h.text)
        if any(_near_duplicate(sh, g.shingles, dedupe_jaccard) for g in groups):
            dropped += 1
            continue
        groups.append(_Group(h.doc_id, h.source, h.start_char, h.end_char, h.text, h.score, h.position,
                             h.position, t, rank, sh, h.title))
        total += t + per_chunk_overhead_tokens
    ordered = _order(groups, order)
    chunks = tuple(PackedChunk(g.doc_id, g.source, g.start, g.end, g.text, g.title, score=round(g.score, 6),
                               tokens=g.tokens) for g in ordered)
    sources = tuple(dict.fromkeys(c.source for c in chunks))
    return PackedContext(chunks, total, budget_tokens, order, len(hits), dropped, merged, sources)
