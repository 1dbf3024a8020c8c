"""The index folder with real FAISS and the real model: incremental updates, kill -9, two writers,
settings mismatch, HNSW recall against exact search."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit import store  # noqa: E402
from ragkit.corpus import Corpus  # noqa: E402
from ragkit.errors import IndexError_  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(chunk_tokens=48, overlap_tokens=8)  # several chunks per file, cheap to embed

TOPICS = {
    "volcano.txt": ["Volcanoes erupt molten rock called lava.", "Mount Etna in Sicily is very active.",
                    "Ash clouds can ground aircraft for days."],
    "ocean.txt": ["The Pacific is the deepest ocean.", "The Mariana Trench reaches eleven kilometres.",
                  "Coral reefs grow in warm shallow water."],
    "bread.md": ["# Bread\n\nBread is baked from flour, water and yeast.", "Sourdough uses a wild starter culture.",
                 "Baguettes are long thin French loaves."],
}


def _write(folder: Path, name: str, paragraphs: list[str]) -> None:
    (folder / name).write_text("\n\n".join(p + " " + " ".join(f"detail{i}" for i in range(12)) for p in paragraphs))


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, paras in TOPICS.items():
        _write(folder, name, paras)
    return folder


def _sources(corpus, query, k=20):
    return [h.source for h in corpus.search(query, k)]


def test_incremental_add_change_delete(docs):
    corpus = Corpus.open(docs, **SMALL)
    first = corpus.index()
    assert (first.files_added, first.files_changed, first.files_removed) == (3, 0, 0)
    assert first.chunks_embedded == first.chunks_total == first.chunks_added >= 6
    assert first.index_type == "flat"

    again = corpus.index()
    assert (again.files_added, again.files_changed, again.files_removed, again.files_unchanged) == (0, 0, 0, 3)
    assert again.chunks_embedded == 0 and again.generation == first.generation  # nothing rewritten

    _write(docs, "python.txt", ["Python is a programming language.", "Guido van Rossum created Python."])
    added = corpus.index()
    assert (added.files_added, added.files_changed, added.files_removed) == (1, 0, 0)
    assert added.chunks_embedded == added.chunks_added == added.chunks_total - first.chunks_total
    assert corpus.search("Who created the Python language?", 1)[0].source == "python.txt"

    _write(docs, "ocean.txt", TOPICS["ocean.txt"] + ["Kelp forests shelter sea otters."])
    changed = corpus.index()
    assert (changed.files_added, changed.files_changed, changed.files_removed) == (0, 1, 0)
    assert changed.chunks_from_cache >= 2                       # unchanged paragraphs are not re-embedded
    assert changed.chunks_embedded == changed.chunks_added - changed.chunks_from_cache >= 1
    assert corpus.search("Where do sea otters shelter?", 1)[0].source == "ocean.txt"

    (docs / "volcano.txt").unlink()
    removed = corpus.index()
    assert (removed.files_added, removed.files_changed, removed.files_removed) == (0, 0, 1)
    assert removed.chunks_embedded == 0
    assert "volcano.txt" not in _sources(corpus, "lava eruption volcano")
    assert removed.chunks_total == changed.chunks_total - removed.chunks_removed

    os.utime(docs / "bread.md", None)  # touched, same content: hashed, not re-embedded
    touched = corpus.index()
    assert touched.files_changed == 0 and touched.chunks_embedded == 0 and touched.files_unchanged == 3

    # a second process (fresh Corpus) sees exactly the same index
    other = Corpus.open(docs)
    assert other.chunk_settings.chunk_tokens == 48
    assert [h.chunk_id for h in other.search("sourdough", 5)] == [h.chunk_id for h in corpus.search("sourdough", 5)]


def test_hnsw_incremental_with_tombstones(docs):
    for i in range(6):  # enough chunks that deleting one file stays under the 20% rebuild point
        _write(docs, f"extra{i}.txt", [f"Extra document {i} paragraph {j} about item {i * 10 + j}." for j in range(3)])
    corpus = Corpus.open(docs, hnsw_threshold=5, **SMALL)
    r = corpus.index()
    assert r.index_type == "hnsw"
    gen0 = store.open_generation(corpus.index_dir)
    n0 = gen0.index.ntotal
    (docs / "bread.md").unlink()
    _write(docs, "python.txt", ["Python is a programming language.", "Guido van Rossum created Python."])
    r2 = corpus.index()
    gen = store.open_generation(corpus.index_dir)
    # new vectors were added to the same graph; removed ones are tombstones, not rebuilt
    assert gen.kind == "hnsw" and gen.index.ntotal == n0 + r2.chunks_added
    assert gen.tombstones == r2.chunks_removed > 0
    assert "bread.md" not in _sources(corpus, "bread flour yeast baguette", k=r2.chunks_total)
    assert len(corpus.search("anything", k=r2.chunks_total)) == r2.chunks_total  # over-fetch fills k
    # past 20% tombstones the graph is rebuilt from its own vectors (no re-embedding)
    for name in ("ocean.txt", "extra0.txt", "extra1.txt"):
        (docs / name).unlink()
    r3 = corpus.index()
    gen = store.open_generation(corpus.index_dir)
    assert r3.chunks_embedded == 0 and gen.tombstones == 0 and gen.index.ntotal == r3.chunks_total


@pytest.mark.parametrize("n_sentences", [600, pytest.param(4000, marks=pytest.mark.slow)])
def test_hnsw_recall_at_10_vs_exact_on_real_embeddings(n_sentences):
    """Our HNSW settings against exact search, on real MiniLM vectors (random vectors would mislead).
    benchmarks/recall_nq.py --hnsw does the same on the whole NQ corpus with real questions (0.999)."""
    import faiss

    from ragkit.embed import get_embedder

    rows = [json.loads(line) for line in open(ROOT / "corpora" / "nq-wiki" / "passages.jsonl")]
    rng = random.Random(3)
    sentences = []
    for r in rows:
        sentences += [s.strip() for s in r["text"].split(". ") if len(s.split()) > 4]
    sentences = rng.sample(sentences, n_sentences)
    emb = get_embedder()
    vecs = emb.encode([" ".join(s.split()[:16]) for s in sentences])
    questions = [json.loads(line)["question"] for line in open(ROOT / "corpora" / "questions" / "nq-wiki.jsonl")]
    queries = emb.encode(rng.sample(questions, 100))
    exact = faiss.IndexFlatIP(emb.dim)
    exact.add(vecs)
    hnsw = store.new_faiss_index("hnsw", emb.dim)
    hnsw.add_with_ids(vecs, np.arange(len(vecs), dtype="int64"))
    _, truth = exact.search(queries, 10)
    _, got = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    assert recall >= 0.95, recall


def _run_index(docs: Path, crash_at: str | None = None, cli: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAGKIT_EMBED_THREADS="1")
    if crash_at:
        env["RAGKIT_CRASH_AT"] = crash_at
    if cli:
        cmd = [sys.executable, "-m", "ragkit.cli", "index", str(docs), "-q"]
    else:
        cmd = [sys.executable, "-c", "import sys; from ragkit.corpus import Corpus; "
               f"Corpus.open(sys.argv[1], chunk_tokens={SMALL['chunk_tokens']}, "
               f"overlap_tokens={SMALL['overlap_tokens']}).index()", str(docs)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _snapshot(corpus: Corpus):
    return [(h.source, h.text) for h in corpus.search("volcano lava ocean bread", 50)]


@pytest.mark.parametrize("point", [
    "after_embed_group",
    "before_pointer",
    pytest.param("before_index_write", marks=pytest.mark.slow),
    pytest.param("before_rename", marks=pytest.mark.slow),
])
def test_kill9_during_build_keeps_old_index_and_rerun_completes(docs, point):
    corpus = Corpus.open(docs, **SMALL)
    corpus.index()
    before, gen_before = _snapshot(corpus), store.read_current(corpus.index_dir)
    _write(docs, "python.txt", ["Python is a programming language.", "Guido van Rossum created Python."])
    (docs / "volcano.txt").unlink()

    proc = _run_index(docs, crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    reader = Corpus.open(docs)  # old index: loadable and exactly as before
    assert store.read_current(reader.index_dir) == gen_before
    assert _snapshot(reader) == before

    report = corpus.index()  # the next run completes the work...
    assert (report.files_added, report.files_removed) == (1, 1)
    assert report.chunks_embedded == 0  # ...reusing the vectors the killed run had already committed
    assert corpus.search("Who created Python?", 1)[0].source == "python.txt"
    assert "volcano.txt" not in _sources(corpus, "lava eruption volcano")
    leftovers = [p.name for p in corpus.index_dir.iterdir() if p.name.startswith("tmp-")]
    assert leftovers == []


def test_kill9_after_the_first_cache_commit_of_a_small_build_keeps_that_work(tmp_path):
    """A build of fewer than 512 new chunks commits its vectors to the embedding cache as it goes:
    killed right after the first commit, the rerun embeds only what that commit did not hold."""
    folder = tmp_path / "docs"
    folder.mkdir()
    rows = [json.loads(line) for line in open(ROOT / "corpora" / "nq-wiki" / "passages.jsonl")][:60]
    for i in range(0, 60, 10):
        (folder / f"part{i}.txt").write_text("\n\n".join(r["text"] for r in rows[i:i + 10]))
    proc = _run_index(folder, crash_at="after_embed_group")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert store.read_current(folder / ".ragkit") is None  # killed before any generation was published
    cache = store.EmbeddingCache(folder / ".ragkit" / "embcache.sqlite", "all-MiniLM-L6-v2", 384)
    (committed,) = cache._db.execute("SELECT COUNT(*) FROM vectors").fetchone()
    cache.close()

    report = Corpus.open(folder, **SMALL).index()
    assert report.chunks_total < 512
    assert 0 < committed < report.chunks_total  # committed before the build's end, not all at once
    assert report.chunks_from_cache == committed
    assert report.chunks_embedded == report.chunks_total - committed


def test_a_file_recorded_unreadable_is_hashed_again_though_its_stat_is_unchanged(tmp_path):
    """The record a permission-denied file leaves (sha256 'unreadable'); chmod changes neither size nor
    mtime, so the stat shortcut alone would call the now readable file unchanged forever."""
    from ragkit.loaders import SourceFile

    path = tmp_path / "secret.txt"
    path.write_text("readable now")
    st = path.stat()
    old = {"secret.txt": store.FileRecord("secret.txt", st.st_size, st.st_mtime_ns, "unreadable", 0,
                                          "unreadable (Permission denied)")}
    ch = store.scan_changes([SourceFile(path, "secret.txt")], old)
    assert [sf.rel for sf in ch.changed] == ["secret.txt"] and ch.unchanged == 0


@pytest.mark.slow
def test_kill9_at_random_moments(tmp_path):
    """External kill -9 at random times during a longer build; every time the old index stays correct."""
    folder = tmp_path / "docs"
    folder.mkdir()
    rows = [json.loads(line) for line in open(ROOT / "corpora" / "nq-wiki" / "passages.jsonl")][:400]
    for i in range(0, 100, 10):
        (folder / f"part{i}.txt").write_text("\n\n".join(r["text"] for r in rows[i:i + 10]))
    corpus = Corpus.open(folder, **SMALL)
    corpus.index()
    before, gen_before = _snapshot(corpus), store.read_current(corpus.index_dir)
    for i in range(100, 400, 10):
        (folder / f"part{i}.txt").write_text("\n\n".join(r["text"] for r in rows[i:i + 10]))
    rng = random.Random(5)
    env = dict(os.environ, RAGKIT_EMBED_THREADS="1")
    cmd = [sys.executable, "-m", "ragkit.cli", "index", str(folder), "-q"]
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4, 25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader = Corpus.open(folder)
        gen = store.open_generation(reader.index_dir)
        if gen.name == gen_before:
            assert _snapshot(reader) == before  # the old generation, untouched
        else:  # the run got past the pointer swap: the new generation must be complete and consistent
            files = gen.files()
            assert len(files) == 40 and gen.live_chunks == sum(f.chunks for f in files.values())
            assert len(reader.search("history", 10_000)) == gen.live_chunks == gen.index.ntotal
        reader.close()
    report = corpus.index()
    assert report.files_unchanged + report.files_added == 40
    assert report.chunks_total == len(Corpus.open(folder).search("history", 10_000))


def test_two_concurrent_builds(docs):
    Corpus.open(docs, **SMALL).index()
    _write(docs, "python.txt", ["Python is a programming language.", "Guido van Rossum created Python."])
    env = dict(os.environ, RAGKIT_EMBED_THREADS="1")
    cmd = [sys.executable, "-m", "ragkit.cli", "index", str(docs), "-q"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = outs[[p.returncode for p in procs].index(1)][1]
    assert "another `ragkit index` is already updating" in loser and "pid" in loser
    corpus = Corpus.open(docs)
    assert corpus.search("Who created Python?", 1)[0].source == "python.txt"
    again = corpus.index()
    assert again.chunks_embedded == 0 and again.files_added == 0


def test_lock_held_gives_clear_error(docs):
    corpus = Corpus.open(docs, **SMALL)
    corpus.index_dir.mkdir(parents=True, exist_ok=True)
    with store.WriteLock(corpus.index_dir):
        with pytest.raises(IndexError_, match="already updating"):
            Corpus.open(docs, **SMALL).index()


def test_settings_mismatch_is_a_clear_error_and_rebuild_fixes_it(docs):
    Corpus.open(docs, **SMALL).index()
    with pytest.raises(IndexError_, match="--rebuild") as err:
        Corpus.open(docs, chunk_tokens=100)
    assert "chunker" in str(err.value)
    from ragkit.embed import resolve_model

    with pytest.raises(IndexError_, match="embed_model"):
        Corpus.open(docs, embed_model=resolve_model(None)[1])  # another model (recorded by path)
    rebuilt = Corpus.open(docs, chunk_tokens=100, rebuild=True)
    report = rebuilt.index(rebuild=True)
    assert report.files_added == 3 and report.chunks_total >= 3
    assert Corpus.open(docs).chunk_settings.chunk_tokens == 100


def test_damaged_or_missing_index_is_a_clear_error(docs, tmp_path):
    with pytest.raises(IndexError_, match="run `ragkit index"):
        Corpus.open(docs).search("x")
    corpus = Corpus.open(docs, **SMALL)
    corpus.index()
    (corpus.index_dir / "CURRENT").write_text("{not json")
    with pytest.raises(IndexError_, match="--rebuild"):
        Corpus.open(docs)


def test_searches_from_threads_while_an_update_publishes(docs):
    import threading

    corpus = Corpus.open(docs, **SMALL)
    corpus.index()
    errors, counts = [], []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                hits = corpus.search("ocean volcano bread python", 3)
                assert len(hits) == 3 and all(h.text for h in hits)
                counts.append(1)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(3):
            _write(docs, f"new{i}.txt", [f"Python release {i} added features.", "More text here."])
            Corpus.open(docs).index()  # another writer object publishes new generations
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors and counts
    assert corpus.search("Python release 2", 1)[0].source.startswith("new")  # readers pick up new generations
