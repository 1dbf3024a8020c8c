"""The retrieval API: open a corpus, index it (incrementally), search it, pack context for a model.

    from ragkit.corpus import Corpus
    corpus = Corpus.open("docs/")                  # index in docs/.ragkit/ unless index_dir is given
    report = corpus.index(progress=True)           # embeds only new or changed files
    hits = corpus.search("how do I rotate keys?", k=5)
    ctx = corpus.pack("how do I rotate keys?", budget_tokens=3000, model="gpt-4o")

`build_memory_index(texts)` searches an in-memory list of passages with no folder (evals).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ragkit.chunking import ChunkSettings, Chunker
from ragkit.console import require_text
from ragkit.errors import IndexBusy, IndexError_, InputError
from ragkit.loaders import Document, discover_files, load_file, warn_skip
from ragkit.retrieve import DEFAULT_TOP_K, Hit, PackedContext, pack_hits
from ragkit import store as _store
from ragkit import stores as _stores

log = logging.getLogger("ragkit")
# New vectors reach the embedding cache every CACHE_COMMIT_TEXTS texts or CACHE_COMMIT_S seconds, whichever
# comes first, so a killed build loses at most that much model work (a commit costs about a millisecond).
CACHE_COMMIT_TEXTS = 128
CACHE_COMMIT_S = 2.0
DEFAULT_INDEX_WAIT_S = 600.0   # how long a question waits for another process building the FIRST index


@dataclass(frozen=True)
class IndexStatus:
    """The index a question was answered from: fresh, or stale because another process is updating it."""

    generation: str
    fresh: bool
    updated: bool = False         # this process brought it up to date just now
    note: str | None = None       # why it is stale (also printed on stderr by the CLI)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IndexReport:
    """What one `index()` run did. Files are counted by path relative to the corpus root."""

    index_dir: str
    files_added: int
    files_changed: int
    files_removed: int
    files_unchanged: int
    files_skipped: int
    chunks_added: int
    chunks_removed: int
    chunks_total: int
    chunks_embedded: int        # vectors computed by the model this run
    chunks_from_cache: int      # vectors reused by content hash
    index_type: str
    generation: str
    elapsed_s: float
    embed_s: float
    skipped: tuple[tuple[str, str], ...] = field(default=())   # (path, reason)
    # IVF-PQ only: the default nprobe and its recall@10 against exact search, measured on sampled
    # stored vectors when the index was trained (in generation `recall_measured_in`), through the exact
    # re-rank of the top `rerank_pool` PQ candidates that searches use
    nprobe: int | None = None
    recall_at_10: float | None = None
    recall_measured_in: str | None = None
    rerank_pool: int | None = None

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_embedded / self.embed_s if self.embed_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        d["chunks_per_s"] = round(self.chunks_per_s, 2)
        return d

    def summary(self) -> str:
        return (f"files: {self.files_added} added, {self.files_changed} changed, {self.files_removed} removed, "
                f"{self.files_unchanged} unchanged, {self.files_skipped} skipped; chunks: +{self.chunks_added} "
                f"-{self.chunks_removed} = {self.chunks_total} ({self.chunks_embedded} embedded, "
                f"{self.chunks_from_cache} from cache); {self.index_type} index {self.generation} in "
                f"{self.elapsed_s:.1f} s" + (f" ({self.chunks_per_s:.0f} chunks/s)" if self.chunks_embedded else "")
                + (f"; recall@10 {self.recall_at_10:.3f} vs exact search at nprobe {self.nprobe}"
                   + (f", top {self.rerank_pool} re-ranked exactly" if self.rerank_pool else "")
                   + f" (sampled queries, measured at training in {self.recall_measured_in})"
                   if self.recall_at_10 is not None else ""))


def default_index_dir(path: Path) -> Path:
    """`<folder>/.ragkit/` for a folder; `<folder>/.ragkit-<file name>/` for a single file."""
    p = Path(path).expanduser().resolve()
    return p / ".ragkit" if p.is_dir() else p.parent / f".ragkit-{p.name}"


class Corpus:
    """A folder (or file) of documents with its index folder. Thread-safe for searches."""

    def __init__(self, path: Path, index_dir: Path, *, embed_model: str | None, chunk: ChunkSettings | None,
                 text_field: str | None, include=(), exclude=(), hnsw_threshold: int = _store.HNSW_THRESHOLD,
                 rebuild: bool = False, embed_backend: str | None = None, store: str | None = None,
                 ivfpq_threshold: int | None = None, nprobe: int | None = None, rerank: int | None = None):
        self.path = path
        self.index_dir = index_dir
        self.store = _stores.open_store(store, index_dir, path)   # the FAISS folder unless --store says otherwise
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.hnsw_threshold = hnsw_threshold
        self.ivfpq_threshold = _store.IVFPQ_THRESHOLD if ivfpq_threshold is None else ivfpq_threshold
        self.nprobe = _check_nprobe(nprobe)  # IVF-PQ: the default stored by index(), the per-query value of searches
        self.rerank = _check_rerank(rerank)  # IVF-PQ: candidates re-scored exactly (None: store.rerank_pool's)
        self._requested = (embed_model, chunk, text_field)
        self._gen: _store.Generation | None = None
        self._gen_lock = threading.Lock()
        self._checked: _store.Generation | None = None  # the generation whose settings _require has checked
        # rebuild=True: the old index's settings are ignored (index(rebuild=True) then discards it).
        have = None if rebuild else self.store.current_settings()  # FAISS loads on the first search
        # Unspecified settings follow the existing index; specified ones must match it.
        from ragkit.embed import resolve_model

        self.embed_model = resolve_model(embed_model)[0] if embed_model else (have["embed_model"] if have else resolve_model(None)[0])
        self.backend = _wanted_backend(embed_backend, have)
        self.chunk_settings = chunk or (ChunkSettings(**have["chunker"]) if have else ChunkSettings())
        self.text_field = text_field or (have.get("text_field", "text") if have else "text")
        if have:
            self._check(have)

    @classmethod
    def open(cls, path, index_dir=None, embed_model: str | None = None, *, chunk_tokens: int | None = None,
             overlap_tokens: int | None = None, text_field: str | None = None, include=(), exclude=(),
             hnsw_threshold: int = _store.HNSW_THRESHOLD, rebuild: bool = False,
             embed_backend: str | None = None, store: str | None = None, ivfpq_threshold: int | None = None,
             nprobe: int | None = None, rerank: int | None = None) -> "Corpus":
        p = Path(path).expanduser()
        if not p.exists():
            raise InputError(f"{p} does not exist; pass a file or a folder of documents")
        chunk = None
        if chunk_tokens is not None or overlap_tokens is not None:
            d = ChunkSettings()
            chunk = ChunkSettings(chunk_tokens if chunk_tokens is not None else d.chunk_tokens,
                                  overlap_tokens if overlap_tokens is not None else d.overlap_tokens)
        idx = Path(index_dir).expanduser().resolve() if index_dir else default_index_dir(p)
        return cls(p.resolve(), idx, embed_model=embed_model, chunk=chunk, text_field=text_field,
                   include=include, exclude=exclude, hnsw_threshold=hnsw_threshold, rebuild=rebuild,
                   embed_backend=embed_backend, store=store, ivfpq_threshold=ivfpq_threshold, nprobe=nprobe,
                   rerank=rerank)

    # -- settings -----------------------------------------------------------------------------
    def _wanted(self, dim: int | None) -> dict:
        return {"embed_model": self.embed_model, "chunker": self.chunk_settings.to_dict(),
                "text_field": self.text_field, **self.backend.manifest(), **({"dim": dim} if dim is not None else {})}

    def _check(self, have: dict) -> None:
        want = self._wanted(None)
        have_cmp = {k: have.get(k) for k in want}
        if have_cmp != want:
            raise IndexError_(_store.mismatch_message(self.store.location, have_cmp, want))

    def _generation_unchecked(self) -> _store.Generation | None:
        return self._generation()

    def _generation(self) -> _store.Generation | None:
        """The current generation, reopened when another process has published a newer one."""
        with self._gen_lock:
            cur = self.store.current_name()
            if self._gen is None or (cur and self._gen.name != cur):
                # The old generation is not closed here: another thread may be reading it; it is
                # released when the last reference goes (its files stay readable after deletion).
                self._gen = self.store.open_current() if cur else None
            return self._gen

    # -- documents ----------------------------------------------------------------------------
    def documents(self) -> list[Document]:
        """Every readable document (what `stuff` sends); warns once per skipped file."""
        return [d for sf in self._source_files() for d in load_file(sf, text_field=self.text_field)]

    def _source_files(self) -> list:
        """The files under the path that hold documents: discovered, minus the index folder's own."""
        _, files = discover_files(self.path, self.include, self.exclude)
        private = (self.index_dir, *self.store.private_paths)
        return [sf for sf in files if not any(_is_index_path(sf.path, d) for d in private)]

    # -- indexing -----------------------------------------------------------------------------
    def _scan(self, old: _store.Generation | None) -> tuple[list, dict, _store.Changes]:
        """(files on disk, the generation's file records, what differs). Reads only: no lock needed."""
        files = self._source_files()
        old_files = old.files() if old else {}
        return files, old_files, _store.scan_changes(files, old_files)

    def index(self, progress: bool = False, *, rebuild: bool = False, on_skip=None, on_progress=None,
              lock_timeout_s: float = 0, engine=None) -> IndexReport:
        """Brings the index up to date with the files: embeds only new or changed files, removes
        deleted ones. One writer at a time: the second waits up to lock_timeout_s, then gets
        IndexBusy; atomic on disk. `engine` (e.g. ragkit.ray_engine.RayEngine) loads, chunks and
        embeds the changed files elsewhere; everything before and after (scan, cache, write) is the same."""
        t0 = time.perf_counter()
        chunker = Chunker(self._tokenizer(), self.chunk_settings)  # bad settings fail before anything is touched
        files = self._source_files()
        no_files = f"no files to index under {self.path}; check the path and --include/--exclude"
        if not files and not self.store.exists():
            raise InputError(no_files)  # before the index folder exists: a failed first run leaves nothing behind
        self.store.prepare()
        with self.store.write_lock(timeout_s=lock_timeout_s):
            try:
                current = self._generation_unchecked()
            except IndexError_:
                if not rebuild:
                    raise
                current = None  # damaged CURRENT or generation: --rebuild replaces it, so it needs none of it
            old = None if rebuild else current
            if old is not None:
                self._check(old.settings)
            self.store.cleanup_stray(current.name if current else None)
            files, old_files, ch = self._scan(old)   # again under the lock: the files may have moved on
            if not files and old is None:
                raise InputError(no_files)
            skipped: list[tuple[str, str]] = [(r.rel, r.skipped) for r in old_files.values()
                                               if r.skipped and r.rel not in ch.removed
                                               and r.rel not in {sf.rel for sf in ch.changed}]
            if not ch.any and not ch.restat and old is not None:
                return self._report(old, ch, skipped, t0, 0.0, 0, 0, 0, 0)
            report_skip = on_skip or warn_skip

            records: list[_store.FileRecord] = list(ch.restat.values())
            new_chunks: list[_store.NewChunk] = []
            work = [(sf, ch.hashes.get(sf.rel, "")) for sf in ch.added + ch.changed]
            done = (engine.chunk_files(self, work, report_skip) if engine is not None else
                    (chunk_file(sf, digest, chunker, self.text_field, report_skip) for sf, digest in work))
            for record, chunks in done:
                if record.skipped:
                    skipped.append((record.rel, record.skipped))
                records.append(record)
                new_chunks += chunks
            # --rebuild embeds everything again (the build comes from nothing; the current generation stays
            # readable until the swap) but keeps the embedding cache: that generation's IVF-PQ re-rank reads
            # it until then, and after a killed rebuild for good; the new vectors overwrite the old by hash
            vectors, embedded, cached, embed_s, dim = self._vectors(new_chunks, progress, on_progress, engine,
                                                                    recompute=rebuild)
            remove = ch.removed + [sf.rel for sf in ch.changed]
            removed_chunks = sum(old_files[r].chunks for r in ch.removed + [sf.rel for sf in ch.changed]
                                 if r in old_files)
            settings = _store.Settings(self.embed_model, dim, self.chunk_settings.to_dict(), self.text_field,
                                       **self.backend.manifest())
            if old is not None and old.settings.get("dim") != dim:  # same name, different model files
                raise IndexError_(_store.mismatch_message(self.store.location, old.settings, settings.to_dict()))
            # restat records (same content, new mtime) only refresh their file row; their chunks stay.
            self.store.write(old, settings, remove_rels=remove, after=current,
                                    file_records=records, new_chunks=new_chunks, new_vectors=vectors,
                                    hnsw_threshold=self.hnsw_threshold, ivfpq_threshold=self.ivfpq_threshold,
                                    nprobe=self.nprobe, cache_vectors=self._cached_vectors(dim))
            gen = self._generation()
            self._prune_cache(gen)
            return self._report(gen, ch, skipped, t0, embed_s, len(new_chunks), removed_chunks, embedded, cached)

    def update_for_reading(self, progress: bool = False, wait_s: float = DEFAULT_INDEX_WAIT_S) -> "IndexStatus":
        """What a question needs before it searches: an index, as fresh as can be had without
        blocking on another writer.

        Up to date: nothing is locked or written (many readers at once). Stale: this process
        updates it unless another one is already doing so, in which case the question is answered
        from the current generation and the status says so. No index yet: wait up to `wait_s` for
        a builder that is already running, then build what is still missing.
        """
        gen = self._generation()
        if gen is None:
            report = self.index(progress, lock_timeout_s=wait_s)
            return IndexStatus(report.generation, fresh=True, updated=True)
        self._check(gen.settings)
        _, _, ch = self._scan(gen)
        if not ch.any:
            return IndexStatus(gen.name, fresh=True)
        try:
            report = self.index(progress)
        except IndexBusy as busy:
            changed = len(ch.added) + len(ch.changed) + len(ch.removed)
            who = f" ({busy.holder})" if busy.holder else ""
            return IndexStatus(gen.name, fresh=False,
                               note=f"{changed} file(s) changed since index {gen.name}; another process{who} "
                                    f"is updating it, so this answer uses the index as it was")
        return IndexStatus(report.generation, fresh=True, updated=report.generation != gen.name)

    def _report(self, gen, ch, skipped, t0, embed_s, added, removed, embedded, cached) -> IndexReport:
        # A skipped file is counted once, as skipped, not also as added/changed/unchanged.
        skip = {rel for rel, _ in skipped}
        ivf = gen.manifest.get("ivfpq") or {}
        recall = ivf.get("recall_at_10", {}).get(str(ivf.get("nprobe")))
        return IndexReport(self.store.location, sum(f.rel not in skip for f in ch.added),
                           sum(f.rel not in skip for f in ch.changed), len(ch.removed), ch.unchanged - len(skip & ch.unchanged_rels),
                           len(skipped), added, removed, gen.live_chunks, embedded, cached, gen.kind, gen.name,
                           round(time.perf_counter() - t0, 3), round(embed_s, 3), tuple(skipped),
                           gen.nprobe, recall, ivf.get("trained_in"), ivf.get("rerank_pool"))

    def _tokenizer(self):
        from ragkit.embed import load_piece_tokenizer

        return load_piece_tokenizer(self._model_arg())

    def _model_arg(self) -> str | None:
        from ragkit.embed import DEFAULT_EMBED_MODEL

        return None if self.embed_model == DEFAULT_EMBED_MODEL else self.embed_model

    def embedder(self):
        from ragkit.embed import get_embedder

        return get_embedder(self._model_arg(), self.backend.key)

    def _vectors(self, chunks: list[_store.NewChunk], progress: bool, on_progress, engine=None,
                 recompute: bool = False):
        """Vectors for new chunks: from the content-hash cache when possible (never with `recompute`), else
        the model (one model batch per call, longest first so batches pad little; committed to the cache
        as they come). An engine computes the missing ones elsewhere and streams back (hashes, vectors)."""
        import numpy as np

        gen = self._gen
        dim = gen.settings["dim"] if gen is not None else None
        if not chunks:
            return np.zeros((0, dim or 0), dtype="float32"), 0, 0, 0.0, dim if dim else self.embedder().dim
        emb = self.embedder()
        dim = emb.dim
        cache = _store.EmbeddingCache(self.store.cache_path, self.backend.cache_key(self.embed_model), dim)
        try:
            unique = list(dict.fromkeys(c.text_hash for c in chunks))
            found = {} if recompute else cache.get_many(unique)
            text_of = {c.text_hash: (f"{c.title}\n{c.text}" if c.title else c.text, c.tokens) for c in chunks}
            todo = sorted((h for h in unique if h not in found), key=lambda h: -text_of[h][1])
            t0 = time.perf_counter()
            bar = _ProgressBar(len(todo), enabled=progress)
            pending: list[str] = []
            last_commit = t0
            items = [(h, text_of[h][0]) for h in todo]
            done = 0
            try:
                for part, vecs in (engine.embed(self, items) if engine is not None else _embed_batches(emb, items)):
                    found.update(zip(part, vecs))
                    pending += part
                    done += len(part)
                    if (len(pending) >= CACHE_COMMIT_TEXTS or done == len(todo)
                            or time.perf_counter() - last_commit >= CACHE_COMMIT_S):
                        cache.put_many(pending, [found[h] for h in pending])
                        pending, last_commit = [], time.perf_counter()
                        _store._crash_point("after_embed_group")
                    bar.advance(len(part))
                    if on_progress:
                        on_progress(done, len(todo))
            finally:
                bar.close()
            embed_s = time.perf_counter() - t0
            matrix = np.stack([found[c.text_hash] for c in chunks]).astype("float32")
            return matrix, len(todo), len(chunks) - len(todo), embed_s, dim
        finally:
            cache.close()

    def _cached_vectors(self, dim: int):
        """hashes -> {hash: vector} from the embedding cache: what an IVF-PQ retrain reads (PQ is lossy)."""
        def lookup(hashes: list[str]) -> dict:
            cache = _store.EmbeddingCache(self.store.cache_path, self.backend.cache_key(self.embed_model), dim)
            try:
                return cache.get_many(hashes)
            finally:
                cache.close()
        return lookup

    def _prune_cache(self, gen) -> None:
        path = self.store.cache_path
        if gen is None or not path.exists():
            return
        live = self.store.live_hashes(gen)
        cache = _store.EmbeddingCache(path, self.backend.cache_key(self.embed_model), gen.settings["dim"])
        try:
            cache.prune(live)
        finally:
            cache.close()

    # -- search -------------------------------------------------------------------------------
    def _require(self) -> _store.Generation:
        gen = self._generation()
        if gen is None:
            raise IndexError_(self.store.index_hint(self.path, default_index_dir(self.path)))
        if gen is not self._checked:  # once per generation: a warm query need not re-derive the settings
            self._check(gen.settings)
            self._checked = gen
        return gen

    def search(self, query: str, k: int = 5, where: str | None = None, *, nprobe: int | None = None,
               rerank: int | None = None) -> list[Hit]:
        """The k chunks most similar to `query` (cosine), best first; `where` filters them (a Milvus store's
        filter expression, e.g. 'source like "docs/%"'); nprobe, rerank: IVF-PQ only (see search_many)."""
        return self.search_many([query], k, where, nprobe=nprobe, rerank=rerank)[0]

    def search_many(self, queries: list[str], k: int = 5, where: str | None = None, *,
                    nprobe: int | None = None, rerank: int | None = None) -> list[list[Hit]]:
        """Batched search: one model call for all queries. IVF-PQ only (flat and HNSW are exact or near it):
        nprobe, the clusters scanned per query (default: this Corpus's, else the index's measured one);
        rerank, how many PQ candidates are re-scored exactly (default: this Corpus's, else
        store.rerank_pool's; 0: PQ order)."""
        k = _whole_number(k, "k", 1, "it is how many hits a query returns", optional=False)
        nprobe, rerank = _check_nprobe(nprobe), _check_rerank(rerank)
        for q in queries:
            require_text(q, "the query")
        self.store.check_where(where)
        gen = self._require()
        vecs = self.embedder().encode(list(queries))
        return [[Hit(row.doc_id, row.source, row.start_char, row.end_char, row.text, row.title or "",
                     score=round(s, 6), position=row.position, chunk_id=row.id, token_counts=row.counts)
                 for row, s in r]
                for r in self.store.search(gen, vecs, k, where, nprobe=nprobe or self.nprobe,
                                           rerank=self.rerank if rerank is None else rerank)]

    def pack(self, question: str, budget_tokens: int, model, k: int = DEFAULT_TOP_K, order: str = "edges", *,
             per_chunk_overhead_tokens: int = 0, where: str | None = None) -> PackedContext:
        """The best chunks for `question` packed into `budget_tokens` of `model`'s tokens."""
        from ragkit.tokens import counter_for

        return pack_hits(self.search(question, k, where), budget_tokens, counter_for(model), order=order,
                         per_chunk_overhead_tokens=per_chunk_overhead_tokens)

    def stats(self) -> dict:
        gen = self._require()
        return dict(gen.manifest)

    def close(self) -> None:
        with self._gen_lock:
            if self._gen is not None:
                self._gen.close()
                self._gen = None
            self.store.close()


