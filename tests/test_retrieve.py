"""Packing: budget in the target model's tokens, merging, de-duplication, lost-in-the-middle order."""
from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.corpus import Corpus, build_memory_index  # noqa: E402
from ragkit.errors import InputError  # noqa: E402
from ragkit.retrieve import Hit, pack_hits  # noqa: E402
from ragkit.tokens import counter_for  # noqa: E402


def _hit(doc, start, end, text, score, pos=0):
    return Hit(doc, doc + ".md", start, end, text, score=score, position=pos)


def _random_hits(rng, n=40):
    words = "data model token budget context window answer question passage vector index".split()
    hits = []
    for i in range(n):
        text = " ".join(rng.choice(words) + rng.choice(["", ",", ".", "!"]) for _ in range(rng.randint(5, 120)))
        text += f" unique{i} " + "".join(rng.choice("αβγ数据🙂xyz") for _ in range(rng.randint(0, 30)))
        hits.append(_hit(f"d{i}", 0, len(text), text, rng.random()))
    return hits


@pytest.mark.parametrize("model", ["gpt-4o", "claude-3.5-sonnet", "qwen2.5-coder-0.5b-local"])
def test_packing_never_exceeds_the_budget_in_target_tokens(model):
    from ragkit.models import get_model

    spec = get_model(model)   # an exact counter, a margin over cl100k, the local model's margin
    counter = counter_for(spec)
    rng = random.Random(1)
    for budget in (1, 17, 50, 200, 777, 3000):
        for overhead in (0, 9):
            ctx = pack_hits(_random_hits(rng), budget, counter, per_chunk_overhead_tokens=overhead)
            real = sum(counter.planning_tokens(counter.count(c.text)) + overhead for c in ctx.chunks)
            assert real == ctx.tokens <= budget
            exact = sum(counter.count(c.text) + overhead for c in ctx.chunks)
            assert exact <= budget
            if budget >= 777:
                assert len(ctx.chunks) >= 2  # and it does use the budget


def test_best_first_then_edges_order():
    counter = counter_for("gpt-4o")
    hits = [_hit(f"d{i}", 0, 10, f"passage number {i} about topic {i * 7} and more words", 1.0 - i / 10)
            for i in range(6)]
    ctx = pack_hits(hits, 10_000, counter, order="edges")
    ranks = [int(c.doc_id[1:]) for c in ctx.chunks]
    assert ranks == [0, 2, 4, 5, 3, 1]  # best at both edges, weakest in the middle
    assert [int(c.doc_id[1:]) for c in pack_hits(hits, 10_000, counter, order="score").chunks] == list(range(6))
    assert all(c.source == c.doc_id + ".md" and c.score > 0 for c in ctx.chunks)
    # a small budget keeps the best ones
    small = pack_hits(hits, ctx.chunks[0].tokens * 2, counter, order="score")
    assert [c.doc_id for c in small.chunks] == ["d0", "d1"]
    with pytest.raises(InputError):
        pack_hits(hits, 100, counter, order="middle")


def test_merges_overlapping_and_adjacent_chunks_of_one_document():
    counter = counter_for("gpt-4o")
    doc = "Alpha one two three. Beta four five six. Gamma seven eight nine. Delta ten eleven."
    beta, gamma, delta = doc.index("Beta"), doc.index("Gamma"), doc.index("Delta")
    a = _hit("doc", 0, gamma - 1, doc[:gamma - 1], 0.9, 0)           # Alpha + Beta
    b = _hit("doc", beta, delta - 1, doc[beta:delta - 1], 0.8, 1)    # Beta + Gamma (overlaps a)
    c = _hit("doc", delta, len(doc), doc[delta:], 0.7, 2)            # Delta (adjacent to b)
    other = _hit("zzz", 0, 12, "Other thing.", 0.75, 0)
    ctx = pack_hits([c, other, b, a], 10_000, counter, order="score")
    assert len(ctx.chunks) == 2 and ctx.merged == 2
    merged = ctx.chunks[0]
    assert (merged.start_char, merged.end_char) == (0, len(doc))
    assert merged.text.replace("\n\n", " ") == doc
    assert merged.score == 0.9 and merged.tokens == counter.count(merged.text)


def test_drops_near_duplicates():
    counter = counter_for("gpt-4o")
    text = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
    hits = [_hit("a", 0, len(text), text, 0.9), _hit("b", 0, len(text) + 1, text + " ", 0.85),
            _hit("c", 0, 30, "Completely unrelated sentence here.", 0.5)]
    ctx = pack_hits(hits, 10_000, counter)
    assert [c.doc_id for c in ctx.chunks] == ["a", "c"] and ctx.dropped_duplicates == 1


