"""Chunking: structure first, sized in the embedder's own word pieces, never truncated by it."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.chunking import ChunkSettings, Chunker  # noqa: E402
from ragkit.embed import load_piece_tokenizer  # noqa: E402
from ragkit.errors import ConfigError  # noqa: E402
from ragkit.loaders import Document  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_tokenizer():
    """The tokenizer sentence-transformers itself uses for the model (transformers, not ours)."""
    from transformers import AutoTokenizer

    from ragkit.embed import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(None)[1])


def _hard_documents() -> list[Document]:
    rng = random.Random(7)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    long_par = " ".join(rng.choice(words) + ("." if rng.random() < 0.05 else "") for _ in range(3000))
    numbers = " ".join(f"{rng.randint(0, 10**9):,}.{rng.randint(0, 999)}" for _ in range(600))
    cjk = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(1500))
    blob = "https://example.com/" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4000))
    md = "# Title\n\nIntro paragraph.\n\n## Part one\n\n" + long_par + "\n\n## Part two\n\n" + numbers
    docs = [Document("md", "md", md), Document("cjk", "cjk", cjk), Document("blob", "blob", "see " + blob + " here"),
            Document("emoji", "emoji", "🙂 " * 900), Document("mixed", "mixed", "Über straße café — naïve résumé. " * 200)]
    with open(ROOT / "corpora" / "nq-wiki" / "passages.jsonl") as f:
        for i, line in enumerate(f):
            if i >= 200:
                break
            rec = json.loads(line)
            docs.append(Document(rec["id"], "nq", rec["text"], {"title": rec["title"]}))
    docs.append(Document("long-title", "lt", long_par[:5000], {"title": "A very long title " * 40}))
    return docs


def test_no_default_chunk_is_truncated_by_the_embedder(hf_tokenizer):
    tok = load_piece_tokenizer()
    assert tok.max_tokens == 256 and tok.special_tokens == 2
    chunks = Chunker(tok).split_many(_hard_documents())
    assert len(chunks) > 250
    assert any(c.title for c in chunks)
    # what the model reads is title + text: that must fit whole
    lengths = [len(ids) for ids in hf_tokenizer([c.embed_text for c in chunks], add_special_tokens=True,
                                                 truncation=False)["input_ids"]]
    assert max(lengths) <= 256, max(lengths)
    assert max(lengths) > 200  # the hard documents do fill the window


def test_long_chunk_setting_is_refused():
    with pytest.raises(ConfigError, match="silently truncate"):
        Chunker(load_piece_tokenizer(), ChunkSettings(chunk_tokens=300))


def test_spans_positions_and_coverage():
    docs = _hard_documents()[:5]
    chunks = Chunker(load_piece_tokenizer(), ChunkSettings(chunk_tokens=64, overlap_tokens=16)).split_many(docs)
    by_doc: dict = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    for doc in docs:
        cs = by_doc[doc.id]
        assert [c.position for c in cs] == list(range(len(cs)))
        covered = bytearray(len(doc.text))
        for c in cs:
            assert doc.text[c.start_char:c.end_char] == c.text
            assert c.tokens <= 64
            covered[c.start_char:c.end_char] = b"\x01" * (c.end_char - c.start_char)
        # every non-space character is in some chunk: nothing is lost between chunks
        assert all(covered[i] or doc.text[i].isspace() for i in range(len(doc.text)))


def test_structure_first_headings_and_paragraphs():
    tok = load_piece_tokenizer()
    text = ("# Install\n\nRun pip install ragkit.\n\nThen run the tests.\n\n"
            "# Usage\n\nCall ragkit index on a folder.\n")
    chunks = Chunker(tok).split(Document("d", "d", text))
    # two sections -> two chunks, each starting at its heading; paragraphs of a section stay together
    assert [c.text.split("\n")[0] for c in chunks] == ["# Install", "# Usage"]
    assert "Then run the tests." in chunks[0].text
    rst = "Install\n=======\n\nStep one.\n\nUsage\n-----\n\nStep two.\n"
    assert [c.text.split("\n")[0] for c in Chunker(tok).split(Document("r", "r", rst))] == ["Install", "Usage"]


def test_paragraph_that_fits_is_not_split_and_long_one_splits_at_sentences():
    tok = load_piece_tokenizer()
    sentences = [f"Sentence number {i} talks about topic {i} in some detail." for i in range(60)]
    text = "Short opening paragraph.\n\n" + " ".join(sentences)
    chunks = Chunker(tok, ChunkSettings(chunk_tokens=60, overlap_tokens=15)).split(Document("d", "d", text))
    assert chunks[0].text.startswith("Short opening paragraph.")
    for c in chunks[1:]:
        assert c.text.startswith("Sentence number") and c.text.endswith("detail.")  # cut between sentences
    # consecutive chunks inside the long paragraph overlap by whole sentences, at most 15 pieces
    overlaps = [a.end_char - b.start_char for a, b in zip(chunks[1:], chunks[2:])]
    assert all(o > 0 for o in overlaps)
    for a, b in zip(chunks[1:], chunks[2:]):
        shared = a.text[b.start_char - a.start_char:]
        assert tok.count(shared) <= 15


_FINGERPRINT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from test_chunking import _hard_documents
from ragkit.chunking import Chunker
from ragkit.embed import load_piece_tokenizer
chunks = Chunker(load_piece_tokenizer()).split_many(_hard_documents())
print(hashlib.sha256(json.dumps([[c.doc_id, c.start_char, c.end_char, c.tokens, c.text_hash] for c in chunks])
                     .encode()).hexdigest(), len(chunks))
"""


def test_same_chunks_in_every_process_whatever_the_hash_seed():
    """The index reuses chunks across runs by content hash: a new process must cut exactly the same
    chunks. Two processes with different string-hash seeds (set iteration order differs) must agree."""
    import subprocess
    import sys

    tests_dir = str(Path(__file__).parent)
    outs = [subprocess.run([sys.executable, "-c", _FINGERPRINT, tests_dir], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, timeout=300) for seed in ("1", "2")]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert outs[0].stdout == outs[1].stdout and int(outs[0].stdout.split()[1]) > 10


def test_huge_single_line_text_is_chunked_in_bounded_memory():
    import tracemalloc

    rng = random.Random(2)
    words = "river bank museum history science quick brown fox".split()
    text = " ".join(rng.choice(words) for _ in range(150_000))  # ~1 MB, no newline, no sentence end
    tok = load_piece_tokenizer()
    tracemalloc.start()
    try:
        chunks = Chunker(tok).split(Document("big", "big", text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(c.tokens <= 240 for c in chunks) and len(chunks) > 500
    assert text[chunks[-1].start_char:chunks[-1].end_char] == chunks[-1].text
    assert peak < 12 * len(text), peak / len(text)  # chunk texts + bookkeeping, not all token offsets at once