def chunk_file(sf, digest: str, chunker: Chunker, text_field: str, on_skip) -> tuple[_store.FileRecord, list[_store.NewChunk]]:
    """One changed file loaded and chunked: its file record (skipped, with the reasons, when it gave no
    chunks) and its chunks. Every engine calls this, so chunk ids and texts are the same everywhere."""
    from ragkit.tokens import counts_in_every_encoding

    reasons: list[str] = []

    def _skip(rel, reason):
        reasons.append(reason)
        on_skip(rel, reason)

    chunks = chunker.split_many(list(load_file(sf, text_field=text_field, on_skip=_skip)))
    try:
        st = sf.path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    record = _store.FileRecord(sf.rel, size, mtime, digest, len(chunks), "; ".join(reasons) if not chunks else None)
    counts = counts_in_every_encoding([c.text for c in chunks])  # packing then needs no tokenizer call
    return record, [_store.NewChunk(sf.rel, c.doc_id, c.source, c.position, c.start_char, c.end_char,
                                    c.tokens, c.text_hash, c.text, c.title, n) for c, n in zip(chunks, counts)]


def _embed_batches(emb, items: list[tuple[str, str]]):
    """(hashes, vectors) per model batch, computed in this process."""
    for i in range(0, len(items), emb.batch_size):
        part = items[i:i + emb.batch_size]
        yield [h for h, _ in part], emb.encode([t for _, t in part])