def test_corpus_pack_end_to_end(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    topics = {"volcano": "Volcanoes erupt molten rock called lava from the mantle.",
              "ocean": "The Pacific is the largest and deepest ocean on Earth.",
              "python": "Python is a programming language with dynamic typing.",
              "bread": "Bread is baked from flour, water and yeast."}
    for name, sentence in topics.items():
        (docs / f"{name}.txt").write_text((sentence + " ") * 3)
    corpus = Corpus.open(docs)
    corpus.index()
    ctx = corpus.pack("Which ocean is the deepest?", budget_tokens=60, model="gpt-4o", k=4)
    assert ctx.tokens <= 60 and ctx.chunks
    assert ctx.chunks[0].source == "ocean.txt"
    assert ctx.to_dict()["chunks"][0]["source"] == "ocean.txt"


def test_memory_index_for_evals():
    texts = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Bananas are yellow."]
    mem = build_memory_index(texts, ids=["fr", "de", "fruit"])
    hits = mem.search("What is the capital of Germany?", k=2)
    assert [h.doc_id for h in hits][0] == "de" and len(hits) == 2
    assert hits[0].score >= hits[1].score
    assert [h[0].doc_id for h in mem.search_many(["yellow fruit", "French capital"], k=1)] == ["fruit", "fr"]


class _NoTokenizer:
    """A counter for gpt-4o's encoding whose tokenizer must not be called."""
    encoding_name, exact, margin = "o200k_base", True, 0.0

    def count(self, text):
        raise AssertionError("packing tokenized a chunk whose count the index stored")

    def planning_tokens(self, n):
        return n


def _topic_corpus(tmp_path):
    """24 one-chunk documents (JSON Lines records: packing merges no two), no two near-duplicates."""
    import json

    docs = tmp_path / "docs"
    docs.mkdir()
    sentences = ["Volcanoes erupt molten rock called lava.", "The Pacific is the deepest ocean.",
                 "Bread is baked from flour, water and yeast; ünïcode — 数据 🙂."]
    for name in ("a", "b"):
        (docs / f"{name}.jsonl").write_text("".join(
            json.dumps({"text": f"{sentences[n % 3]} Note {name}{n}: " + " ".join(f"w{n}x{j}" for j in range(25))})
            + "\n" for n in range(12)))
    return docs


def _without_counts(hits):
    import dataclasses

    return [dataclasses.replace(h, token_counts=None) for h in hits]


def test_the_index_stores_each_chunks_tokens_in_every_encoding_so_packing_needs_no_tokenizer(tmp_path):
    from ragkit.tokens import ENCODINGS, get_encoding

    corpus = Corpus.open(_topic_corpus(tmp_path))
    corpus.index()
    hits = corpus.search("Which ocean is the deepest?", k=20)
    assert len(hits) == 20
    for h in hits:
        assert h.token_counts == {e: len(get_encoding(e).encode_ordinary(h.text)) for e in ENCODINGS}
        assert "token_counts" not in h.to_dict()  # an internal figure, not part of a search result
    stored = pack_hits(hits, 300, _NoTokenizer())
    assert stored == pack_hits(_without_counts(hits), 300, counter_for("gpt-4o"))
    assert 0 < stored.tokens <= 300 and len(stored.chunks) < 20  # the budget, not the hits, set the size


def test_an_index_from_before_stored_counts_packs_by_counting_and_an_update_adds_counts(tmp_path):
    import sqlite3

    docs = _topic_corpus(tmp_path)
    corpus = Corpus.open(docs)
    corpus.index()
    gen = corpus.stats()["generation"]
    corpus.close()
    with sqlite3.connect(docs / ".ragkit" / gen / "chunks.sqlite") as db:  # as an older ragkit wrote it
        db.execute("ALTER TABLE chunks DROP COLUMN counts")
    counter = counter_for("claude-3.5-haiku")  # an estimated encoding: the margin applies either way
    corpus = Corpus.open(docs)
    old_hits = corpus.search("lava", k=20)
    assert all(h.token_counts is None for h in old_hits)
    assert corpus.pack("lava", 300, "claude-3.5-haiku", k=20) == pack_hits(old_hits, 300, counter)

    (docs / "a.jsonl").write_text('{"text": "Lava cools into basalt."}\n')  # b.jsonl's rows are kept as they were
    assert corpus.index().chunks_added > 0
    hits = corpus.search("lava", k=20)
    assert {h.token_counts is None for h in hits} == {True, False}  # new rows counted, old rows as they were
    assert corpus.pack("lava", 300, "claude-3.5-haiku", k=20) == pack_hits(_without_counts(hits), 300, counter)


def test_fingerprints_split_words_exactly_as_the_word_pattern_does():
    """The ASCII fast path (translate + split) must find \\w+'s words, so near-duplicate decisions do not
    depend on which path a text took; non-ASCII texts take the pattern itself."""
    import re

    from ragkit.retrieve import _shingles

    def reference(text):
        w = re.findall(r"\w+", text.lower())
        return frozenset([hash(tuple(w))]) if len(w) < 3 else frozenset(map(hash, zip(w, w[1:], w[2:])))

    rng = random.Random(7)
    alphabet = "abcXYZ019_ -\t\n.,;:!?'\"()[]{}<>/\\|@#$%^&*+=~`é数🙂\u212a"  # Kelvin sign lower()s to ASCII 'k'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert _shingles(text) == reference(text), text
