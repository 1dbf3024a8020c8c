"""A Milvus store with real Milvus Lite and the real model: incremental by content hash, deletes, the
alias switch seen from reader threads, kill -9 mid-build, the manifest check, --where, and the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.corpus import Corpus  # noqa: E402
from ragkit.errors import IndexError_, InputError  # noqa: E402
from ragkit.stores import parse_store  # noqa: E402

SMALL = dict(chunk_tokens=48, overlap_tokens=8)
BREAD = 'food/"pain" brioché.md'   # a name Milvus filter literals must quote and keep as it is
TOPICS = {
    "geo/volcano.txt": ["Volcanoes erupt molten rock called lava.", "Mount Etna in Sicily is very active.",
                        "Ash clouds can ground aircraft for days."],
    "geo/ocean.txt": ["The Pacific is the deepest ocean.", "The Mariana Trench reaches eleven kilometres.",
                      "Coral reefs grow in warm shallow water."],
    BREAD: ["# Bread\n\nBread is baked from flour, water and yeast.", "Sourdough uses a wild starter culture.",
                      "Baguettes are long thin French loaves."],
}


def _write(folder: Path, name: str, paragraphs: list[str]) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n\n".join(p + " " + " ".join(f"detail{i}" for i in range(12)) for p in paragraphs))


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    for name, paras in TOPICS.items():
        _write(folder, name, paras)
    return folder


@pytest.fixture
def url(tmp_path) -> str:
    return f"milvus-lite:{tmp_path / 'index.db'}"


def _all(corpus: Corpus) -> set[tuple[str, str]]:
    return {(h.source, h.text) for h in corpus.search("volcano lava ocean bread python", 100)}


def test_store_urls_parse_and_a_bad_one_is_one_sentence(tmp_path):
    assert parse_store(None).kind == "folder"
    lite = parse_store(f"milvus-lite:{tmp_path}/x.db")
    assert (lite.kind, lite.uri, lite.collection) == ("milvus-lite", str(tmp_path / "x.db"), "ragkit")
    cluster = parse_store("milvus://milvus.internal:19531/team_docs")
    assert (cluster.kind, cluster.uri, cluster.collection) == ("milvus", "http://milvus.internal:19531", "team_docs")
    assert parse_store("milvus://db/docs").uri == "http://db:19530"
    with pytest.raises(InputError, match="ends in .db"):
        parse_store(f"milvus-lite:{tmp_path}/x")
    for bad in ("milvus:/x", "milvus://host:19530/", "milvus://host/bad-name", "faiss:x", "milvus-lite:"):
        with pytest.raises(InputError, match="is not a store; use milvus-lite:PATH"):
            parse_store(bad)


def test_index_search_change_delete_embeds_only_changed_chunks(docs, url):
    corpus = Corpus.open(docs, store=url, **SMALL)
    first = corpus.index()
    assert (first.files_added, first.chunks_embedded) == (3, first.chunks_total) and first.chunks_total >= 6
    assert first.index_type == "milvus-FLAT" and first.index_dir == url
    assert corpus.search("Where is Mount Etna?", 1)[0].source == "geo/volcano.txt"
    assert corpus.index().chunks_embedded == 0  # nothing changed: nothing embedded or written

    before = _all(corpus)
    old_text = [t for s, t in before if s == "geo/volcano.txt" and "Etna" in t]
    changed = [TOPICS["geo/volcano.txt"][0], "Stromboli in Italy erupts every few minutes.",
               TOPICS["geo/volcano.txt"][2]]
    _write(docs, "geo/volcano.txt", changed)
    report = corpus.index()
    assert (report.files_changed, report.files_added, report.files_removed) == (1, 0, 0)
    # Only the chunks whose text changed went through the model; the rest came from the hash cache.
    assert 1 <= report.chunks_embedded < report.chunks_added
    assert report.chunks_from_cache == report.chunks_added - report.chunks_embedded
    after = _all(corpus)
    assert corpus.search("Which volcano erupts every few minutes?", 1)[0].text.startswith("Stromboli")
    assert old_text and not any(t in {t for _, t in after} for t in old_text)  # the old chunk is gone
    assert len(after) == report.chunks_total  # no stale copies left behind

    (docs / BREAD).unlink()
    gone = corpus.index()
    assert (gone.files_removed, gone.chunks_embedded) == (1, 0)
    assert not any(s == BREAD for s, _ in _all(corpus))
    assert BREAD not in corpus._generation().files()
    corpus.close()

    # A new process (here: a new Corpus after the client was released) sees the same collection.
    reopened = Corpus.open(docs, store=url)
    assert reopened.chunk_settings.chunk_tokens == SMALL["chunk_tokens"]  # settings come from the manifest
    assert len(_all(reopened)) == gone.chunks_total
    reopened.close()


def test_where_filters_on_metadata_and_a_bad_filter_is_one_sentence(docs, url):
    corpus = Corpus.open(docs, store=url, **SMALL)
    corpus.index()
    hits = corpus.search("lava volcano eruption", 10, where='source like "food/%"')
    assert hits and {h.source for h in hits} == {BREAD}
    assert {h.source for h in corpus.search("x", 20, where='source in ["geo/ocean.txt"]')} == {"geo/ocean.txt"}
    with pytest.raises(InputError, match="is not a filter Milvus accepts"):
        corpus.search("x", 3, where='source lik "docs/%"')
    corpus.close()
    folder = Corpus.open(docs, **SMALL)
    with pytest.raises(InputError, match="--where filters need a Milvus store"):
        folder.search("x", 3, where='source like "geo/%"')


def test_mismatched_embedder_is_refused_with_the_rebuild_sentence(docs, url):
    Corpus.open(docs, store=url, **SMALL).index()
    with pytest.raises(IndexError_, match="--rebuild") as err:
        Corpus.open(docs, store=url, chunk_tokens=100)
    assert "chunker" in str(err.value) and url in str(err.value)
    from ragkit.embed import resolve_model

    with pytest.raises(IndexError_, match=r"embed_model.*Rebuild it with `ragkit index <PATH> --rebuild`"):
        Corpus.open(docs, store=url, embed_model=resolve_model(None)[1])  # another model (recorded by path)
    rebuilt = Corpus.open(docs, store=url, chunk_tokens=100, rebuild=True)
    assert rebuilt.index(rebuild=True).generation.endswith("__g000002")
    assert Corpus.open(docs, store=url).chunk_settings.chunk_tokens == 100


def test_searches_during_a_rebuild_see_the_old_or_the_new_collection_never_a_mix(docs, url):
    corpus = Corpus.open(docs, store=url, **SMALL)
    corpus.index()
    old = _all(corpus)
    for name, paras in TOPICS.items():  # every chunk's text changes: a mix would show
        _write(docs, name, [p.replace(".", " (revised).") for p in paras])
    seen, errors, stop = [], [], threading.Event()

    def reader():
        try:
            while not stop.is_set():
                seen.append(frozenset(_all(corpus)))
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        Corpus.open(docs, store=url, rebuild=True, **SMALL).index(rebuild=True)
        for _ in range(20):  # let the readers search the new collection a few times
            if len(seen) > 3 and seen[-1] != frozenset(old):
                break
            threading.Event().wait(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    new = _all(corpus)
    assert not errors, errors
    assert new != old and all("(revised)" in t for _, t in new)
    assert {s for s in seen} <= {frozenset(old), frozenset(new)} and frozenset(old) in seen
    corpus.close()


def _index_in_subprocess(docs: Path, url: str, crash_at: str, rebuild: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAGKIT_EMBED_THREADS="1", RAGKIT_CRASH_AT=crash_at)
    code = ("import sys; from ragkit.corpus import Corpus; "
            f"Corpus.open(sys.argv[1], store=sys.argv[2], rebuild={rebuild}, chunk_tokens={SMALL['chunk_tokens']}, "
            f"overlap_tokens={SMALL['overlap_tokens']}).index(rebuild={rebuild})")
    return subprocess.run([sys.executable, "-c", code, str(docs), url], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("point,rebuild", [
    ("before_pointer", True),           # a rebuild filled its new collection, killed before the alias switch
    ("milvus_insert_batch", True),      # killed while inserting into the new collection
    pytest.param("milvus_after_insert", False, marks=pytest.mark.slow),  # in place: new chunks in, old not yet out
])
def test_kill9_mid_build_leaves_the_previous_collection_serving(docs, url, point, rebuild):
    corpus = Corpus.open(docs, store=url, **SMALL)
    corpus.index()
    before, gen_before = _all(corpus), corpus._generation().name
    corpus.close()  # Milvus Lite serves one process at a time: let the indexer open it
    _write(docs, "python.txt", ["Python is a programming language.", "Guido van Rossum created Python."])
    (docs / "geo/volcano.txt").unlink()

    proc = _index_in_subprocess(docs, url, point, rebuild)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    reader = Corpus.open(docs, store=url)
    if rebuild:  # the alias still names the old collection, exactly as it was
        assert reader._generation().name == gen_before and _all(reader) == before
    report = reader.index()  # the next run completes the work, from the vectors the killed run cached
    assert report.chunks_embedded == 0
    assert reader.search("Who created Python?", 1)[0].source == "python.txt"
    after = _all(reader)
    assert not any(s == "geo/volcano.txt" for s, _ in after)
    assert len(after) == report.chunks_total  # no orphans of the killed run
    reader.close()


def test_ask_dry_run_through_the_cli_with_a_milvus_store(docs, url):
    env = dict(os.environ, RAGKIT_EMBED_THREADS="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ragkit.cli", *a], env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    idx = run("index", str(docs), "--store", url, "-q", "--chunk-tokens", "48", "--overlap-tokens", "8")
    assert idx.returncode == 0 and "milvus-FLAT index ragkit__g000001" in idx.stdout, idx.stderr[-2000:]
    # The corpus fits gpt-4o-mini whole; --where makes the plan retrieve (a filter selects chunks).
    ask = run("ask", str(docs), "Where is Mount Etna?", "--store", url, "--dry-run", "--json",
              "-m", "gpt-4o-mini", "--where", 'source like "geo/%"', "--no-ledger")
    assert ask.returncode == 0, ask.stderr[-2000:]
    out = json.loads(ask.stdout)
    assert out["strategy"] == "retrieve" and out["plan"]["forced"]
    sources = {c["doc_id"] for c in out["context"]}
    assert "geo/volcano.txt" in sources and sources <= {"geo/volcano.txt", "geo/ocean.txt"}
    assert "Mount Etna" in out["prompt"]["user"]
    stuffed = run("ask", str(docs), "x", "--store", url, "--dry-run", "-s", "stuff", "--where", 'source like "x%"')
    assert stuffed.returncode == 1 and "cannot be used with --strategy stuff" in stuffed.stderr
    bad = run("search", str(docs), "x", "--store", "milvus://host:1/bad-name")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: --store") and len(bad.stderr.splitlines()) == 1


def test_a_large_first_build_gets_an_hnsw_collection(docs, url):
    corpus = Corpus.open(docs, store=url, hnsw_threshold=5, **SMALL)
    report = corpus.index()
    assert report.chunks_total >= 5 and report.index_type == "milvus-HNSW"
    assert corpus._generation().manifest["hnsw"]["M"] == 32
    assert corpus.search("Where is Mount Etna?", 1)[0].source == "geo/volcano.txt"
    corpus.close()


def test_without_pymilvus_a_milvus_store_is_one_line_naming_the_extra_and_the_folder_never_imports_it(docs, tmp_path):
    code = ("import sys; sys.modules['pymilvus'] = None\n"   # as if the [milvus] extra were not installed
            "from ragkit.cli import main\n"
            "sys.argv = ['ragkit', 'search', sys.argv[1], 'x', '--store', sys.argv[2]]\nmain()")
    proc = subprocess.run([sys.executable, "-c", code, str(docs), f"milvus-lite:{tmp_path / 'i.db'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "Error: a Milvus store needs the [milvus] extra: pip install 'ragkit[milvus]'"], proc.stderr[-2000:]
    light = subprocess.run([sys.executable, "-c", "import sys; import ragkit.cli.index, ragkit.corpus, ragkit.stores; "
                            "print('pymilvus' in sys.modules)"], capture_output=True, text=True, timeout=300)
    assert light.stdout.strip() == "False", light.stderr[-2000:]


def test_one_writer_at_a_time_the_second_gets_the_busy_error(docs, url):
    from ragkit.errors import IndexBusy

    corpus = Corpus.open(docs, store=url, **SMALL)
    corpus.index()
    _write(docs, "python.txt", ["Python is a programming language."])
    with corpus.store.write_lock():  # another writer (a lock file next to the .db)
        with pytest.raises(IndexBusy, match="already updating"):
            Corpus.open(docs, store=url).index()
        status = corpus.update_for_reading()  # a question meanwhile answers from the collection as it was
        assert not status.fresh and "updating it" in status.note
    corpus.close()


def test_milvus_lite_open_in_another_process_is_one_line_saying_so(docs, url):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ragkit.corpus import Corpus; "
                               "Corpus.open(sys.argv[1], store=sys.argv[2]).index(); print('open', flush=True); "
                               "time.sleep(120)", str(docs), url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "search", str(docs), "x", "--store", url],
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "is open in another process (Milvus Lite serves one process at a time" in proc.stderr


def test_store_urls_with_a_hash_in_the_path_and_out_of_range_ports(tmp_path):
    lite = parse_store(f"milvus-lite:{tmp_path}/v#2/x.db")             # a '#' in a folder's name
    assert (lite.uri, lite.collection) == (str(tmp_path / "v#2" / "x.db"), "ragkit")
    assert parse_store(lite.url) == lite
    named = parse_store(f"milvus-lite:{tmp_path}/v#2/x.db#team")
    assert (named.uri, named.collection) == (str(tmp_path / "v#2" / "x.db"), "team") and parse_store(named.url) == named
    with pytest.raises(InputError, match="a collection name after # is letters"):
        parse_store(f"milvus-lite:{tmp_path}/x.db#bad-name")
    for port in ("0", "65536", "99999"):
        with pytest.raises(InputError, match=f"port {port} is not a TCP port"):
            parse_store(f"milvus://host:{port}/docs")


def test_a_bad_milvus_lite_path_is_one_sentence_saying_what_is_wrong_and_a_search_creates_nothing(docs, tmp_path):
    missing = tmp_path / "no such folder" / "x.db"
    with pytest.raises(IndexError_, match="no index in milvus-lite"):    # a read opens no database
        Corpus.open(docs, store=f"milvus-lite:{missing}").search("lava")
    assert not missing.parent.exists()
    a_file = tmp_path / "plain.db"
    a_file.write_text("not a database")
    with pytest.raises(IndexError_, match="is a file, not a Milvus Lite database"):
        Corpus.open(docs, store=f"milvus-lite:{a_file}")
    under_a_file = docs / "geo" / "ocean.txt" / "x.db"
    for store in (f"milvus-lite:{under_a_file}", None):                 # both stores' folders
        corpus = Corpus.open(docs, store=store, index_dir=docs / "geo" / "ocean.txt" / "idx")
        with pytest.raises(InputError, match="cannot create the index folder .*Not a directory.*pick another path"):
            corpus.index()