def _whole_number(value, name: str, minimum: int, meaning: str, optional: bool = True) -> int | None:
    """`value` as an int when it is a whole number (a numpy integer too, not a bool) of at least `minimum`
    (or None, when optional); anything else is one sentence, not a TypeError or a FAISS overflow deeper down."""
    import numbers

    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be a whole number, {minimum} or more (got {value!r}); {meaning}")
    return int(value)


def _check_nprobe(nprobe) -> int | None:
    return _whole_number(nprobe, "nprobe", 1, "it is how many IVF clusters a query scans")


def _check_rerank(rerank) -> int | None:
    return _whole_number(rerank, "rerank", 0, "it is how many IVF-PQ candidates are re-scored exactly (0 keeps "
                                              "the IVF-PQ order without re-scoring)")


def _wanted_backend(requested: str | None, have: dict | None):
    """The embedding backend: the one asked for (argument or $RAGKIT_EMBED_BACKEND; it must match an
    existing index), else the index's own (queries are embedded as the index was), else the default."""
    from ragkit.config import embed_backend
    from ragkit.embed_export import get_backend

    return get_backend(requested or embed_backend() or (have["embed_backend"] if have else None))


def _is_index_path(path: Path, index_dir: Path) -> bool:
    # os.path.realpath, not Path.resolve(): a symlink loop must not raise here (loading skips it with a warning).
    return Path(os.path.realpath(path)).is_relative_to(index_dir)


