"""Token-aware chunking: split on structure first (sections at headings, paragraphs, then
sentences, words, and word pieces as a last resort), sized in the *embedder's* tokens.

Why the embedder's tokens: all-MiniLM-L6-v2 reads at most 256 word pieces (incl. [CLS]/[SEP])
and silently drops the rest, so a chunk sized in another tokenizer could be embedded only in part.
Every chunk is re-counted in that tokenizer before it is returned and cut further if needed.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from bisect import bisect_left
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Iterator, Protocol

from ragkit.span import Span

DEFAULT_CHUNK_TOKENS = 240   # content word pieces; + [CLS]/[SEP] = 242 <= MiniLM's 256 window
DEFAULT_OVERLAP_TOKENS = 32
_MAX_BLOCK_CHARS = 50_000    # bound on one tokenizer call, so a 100 MB paragraph stays cheap
_BATCH_CHARS = 256_000       # text per tokenizer call when chunking
MAX_TITLE_TOKENS = 48        # longer titles are cut: they must leave room for the text

# Line-anchored and length-bounded: no backtracking across long paragraph lines.
_HEADING = re.compile(
    r"^(?:#{1,6}[ \t]+\S[^\n]*$"                                            # Markdown ATX heading
    r"|[ \t]*\S[^\n]{0,200}\n(?P<u>[=\-~^\"'`#*+:.])(?P=u){2,}[ \t]*$"   # reST title + underline
    r"|[ \t]*\S[^\n]{0,200}\n(?:=+|-+)[ \t]*$)",                           # Markdown setext heading
    re.MULTILINE,
)
_PARAGRAPH_GAP = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_GAP = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\s*\n\s*")
_WORD = re.compile(r"\S+")


class PieceTokenizer(Protocol):
    """What the chunker needs from the embedder's tokenizer (see ragkit.embed.load_piece_tokenizer)."""

    name: str
    max_tokens: int        # the model's window, special tokens included
    special_tokens: int    # added to every input ([CLS] + [SEP] = 2 for BERT)

    def offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]]: ...


