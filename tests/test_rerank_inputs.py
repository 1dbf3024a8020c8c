"""IVF-PQ searches and their exact re-rank under hostile input: numbers that are not whole or too large,
an embedding cache with damaged rows or locked by another process, and a --rebuild killed half-way
(real FAISS, real SQLite, the real model for the rebuild)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ragkit import store
from ragkit.corpus import Corpus
from ragkit.errors import InputError
from test_ivfpq import DIM, PER_FILE, _build, _vectors, facts_corpus

ROOT = Path(__file__).resolve().parents[1]
N = 1000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(index folder, vectors): a 1,000-vector IVF-PQ index with its embedding cache; copy it to change it."""
    d = tmp_path_factory.mktemp("rerank") / "idx"
    vecs = _vectors(N, seed=21)
    _build(d, vecs)
    return d, vecs


def test_nprobe_k_and_rerank_must_be_whole_numbers_and_numpy_integers_are(tmp_path):
    (tmp_path / "a.txt").write_text("Volcanoes erupt lava.")
    corpus = Corpus.open(tmp_path)
    for kw in (dict(nprobe="3"), dict(nprobe=2.5), dict(nprobe=True), dict(nprobe=0), dict(rerank=-1),
               dict(rerank="5"), dict(k="3"), dict(k=None), dict(k=1.5)):
        with pytest.raises(InputError, match="must be a whole number"):
            corpus.search("lava", **kw)
    with pytest.raises(InputError, match="nprobe must be a whole number, 1 or more"):
        Corpus.open(tmp_path, nprobe="8")
    opened = Corpus.open(tmp_path, nprobe=np.int64(8), rerank=np.int32(50))
    assert (opened.nprobe, opened.rerank) == (8, 50) and type(opened.nprobe) is int


@pytest.mark.parametrize("kw", [dict(rerank=-1), dict(rerank="5"), dict(nprobe=0), dict(nprobe=True)])
def test_a_session_refuses_a_bad_nprobe_or_rerank_when_made_not_at_its_first_question(tmp_path, kw):
    from ragkit.answer import Session

    with pytest.raises(InputError, match="must be a whole number"):
        Session(tmp_path, model="gpt-4o-mini", ledger=False, **kw)


def test_an_nprobe_past_the_number_of_lists_scans_them_all(small, tmp_path):
    d, vecs = small
    gen = store.open_generation(d)
    nlist = gen.manifest["ivfpq"]["nlist"]
    every = gen.search(vecs[:5], 10, nprobe=nlist)
    assert gen.search(vecs[:5], 10, nprobe=10 ** 23) == every    # a size_t overflow in FAISS before
    m = store.write_generation(d, gen, store.Settings("m", DIM, {}), remove_rels=[], file_records=[], new_chunks=[],
                               new_vectors=np.zeros((0, DIM), "float32"), ivfpq_threshold=N, nprobe=10 ** 23)
    assert m["ivfpq"]["nprobe"] == nlist                     # stored as what it means: every list
    assert store.open_generation(d).search(vecs[:5], 10) == every


@pytest.mark.parametrize("damage", ["x'00112233445566'", "'text'", "NULL", "zeroblob(12)", "nan"])
def test_a_damaged_cache_row_reads_as_missing_not_as_a_traceback(small, tmp_path, damage, monkeypatch, capsys):
    import shutil

    d = tmp_path / "idx"
    shutil.copytree(small[0], d)
    vecs = small[1]
    with sqlite3.connect(d / "embcache.sqlite") as db:           # f000.txt's rows damaged in place
        if damage == "nan":
            db.execute("UPDATE vectors SET vec=? WHERE hash LIKE 'f000.txt-%'", [np.full(DIM, np.nan, "float32").tobytes()])
        else:
            db.execute(f"UPDATE vectors SET vec={damage} WHERE hash LIKE 'f000.txt-%'")
    cache = store.EmbeddingCache(d / "embcache.sqlite", "m", DIM)   # what an index run reads
    got = cache.get_many([f"f000.txt-{i}" for i in range(3)] + ["f001.txt-0"])
    cache.close()
    assert list(got) == ["f001.txt-0"] and np.allclose(got["f001.txt-0"], vecs[PER_FILE])
    monkeypatch.setattr(store, "_fallback_warned", threading.Lock())
    gen = store.open_generation(d)
    own = vecs[:5]                                              # their pools hold damaged rows: PQ order kept
    hits = gen.search(own, 10, nprobe=64)
    assert hits == gen.search(own, 10, nprobe=64, rerank=0)
    assert all(np.isfinite(s) for row in hits for _, s in row)
    assert capsys.readouterr().err.count("ragkit: warning:") == 1


LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("DELETE FROM vectors WHERE 0")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_cache_locked_by_another_process_falls_back_at_once_in_every_thread(small, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "idx"
    shutil.copytree(small[0], d)
    vecs = small[1]
    pq = store.open_generation(d).search(vecs[:3], 10, rerank=0)
    monkeypatch.setattr(store, "_fallback_warned", threading.Lock())
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(d / "embcache.sqlite")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        gen = store.open_generation(d)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:                     # a Session's threads sharing the generation
            results = list(pool.map(lambda _: gen.search(vecs[:3], 10), range(8)))
        elapsed = time.perf_counter() - t0
    finally:
        holder.kill()
        holder.wait()
    assert all(r == pq for r in results)
    assert elapsed < 4, elapsed                                 # was 5 s per search, one thread after another
    assert store.open_generation(d).search(vecs[:3], 10) != pq  # unlocked: re-ranked again


def test_a_killed_rebuild_leaves_the_serving_index_its_reranking_vectors(tmp_path):
    """--rebuild deleted the embedding cache before embedding again: the generation still serving (until
    the swap, and for good once the rebuild is killed) lost the vectors its exact re-rank reads."""
    docs = tmp_path / "docs"
    corpus, chunks = facts_corpus(docs, 400, seed=4, ivfpq_threshold=300)
    assert corpus.index().index_type == "ivfpq"
    code = ("import sys; from ragkit.corpus import Corpus; "
            "Corpus.open(sys.argv[1], ivfpq_threshold=300, rebuild=True).index(rebuild=True)")
    env = {**os.environ, "RAGKIT_CRASH_AT": "after_embed_group", "RAGKIT_EMBED_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, str(docs)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    gen = store.open_generation(corpus.index_dir)               # still the first generation, serving
    assert gen.name == "g000001"
    ids = list(range(len(chunks)))
    assert len(gen.exact_vectors(ids)) == len(chunks)           # every re-rank vector is still there
