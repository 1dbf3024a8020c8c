"""The IVF-PQ tier with real FAISS: chosen by size, recall measured against exact search at build,
incremental updates on the trained index, nprobe, on-disk inverted lists across processes and the
atomic generation switch. Vectors are low-rank plus noise (like real embeddings, unlike isotropic noise,
on which PQ finds nothing) and few (3,000), so each build takes seconds."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ragkit import store
from ragkit.errors import IndexError_

ROOT = Path(__file__).resolve().parents[1]
N, DIM, PER_FILE = 3000, 384, 100


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(42).normal(size=(16, DIM))
    v = rng.normal(size=(n, 16)) @ basis + 0.3 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("float32")


def _chunks(rel: str, n: int, start: int = 0) -> list[store.NewChunk]:
    return [store.NewChunk(rel, f"{rel}#{i}", rel, i, 0, 1, 1, f"{rel}-{start + i}", f"text {i}") for i in range(n)]


def _near_duplicates(n: int, seed: int = 0) -> np.ndarray:
    """Mixtures of two of 60 base vectors (weights 0.3-0.7) plus a little noise, as bench_ivfpq.py makes
    its 1M: dense near-duplicates, whose order PQ codes cannot tell apart."""
    rng = np.random.default_rng(seed)
    base = _vectors(60, seed=99)
    i1, i2, w = rng.integers(0, 60, n), rng.integers(0, 60, n), rng.uniform(0.3, 0.7, (n, 1))
    v = w * base[i1] + (1 - w) * base[i2] + rng.normal(0, 0.01, (n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("float32")


def _cache(index_dir: Path, chunks: list[store.NewChunk], vecs: np.ndarray) -> None:
    """The embedding cache a real build leaves beside the index (model "m": the key of Settings("m"))."""
    index_dir.mkdir(parents=True, exist_ok=True)
    cache = store.EmbeddingCache(index_dir / "embcache.sqlite", "m", DIM)
    cache.put_many([c.text_hash for c in chunks], vecs)
    cache.close()


def _build(index_dir: Path, vecs: np.ndarray, **kw) -> dict:
    files = [f"f{j:03d}.txt" for j in range(len(vecs) // PER_FILE)]
    chunks = [c for rel in files for c in _chunks(rel, PER_FILE)]
    _cache(index_dir, chunks, vecs)
    return store.write_generation(index_dir, None, store.Settings("m", DIM, {}), remove_rels=[],
                                  file_records=[store.FileRecord(rel, 1, 1, rel, PER_FILE) for rel in files],
                                  new_chunks=chunks, new_vectors=vecs, ivfpq_threshold=1000, **kw)


def facts_corpus(docs: Path, n: int, seed: int, **open_kw):
    """(Corpus, chunks) of n one-line facts in docs/facts.jsonl, their vectors already in the embedding
    cache by content hash (as an unchanged chunk's would be), so a build of them takes no model time."""
    from ragkit.chunking import Chunker
    from ragkit.corpus import Corpus
    from ragkit.embed import load_piece_tokenizer
    from ragkit.loaders import load_documents

    docs.mkdir()
    with open(docs / "facts.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"d{i}", "text": f"Fact number {i} is about topic {i % 37}."}) + "\n")
    chunks = Chunker(load_piece_tokenizer()).split_many(load_documents(docs))
    corpus = Corpus.open(docs, **open_kw)
    corpus.index_dir.mkdir(parents=True)
    cache = store.EmbeddingCache(corpus.index_dir / "embcache.sqlite", corpus.backend.cache_key(corpus.embed_model), DIM)
    cache.put_many([c.text_hash for c in chunks], _vectors(len(chunks), seed=seed))
    cache.close()
    return corpus, chunks


def _recall(gen, queries, truth, nprobe=None, rerank=None) -> float:
    got = gen.search(queries, 10, nprobe=nprobe, rerank=rerank)
    return float(np.mean([len(set(t) & {i for i, _ in g}) / 10 for t, g in zip(truth, got)]))


def _shared_index(tmp_path_factory, vecs: np.ndarray) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("ivf") / "idx"
    _build(d, vecs)
    return d, vecs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(index folder, vectors): one IVF-PQ index shared by the read-only tests (copy it to change it)."""
    return _shared_index(tmp_path_factory, _vectors(N))


def test_kind_is_chosen_by_size_with_hysteresis(built, tmp_path):
    assert store.choose_kind(999, None, 100, 1000) == "hnsw"
    assert store.choose_kind(1000, None, 100, 1000) == "ivfpq"
    assert store.choose_kind(99, None, 100, 1000) == "flat"
    assert store.choose_kind(600, "ivfpq", 100, 1000) == "ivfpq"   # stays until half the threshold
    assert store.choose_kind(500, "ivfpq", 100, 1000) == "hnsw"
    small = store.write_generation(tmp_path / "small", None, store.Settings("m", DIM, {}), remove_rels=[],
                                   file_records=[], new_chunks=_chunks("a.txt", 500), new_vectors=_vectors(500),
                                   ivfpq_threshold=1000)
    assert small["index_type"] == "flat" and small["ivfpq"] is None
    gen = store.open_generation(built[0])
    assert gen.kind == "ivfpq" and gen.index.ntotal == N


def test_manifest_records_nlist_m_nprobe_and_measured_recall(built):
    d, vecs = built
    gen = store.open_generation(d)
    ivf = gen.manifest["ivfpq"]
    assert ivf["nlist"] == store.ivf_nlist(N) == 64 and ivf["m"] == store.IVFPQ_M and ivf["nbits"] == 8
    assert ivf["trained_at"] == N and ivf["trained_in"] == gen.name and ivf["recall_queries"] == 200
    recalls = {int(k): v for k, v in ivf["recall_at_10"].items()}
    assert sorted(recalls) == [1, 2, 4, 8, 16, 32, 64]          # nprobe candidates up to nlist
    assert ivf["nprobe"] == store.choose_nprobe(recalls) == gen.nprobe
    # the recorded figure is a real measurement: recomputed against exact search on other stored vectors
    queries = vecs[1::15][:200]
    import faiss

    _, exact = faiss.knn(queries, vecs, 10, faiss.METRIC_INNER_PRODUCT)
    assert abs(_recall(gen, queries, exact) - recalls[ivf["nprobe"]]) < 0.08
    assert 0.5 < recalls[ivf["nprobe"]] <= 1.0


def test_nprobe_raises_recall_monotonically(built):
    import faiss

    d, vecs = built
    gen = store.open_generation(d)
    queries = vecs[7::15][:200]
    _, exact = faiss.knn(queries, vecs, 10, faiss.METRIC_INNER_PRODUCT)
    recalls = [_recall(gen, queries, exact, nprobe) for nprobe in (1, 4, 16, 64)]
    assert recalls == sorted(recalls) and recalls[-1] - recalls[0] > 0.1, recalls
    stored = {int(k): v for k, v in gen.manifest["ivfpq"]["recall_at_10"].items()}
    assert list(stored.values()) == sorted(stored.values())


def test_exact_duplicate_query_returns_its_chunk(built):
    d, vecs = built
    gen = store.open_generation(d)
    ids = list(range(0, N, 30))
    hits = gen.search(vecs[ids], 10)
    found = sum(i in {h for h, _ in row} for i, row in zip(ids, hits))
    assert found >= 0.97 * len(ids)
    rows = gen.chunks([hits[0][0][0]])
    assert rows and next(iter(rows.values())).source.startswith("f0")


@pytest.fixture(scope="module")
def near(tmp_path_factory):
    """(index folder, vectors) over near-duplicate vectors, the case PQ codes alone order badly."""
    return _shared_index(tmp_path_factory, _near_duplicates(N))


def test_rerank_raises_recall_over_pq_alone_on_near_duplicates(near):
    import faiss

    d, vecs = near
    gen = store.open_generation(d)
    queries = _near_duplicates(200, seed=5)                     # new vectors, not stored ones
    _, exact = faiss.knn(queries, vecs, 10, faiss.METRIC_INNER_PRODUCT)
    reranked = _recall(gen, queries, exact, nprobe=64)          # every list scanned: PQ order is the only loss
    assert reranked >= 0.98, reranked
    pq_alone = _recall(gen, queries, exact, nprobe=64, rerank=0)
    assert pq_alone <= 0.9 and reranked - pq_alone >= 0.1, (pq_alone, reranked)
    assert _recall(gen, queries, exact) >= 0.9                   # at the measured default nprobe too
    # the scores returned are the exact inner products, not PQ's estimates
    (hits,) = gen.search(queries[:1], 10, nprobe=64)
    assert np.allclose([s for _, s in hits], vecs[[i for i, _ in hits]] @ queries[0], atol=1e-5)


def test_rerank_over_every_vector_orders_exactly_as_exact_search(built):
    import faiss

    d, vecs = built
    gen = store.open_generation(d)
    queries = _vectors(50, seed=11)
    scores, exact = faiss.knn(queries, vecs, 10, faiss.METRIC_INNER_PRODUCT)
    got = gen.search(queries, 10, nprobe=64, rerank=N)          # the pool holds every stored vector
    assert [[i for i, _ in row] for row in got] == exact.tolist()
    assert np.allclose([[s for _, s in row] for row in got], scores, atol=1e-5)


def test_manifest_recall_is_the_reranked_one_searches_see(near):
    import faiss

    d, vecs = near
    gen = store.open_generation(d)
    ivf = gen.manifest["ivfpq"]
    assert ivf["rerank_pool"] == store.rerank_pool(10) == store.RERANK_POOL
    recalls = {int(k): v for k, v in ivf["recall_at_10"].items()}
    pq = {int(k): v for k, v in ivf["pq_recall_at_10"].items()}
    assert ivf["nprobe"] == store.choose_nprobe(recalls)
    assert recalls[64] - pq[64] >= 0.1, (recalls, pq)           # recorded: the re-ranked figure, not PQ's
    queries = vecs[1::15][:200]                                 # other stored vectors than the build's sample
    _, exact = faiss.knn(queries, vecs, 10, faiss.METRIC_INNER_PRODUCT)
    for nprobe in (1, 4, 64):
        assert abs(_recall(gen, queries, exact, nprobe) - recalls[nprobe]) < 0.05, nprobe
        assert abs(_recall(gen, queries, exact, nprobe, rerank=0) - pq[nprobe]) < 0.05, nprobe


def test_missing_cache_vectors_fall_back_to_pq_order_with_one_warning(built, tmp_path, capsys, monkeypatch):
    import sqlite3

    d = tmp_path / "idx"
    shutil.copytree(built[0], d)
    vecs = built[1]
    monkeypatch.setattr(store, "_fallback_warned", threading.Lock())   # as in a fresh process
    with sqlite3.connect(d / "embcache.sqlite") as db:           # f000.txt's vectors gone from the cache
        db.execute("DELETE FROM vectors WHERE hash LIKE 'f000.txt-%'")
    gen = store.open_generation(d)
    own = vecs[:20]                                             # each one's pool holds itself: a missing vector
    assert gen.search(own, 10, nprobe=64) == gen.search(own, 10, nprobe=64, rerank=0)
    far = _vectors(20, seed=13)
    far_pools = gen.search(far, store.RERANK_POOL, nprobe=64, rerank=0)
    whole = [q for q, row in zip(far, far_pools) if all(i >= PER_FILE for i, _ in row)]
    assert whole                                                # queries whose candidates all have vectors
    exact_scores = [s for _, s in gen.search(np.stack(whole[:1]), 10, nprobe=64)[0]]
    assert exact_scores == sorted(exact_scores, reverse=True)
    assert np.allclose(exact_scores, np.sort(vecs[PER_FILE:] @ whole[0])[::-1][:10], atol=1e-5)
    (d / "embcache.sqlite").unlink()                            # the whole cache gone: every query falls back
    gen2 = store.open_generation(d)
    pq_order = gen2.search(own, 10, rerank=0)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:                         # threads sharing the generation, as a Session's
        assert all(r == pq_order for r in pool.map(lambda _: gen2.search(own, 10), range(8)))
    assert not (d / "embcache.sqlite").exists()                 # a search never creates the cache
    err = capsys.readouterr().err
    assert err.count("ragkit: warning:") == 1 and "embedding cache" in err and "--rebuild" in err, err


def _change_file(index_dir: Path, rel: str, new_vecs: np.ndarray, start: int, **kw) -> dict:
    old = store.open_generation(index_dir)
    chunks = _chunks(rel, len(new_vecs), start)
    _cache(index_dir, chunks, new_vecs)
    return store.write_generation(index_dir, old, store.Settings("m", DIM, {}), remove_rels=[rel],
                                  file_records=[store.FileRecord(rel, 2, 2, rel + "v2", len(new_vecs))],
                                  new_chunks=chunks, new_vectors=new_vecs, ivfpq_threshold=1000, **kw)


def _centroids(gen) -> np.ndarray:
    import faiss

    ivf = faiss.extract_index_ivf(gen.index)
    return faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)


def test_changed_file_is_updated_in_place_without_retraining(built, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(built[0], d)
    before = store.open_generation(d)
    old_ids = [r[0] for r in before.db.execute("SELECT id FROM chunks WHERE rel='f003.txt'")]
    new_vecs = _vectors(PER_FILE, seed=7)
    m = _change_file(d, "f003.txt", new_vecs, start=N)
    after = store.open_generation(d)
    assert after.name != before.name and m["index_type"] == "ivfpq"
    assert m["ivfpq"]["trained_in"] == before.name and m["ivfpq"]["trained_at"] == N   # not retrained
    assert np.array_equal(_centroids(after), _centroids(before))
    assert after.index.ntotal == m["chunks"] == N and m["tombstones"] == 0    # removed, not tombstoned
    new_ids = [r[0] for r in after.db.execute("SELECT id FROM chunks WHERE rel='f003.txt'")]
    assert min(new_ids) >= N and not set(new_ids) & set(old_ids)
    hits = after.search(built[1][old_ids], 10, nprobe=64)
    assert not {i for row in hits for i, _ in row} & set(old_ids)           # the old chunks are gone
    hits = after.search(new_vecs, 10)
    assert sum(i in {h for h, _ in row} for i, row in zip(new_ids, hits)) >= 0.97 * PER_FILE


@pytest.mark.slow
def test_growth_past_the_retrain_factor_retrains_from_the_embedding_cache(tmp_path):
    d = tmp_path / "idx"
    first = _vectors(1000, seed=1)
    _build(d, first)
    more = _vectors(3000, seed=2)
    cache = {f"f{j // PER_FILE:03d}.txt-{j % PER_FILE}": v for j, v in enumerate(first)}
    old = store.open_generation(d)
    with pytest.raises(IndexError_, match="--rebuild") as failed:   # no cache to read old vectors from
        store.write_generation(d, old, store.Settings("m", DIM, {}), remove_rels=[], file_records=[],
                               new_chunks=_chunks("new.txt", 3000), new_vectors=more, ivfpq_threshold=1000)
    # the failed build's chunk table is closed (rolled back) at once, though its frames are still
    # referenced: left to the garbage collector, its rollback deleted the journal of the next build
    # in the same temp folder mid-write ("disk I/O error")
    assert failed.traceback and not list(d.glob("tmp-*/chunks.sqlite-journal"))
    m = store.write_generation(d, old, store.Settings("m", DIM, {}), remove_rels=[], file_records=[],
                               new_chunks=_chunks("new.txt", 3000), new_vectors=more, ivfpq_threshold=1000,
                               cache_vectors=lambda hashes: {h: cache[h] for h in hashes if h in cache})
    assert m["ivfpq"]["trained_at"] == 4000 and m["ivfpq"]["trained_in"] == m["generation"]
    gen = store.open_generation(d)
    hits = gen.search(first[:50], 10)
    assert sum(i in {h for h, _ in row} for i, row in zip(range(50), hits)) >= 48


BUILD_ONDISK = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_ivfpq import _build, _vectors
from pathlib import Path
m = _build(Path({d!r}), _vectors({n}), ivf_ondisk=True)
print("MANIFEST", m["ivfpq"]["ondisk"], m["generation"])
"""


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_ondisk_lists_survive_process_exit_and_the_generation_switch(tmp_path):
    d = tmp_path / "idx"
    res = subprocess.run([sys.executable, "-c", BUILD_ONDISK.format(tests=str(ROOT / "tests"), d=str(d), n=N)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == ["MANIFEST True g000001"]   # FAISS's "resizing" lines kept off stdout
    g1 = store.open_generation(d)
    assert (g1.path / "lists.ivfdata").stat().st_size > N * store.IVFPQ_M
    assert not list(d.glob("tmp-*"))
    vecs = _vectors(N)
    hits = g1.search(vecs[:30], 10)
    assert sum(i in {h for h, _ in row} for i, row in zip(range(30), hits)) >= 29
    old_lists = _sha(g1.path / "lists.ivfdata")
    m = _change_file(d, "f000.txt", _vectors(PER_FILE, seed=9), start=N)
    assert m["ivfpq"]["ondisk"] and m["generation"] == "g000002"
    g2 = store.open_generation(d)
    assert (g2.path / "lists.ivfdata").exists()
    assert _sha(g1.path / "lists.ivfdata") == old_lists      # the old generation was not written in place
    assert g1.search(vecs[:1], 1)[0][0][0] == 0               # and still serves what it served
    assert 0 not in {i for i, _ in g2.search(vecs[:1], 10)[0]}  # the new one no longer has chunk 0
    assert json.loads((d / "CURRENT").read_text())["generation"] == "g000002"


def _ivfpq_corpus(tmp_path: Path, monkeypatch) -> Path:
    """A folder of 1,200 one-line facts whose embedding cache is pre-filled (by content hash, as an
    unchanged chunk's would be), so `ragkit index` needs no model time; IVF-PQ from 1,000 chunks."""
    docs = tmp_path / "docs"
    _, chunks = facts_corpus(docs, 1200, seed=3)
    assert len(chunks) == 1200
    monkeypatch.setattr(store, "IVFPQ_THRESHOLD", 1000)
    return docs


@pytest.mark.slow
def test_ragkit_index_prints_the_measured_recall_and_search_takes_nprobe(tmp_path, monkeypatch):
    """Through the real CLI: vectors from the pre-filled cache; queries use the real model."""
    from click.testing import CliRunner

    from ragkit.cli import main

    docs = _ivfpq_corpus(tmp_path, monkeypatch)
    runner = CliRunner()
    res = runner.invoke(main, ["index", str(docs), "-q"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "(0 embedded, 1200 from cache); ivfpq index g000001" in res.output
    assert "recall@10 " in res.output and "vs exact search at nprobe" in res.output
    assert f"top {store.RERANK_POOL} re-ranked exactly" in res.output
    (docs / "more.jsonl").write_text(json.dumps({"id": "x", "text": "Volcanoes erupt lava."}) + "\n")
    res = runner.invoke(main, ["index", str(docs), "--json", "--nprobe", "8"])
    report = json.loads(res.output)
    assert report["index_type"] == "ivfpq" and report["nprobe"] == 8 and report["chunks_embedded"] == 1
    assert 0 < report["recall_at_10"] <= 1 and report["recall_measured_in"] == "g000001"
    assert report["rerank_pool"] == store.RERANK_POOL
    res = runner.invoke(main, ["search", str(docs), "volcano lava", "--nprobe", "64", "--json", "-k", "1"])
    assert res.exit_code == 0 and json.loads(res.output)["hits"][0]["doc_id"].endswith("#x")
    assert runner.invoke(main, ["search", str(docs), "lava", "--nprobe", "0"]).exit_code == 2
    res = runner.invoke(main, ["search", str(docs), "volcano lava", "--rerank", "0", "--json", "-k", "3"])
    pq_hits = json.loads(res.output)["hits"]                  # PQ order and PQ's estimated scores
    res = runner.invoke(main, ["search", str(docs), "volcano lava", "--rerank", "1200", "--json", "-k", "3"])
    exact_hits = json.loads(res.output)["hits"]               # every chunk re-scored: exact cosine
    assert exact_hits[0]["doc_id"].endswith("#x") and exact_hits[0]["score"] != pq_hits[0]["score"]
    assert runner.invoke(main, ["search", str(docs), "lava", "--rerank", "-1"]).exit_code == 2


# On-disk lists, read beside index.faiss: never through FAISS's IO_FLAG_ONDISK_SAME_DIR, whose printf
# ("updating ondisk filename ...") reached the process's stdout at exit, after `search --json` output.
ONDISK_N = 2000
SEARCH_JSON = """
import json, sys
import numpy as np
from pathlib import Path
from ragkit import store
gen = store.open_generation(Path(sys.argv[1]))
print(json.dumps(gen.search(np.load(sys.argv[2]), 5)))
"""


@pytest.fixture(scope="module")
def ondisk(tmp_path_factory):
    """(index folder, vectors): a small IVF-PQ index with on-disk lists, shared (copy it to change it)."""
    d = tmp_path_factory.mktemp("ondisk") / "idx"
    vecs = _vectors(ONDISK_N)
    assert _build(d, vecs, ivf_ondisk=True)["ivfpq"]["ondisk"]
    return d, vecs


def _search_in_subprocess(index_dir: Path, queries: np.ndarray, tmp_path: Path) -> subprocess.CompletedProcess:
    np.save(tmp_path / "queries.npy", queries)
    return subprocess.run([sys.executable, "-c", SEARCH_JSON, str(index_dir), str(tmp_path / "queries.npy")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _c_stdout_flushed() -> None:
    """What C code printf'd but C's stdio still buffers goes to fd 1 now (else only at process exit)."""
    import ctypes

    ctypes.CDLL(None).fflush(None)


def test_a_process_searching_an_ondisk_index_prints_only_its_own_json(ondisk, tmp_path):
    d, vecs = ondisk
    res = _search_in_subprocess(d, vecs[:5], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    hits = json.loads(res.stdout)                                # the whole stdout is one JSON document
    assert [row[0][0] for row in hits] == [0, 1, 2, 3, 4]
    assert "IO_FLAG_ONDISK_SAME_DIR" not in res.stdout + res.stderr


def test_ragkit_search_json_on_an_ondisk_index_is_exactly_json(tmp_path, monkeypatch):
    """`ragkit search --json` in its own process (C's stdout buffer is written out at exit, after the JSON)."""
    from click.testing import CliRunner

    from ragkit.cli import main

    docs = _ivfpq_corpus(tmp_path, monkeypatch)
    monkeypatch.setattr(store, "ONDISK_RAM_FRACTION", 0)        # the lists go to disk whatever the RAM
    res = CliRunner().invoke(main, ["index", str(docs), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["index_type"] == "ivfpq", res.output
    assert list(docs.glob(f".ragkit/g*/{store.LISTS_FILE}"))
    res = subprocess.run([sys.executable, "-m", "ragkit.cli", "search", str(docs), "fact about topic 3", "--json"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["hits"]                      # the whole stdout is one JSON document


def test_a_copied_or_moved_index_folder_opens_its_own_lists_silently(ondisk, tmp_path, capfd):
    d = tmp_path / "idx"
    vecs = _vectors(1000, seed=5)
    _build(d, vecs, ivf_ondisk=True)
    want = store.open_generation(d).search(vecs[:20], 10)
    shutil.copytree(d, tmp_path / "copied")                     # cp -r
    os.rename(d, tmp_path / "moved")                            # mv: the path index.faiss records is gone
    for where in ("copied", "moved"):
        assert store.open_generation(tmp_path / where).search(vecs[:20], 10) == want, where
    shutil.copytree(ondisk[0], d)                               # another index's lists at the recorded path
    assert store.open_generation(tmp_path / "copied").search(vecs[:20], 10) == want
    _c_stdout_flushed()
    assert capfd.readouterr().out == ""


def test_index_faiss_records_where_the_lists_are_after_the_rename(ondisk):
    """Plain FAISS (no flags) opens a generation's index.faiss: the recorded path is not the temp folder's."""
    import faiss

    d, vecs = ondisk
    gen = store.open_generation(d)
    index = faiss.read_index(str(gen.path / "index.faiss"))
    assert faiss.downcast_InvertedLists(index.invlists).filename == str((gen.path / store.LISTS_FILE).absolute())
    params = faiss.SearchParametersIVF()
    params.nprobe = 8
    assert list(index.search(vecs[:5], 1, params=params)[1][:, 0]) == [0, 1, 2, 3, 4]


def test_truncated_lists_are_reported_damaged_not_a_crash(ondisk, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(ondisk[0], d)
    lists = d / store.read_current(d) / store.LISTS_FILE
    os.truncate(lists, lists.stat().st_size // 4)               # a copy cut short (disk full, interrupted cp)
    res = _search_in_subprocess(d, ondisk[1][:5], tmp_path)      # mapping past the end: SIGBUS on search
    assert res.returncode == 1 and res.stdout == "", (res.returncode, res.stderr[-2000:])
    assert "is damaged" in res.stderr and "lists.ivfdata has" in res.stderr and "--rebuild" in res.stderr


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps (Linux)")
def test_a_reader_maps_the_generations_lists_without_write_access(ondisk):
    """Read-only: a search never writes there, and an index whose files the user cannot write still opens."""
    gen = store.open_generation(ondisk[0])
    lists = str((gen.path / store.LISTS_FILE).resolve())
    modes = [line.split()[1] for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(lists)]
    assert modes and all(m[1] == "-" for m in modes), modes