@dataclass(frozen=True)
class ChunkSettings:
    """Chunker settings recorded in the index manifest: a change means a rebuild."""

    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
    # Embed each chunk with its document's title in front (a "contextual header"): a passage that
    # never names its subject is still found by a question that does. The title's word pieces come
    # out of the chunk's budget, so title + chunk still fit the window whole.
    embed_title: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Chunk(Span):
    """A piece of one document, sized for the embedder."""

    position: int      # 0-based order within the document
    tokens: int        # in the embedder's tokenizer, without special tokens

    @property
    def embed_text(self) -> str:
        """What the embedder reads: title line + text."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    @property
    def text_hash(self) -> str:
        return text_hash(self.embed_text)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _spans(text: str, s: int, e: int, gap: re.Pattern) -> Iterator[tuple[int, int]]:
    """Non-blank pieces of text[s:e] between matches of `gap`, stripped of whitespace (lazily)."""
    pos = s
    for m in itertools.chain(gap.finditer(text, s, e), [None]):
        a, b = pos, (m.start() if m is not None else e)
        if m is not None:
            pos = m.end()
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            yield (a, b)


def _sections(text: str) -> list[tuple[int, int]]:
    starts = sorted({0, *(m.start() for m in _HEADING.finditer(text))})
    bounds = starts + [len(text)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def _blocks(text: str, s: int, e: int) -> Iterator[tuple[int, int]]:
    """Paragraphs of a section; an oversized paragraph is cut at whitespace into bounded blocks."""
    for a, b in _spans(text, s, e, _PARAGRAPH_GAP):
        while b - a > _MAX_BLOCK_CHARS:
            cut = a + _MAX_BLOCK_CHARS
            ws = max(text.rfind(" ", a + _MAX_BLOCK_CHARS // 2, cut), text.rfind("\n", a + _MAX_BLOCK_CHARS // 2, cut))
            cut = ws if ws > a else cut
            yield (a, cut)
            a = cut
            while a < b and text[a].isspace():
                a += 1
        if a < b:
            yield (a, b)


class _Counter:
    """Counts word pieces in any whitespace-bounded span of a block from one tokenization."""

    def __init__(self, base: int, offsets: list[tuple[int, int]]):
        self.starts = [base + a for a, _ in offsets]
        self.ends = [base + b for _, b in offsets]

    def count(self, a: int, b: int) -> int:
        return bisect_left(self.starts, b) - bisect_left(self.starts, a)

    def piece_runs(self, a: int, b: int, size: int) -> list[tuple[int, int, int]]:
        i, j = bisect_left(self.starts, a), bisect_left(self.starts, b)
        out = []
        for k in range(i, j, size):
            last = min(k + size, j) - 1
            out.append((self.starts[k], self.ends[last], last - k + 1))
        return out


def _atomic(text: str, a: int, b: int, c: _Counter, limit: int) -> Iterable[tuple[int, int, int]]:
    """Pieces of one block, each <= limit tokens: the block, else sentences, else words, else word pieces."""
    n = c.count(a, b)
    if n <= limit:
        if n:
            yield (a, b, n)
        return
    for sa, sb in _spans(text, a, b, _SENTENCE_GAP):
        n = c.count(sa, sb)
        if n <= limit:
            if n:
                yield (sa, sb, n)
            continue
        for m in _WORD.finditer(text, sa, sb):
            wa, wb = m.span()
            n = c.count(wa, wb)
            if n <= limit:
                if n:
                    yield (wa, wb, n)
            else:
                yield from c.piece_runs(wa, wb, limit)


def _merge(pieces: Iterable[tuple[int, int, int]], limit: int, overlap: int) -> Iterator[list[tuple[int, int, int]]]:
    """Greedy packing of consecutive pieces up to `limit` tokens; each new group starts with the
    trailing pieces of the previous one (<= overlap tokens) so a fact cut at a boundary survives.
    A generator: a huge text never has all its pieces in memory."""
    cur, cur_t = [], 0
    for p in pieces:
        if cur and cur_t + p[2] > limit:
            yield cur
            carry, ct = [], 0
            for q in reversed(cur):
                if ct + q[2] > overlap:
                    break
                carry.insert(0, q)
                ct += q[2]
            while carry and ct + p[2] > limit:
                ct -= carry.pop(0)[2]
            cur, cur_t = carry, ct
        cur.append(p)
        cur_t += p[2]
    if cur:
        yield cur


class Chunker:
    """Splits Documents into Chunks that fit the embedder's window whole."""

    def __init__(self, tokenizer: PieceTokenizer, settings: ChunkSettings | None = None):
        from ragkit.errors import ConfigError

        self.tokenizer = tokenizer
        self.settings = settings or ChunkSettings()
        room = tokenizer.max_tokens - tokenizer.special_tokens
        if self.settings.chunk_tokens < 8:
            raise ConfigError("chunk size must be at least 8 tokens")
        if self.settings.chunk_tokens > room:
            raise ConfigError(
                f"chunk size {self.settings.chunk_tokens} exceeds the embedder's window ({room} word pieces "
                f"after special tokens); {tokenizer.name} would silently truncate it. Use --chunk-tokens {room} or less."
            )
        if not 0 <= self.settings.overlap_tokens < self.settings.chunk_tokens:
            raise ConfigError("overlap must be >= 0 and smaller than the chunk size")

    def split(self, doc) -> list[Chunk]:
        return self.split_many([doc])

    def split_many(self, docs) -> list[Chunk]:
        """Chunks of several documents; one batched tokenizer call per batch of paragraphs."""
        overlap = self.settings.overlap_tokens
        out: list[Chunk] = []
        for doc in docs:
            text = doc.text
            title, title_tokens = self._title(doc)
            limit = self.settings.chunk_tokens - title_tokens
            position = 0
            doc_chunks: list[Chunk] = []
            for sec in _sections(text):
                for group in _merge(self._pieces(text, _blocks(text, *sec), limit), limit, overlap):
                    s, e = group[0][0], group[-1][1]
                    doc_chunks.append(Chunk(doc.id, doc.source, s, e, text[s:e], title, position=position,
                                            tokens=sum(p[2] for p in group)))
                    position += 1
            out.extend(self._verify(doc_chunks, limit))
        return out

    def _pieces(self, text: str, blocks: Iterable[tuple[int, int]], limit: int):
        """Atomic pieces of a section, tokenizing ~256 KB of paragraphs per call so that a 100 MB text
        never has all its token offsets in memory at once."""
        part: list[tuple[int, int]] = []
        size = 0
        for blk in itertools.chain(blocks, [None]):
            if blk is not None:
                part.append(blk)
                size += blk[1] - blk[0]
            if part and (blk is None or size >= _BATCH_CHARS):
                for (a, b), off in zip(part, self.tokenizer.offsets_batch([text[x:y] for x, y in part])):
                    yield from _atomic(text, a, b, _Counter(a, off), limit)
                part, size = [], 0

    def _title(self, doc) -> tuple[str, int]:
        """(title to embed, its word pieces + 1 slack), cut to MAX_TITLE_TOKENS; ("", 0) when off or absent."""
        title = (doc.meta or {}).get("title") if self.settings.embed_title else None
        if not isinstance(title, str) or not title.strip():
            return "", 0
        title = " ".join(title.split())
        off = self.tokenizer.offsets_batch([title])[0]
        if len(off) > MAX_TITLE_TOKENS:
            title = title[:off[MAX_TITLE_TOKENS - 1][1]]
            off = off[:MAX_TITLE_TOKENS]
        return title, min(len(off) + 1, self.settings.chunk_tokens // 2)

    def _with_offsets(self, chunks: list[Chunk]):
        for i in range(0, len(chunks), 256):
            part = chunks[i:i + 256]
            yield from zip(part, self.tokenizer.offsets_batch([c.text for c in part]))

    def _verify(self, chunks: list[Chunk], limit: int) -> list[Chunk]:
        """Re-counts each chunk on its own; cuts any that a non-additive tokenizer made too long."""
        if not chunks:
            return chunks
        fixed, changed = [], False
        for c, off in self._with_offsets(chunks):
            if len(off) <= limit:
                fixed.append(c if len(off) == c.tokens else replace(c, tokens=len(off)))
                continue
            changed = True
            counter = _Counter(c.start_char, off)
            for a, b, n in counter.piece_runs(c.start_char, c.end_char, limit):
                fixed.append(replace(c, start_char=a, end_char=b, text=c.text[a - c.start_char:b - c.start_char],
                                     position=0, tokens=n))
        if changed:
            fixed = [replace(c, position=i) for i, c in enumerate(fixed)]
        return fixed