class _ProgressBar:
    """rich progress on stderr with chunks/s; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.p = None
        if not enabled or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[rate]} chunks/s"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.t0 = time.perf_counter()
        self.task = self.p.add_task("embed", total=total, rate="-")
        self.p.start()

    def advance(self, n: int) -> None:
        if self.p is None:
            return
        task = self.p.tasks[0]
        done = task.completed + n
        rate = done / max(1e-9, time.perf_counter() - self.t0)
        self.p.update(self.task, advance=n, rate=f"{rate:.0f}")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


class MemoryIndex:
    """Exact search over an in-memory list of passages (no folder, no chunking): for evals."""

    def __init__(self, texts: list[str], ids: list[str] | None = None, embed_model: str | None = None):
        import faiss

        from ragkit.embed import get_embedder

        self.texts = list(texts)
        self.ids = [str(i) for i in (ids if ids is not None else range(len(self.texts)))]
        if len(self.ids) != len(self.texts):
            raise InputError("ids and texts must have the same length")
        self.embedder = get_embedder(embed_model)
        self.vectors = self.embedder.encode(self.texts)
        self.index = faiss.IndexFlatIP(self.embedder.dim)
        self.index.add(self.vectors)
        self._lock = threading.Lock()

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self.search_many([query], k)[0]

    def search_many(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        import faiss

        q = self.embedder.encode(list(queries))
        with self._lock:
            faiss.omp_set_num_threads(1)
            scores, idx = self.index.search(q, min(k, len(self.texts)))
        return [[Hit(self.ids[i], self.ids[i], 0, len(self.texts[i]), self.texts[i], score=round(float(s), 6),
                     chunk_id=int(i))
                 for i, s in zip(row_i, row_s) if i >= 0] for row_i, row_s in zip(idx, scores)]


def build_memory_index(texts: list[str], ids: list[str] | None = None, embed_model: str | None = None) -> MemoryIndex:
    """Embeds `texts` (each whole, up to the model's window) into an exact in-memory index."""
    return MemoryIndex(texts, ids, embed_model)
