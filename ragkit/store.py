"""The index folder: a FAISS index and its chunk table persisted together, written atomically.

Layout of an index folder (default `<corpus>/.ragkit/`):

    CURRENT            {"generation": "g000007"}  -- the only thing a reader trusts
    g000007/           one complete generation
      manifest.json    embedding model, dimension, chunker settings, index type, counts
      index.faiss      IndexIDMap2 over IndexFlatIP (small) or IndexHNSWFlat (large), ids = chunk ids;
                       IndexIVFPQ (very large: its own ids, see "IVF-PQ" below)
      lists.ivfdata    IVF-PQ only, when RAM is short: the inverted lists on disk (OnDiskInvertedLists)
      chunks.sqlite    files (stat + sha256), chunks (text, source, span, content hash), tombstones
    embcache.sqlite    content-hash -> vector, committed batch by batch while embedding
    lock               single-writer lock (fcntl: released by the OS even on kill -9)

Why generations: a build writes a whole new generation into a temp folder, renames it into place
and only then swaps CURRENT with os.replace. A build killed at any point leaves CURRENT pointing at
the previous, complete generation; vectors already embedded survive in embcache.sqlite (SQLite is
crash-safe), so the next run redoes only the cheap parts.

Why IDMap2 + tombstones: ids are stable chunk ids. Flat supports remove_ids, so it stays compact.
HNSW does not support removal; a removed chunk's id goes into `tombstones`, searches over-fetch and
drop them, and the graph is rebuilt from its own stored vectors once tombstones pass 20%. New
vectors are added to the existing graph, never rebuilt from scratch on each change.

IVF-PQ (from IVFPQ_THRESHOLD live chunks): vectors are compressed to IVFPQ_M bytes (product
quantization) and grouped into nlist clusters; a query scans the `nprobe` nearest clusters. It is
trained (k-means) on a sample, once; later updates add and remove_ids on the trained index, and it is
trained again only on a rebuild or once the live chunks reach IVFPQ_RETRAIN_GROWTH x the trained-at
size (recorded in the manifest). PQ codes cannot give the vectors back, so a retrain (or a change of
index type away from IVF-PQ) reads them from embcache.sqlite by content hash. Recall is lossy by
design, so each training measures recall@10 against exact search on a sample of stored vectors,
picks the default nprobe from it and records both in the manifest. When the index would take more
than ONDISK_RAM_FRACTION of the machine's RAM, its inverted lists live in lists.ivfdata (mmapped)
inside the generation folder: the folder is still renamed into place whole. index.faiss records the
lists' path after that rename, but readers never trust a recorded path: `read_index_in` maps the
lists.ivfdata beside index.faiss, so a folder copied or moved elsewhere (`cp -r`) opens its own lists.

Exact re-rank (IVF-PQ): PQ codes cannot order near-duplicate vectors (recall@10 ~0.45 at 1M real
MiniLM vectors, flat in nprobe), so a search takes the top rerank_pool(k) candidates by PQ and
re-scores them by exact inner product with their float vectors, read by primary key from
embcache.sqlite (chunk id -> text_hash -> vector; ~100 rows a query). Nothing is added to the
generation folder: the cache is keyed by content, so any generation reads the same vector for a
hash, an update copies nothing more, and RAM holds only the pool. A vector missing there (cache
deleted, or pruned under an old generation) makes that query keep PQ order, with one warning per
process. The build-time recall goes through the same re-rank (exact_rerank), vectors from RAM.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ragkit.atomic_dir import crash_point as _crash_point  # corpus.py: _store._crash_point
from ragkit.cache_file import connecting, open_cache, recovering
from ragkit.console import encodable
from ragkit.errors import IndexBusy, IndexError_, InputError

FORMAT_VERSION = 1
HNSW_THRESHOLD = 20_000       # live chunks; exact Flat below (≈ 3.6 ms/query at 20K), HNSW above
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128           # recall@10 0.98 -> 0.99 vs 64 on real NQ questions, ~1 ms a query
TOMBSTONE_REBUILD_FRACTION = 0.2
# IVF-PQ tier (see the module docstring and benchmarks/bench_ivfpq.py for the figures behind these).
IVFPQ_THRESHOLD = 5_000_000    # live chunks; HNSW below. HNSW serves from ~1.85 KB a 384-d chunk and a
                               # (re)build also holds the 1.5 KB vectors: ~17 GB at 5M, the most a 24 GB
                               # machine carries; IVF-PQ 56 bytes (100M in ~6 GB) but its recall is lower
                               # (benchmarks/bench_ivfpq.py), so HNSW stays as long as it fits
IVFPQ_M = 48                   # PQ sub-quantizers (bytes per vector at 8 bits); 384-d -> 8-d sub-vectors
IVFPQ_NBITS = 8
IVFPQ_TRAIN_PER_LIST = 40      # k-means sample: points per cluster (FAISS warns below 39)
IVFPQ_KMEANS_ITER = 10         # FAISS's default is 25; 10 costs 2.5x less (coarse and PQ k-means alike)
IVFPQ_PQ_TRAIN_PER_CODE = 64   # PQ codebooks learn from 64 x 256 residuals (FAISS: up to 256 x 256);
                               # 48 k-means of 256 codes each dominate training on 2 cores otherwise
IVFPQ_RETRAIN_GROWTH = 4       # train again when the live chunks reach 4x the trained-at size
IVFPQ_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)   # candidates measured at build
RECALL_TARGET = 0.95           # the default nprobe is the smallest measured that reaches it
RECALL_QUERIES = 200           # stored vectors used as queries for the build-time recall
ONDISK_RAM_FRACTION = 0.25     # inverted lists go to disk when the index would exceed this share of RAM
RERANK_POOL = 100              # IVF-PQ candidates re-scored exactly per query (recall@10 at 100K: 0.66 -> 0.94)
RERANK_PER_K = 10              # ... and at least this many per hit asked for
UNREADABLE = "unreadable"      # the sha256 recorded for a file whose bytes could not be read
LISTS_FILE = "lists.ivfdata"   # IVF-PQ's on-disk inverted lists, beside index.faiss


def create_dir(path: Path) -> None:
    """mkdir -p of a store's folder (the index folder, a Milvus store's state), or one sentence saying why not
    (a file where a folder should be, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the index folder {path} ({exc.strerror or exc}); pick another path "
                         f"(--index-dir, or the --store path)") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (rel TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT,
                                  chunks INTEGER, skipped TEXT);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, rel TEXT NOT NULL, doc_id TEXT NOT NULL,
                                   source TEXT NOT NULL, position INTEGER, start_char INTEGER,
                                   end_char INTEGER, tokens INTEGER, text_hash TEXT, text TEXT, title TEXT,
                                   counts TEXT);
CREATE INDEX IF NOT EXISTS chunks_rel ON chunks(rel);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class Settings:
    """What the vectors depend on: opening an index with different values needs a rebuild."""

    embed_model: str
    dim: int
    chunker: dict
    text_field: str = "text"
    embed_backend: str = "torch"          # how the model was run (ragkit.embed_export.Backend)
    embed_precision: str = "fp32"
    embed_quantization: str | None = None

    def to_dict(self) -> dict:
        return {"embed_model": self.embed_model, "dim": self.dim, "chunker": dict(self.chunker),
                "text_field": self.text_field, "embed_backend": self.embed_backend,
                "embed_precision": self.embed_precision, "embed_quantization": self.embed_quantization}


# What a manifest written before embedding backends existed was built with.
LEGACY_SETTINGS = {"embed_backend": "torch", "embed_precision": "fp32", "embed_quantization": None}


@dataclass
class FileRecord:
    rel: str
    size: int
    mtime_ns: int
    sha256: str
    chunks: int = 0
    skipped: str | None = None


@dataclass
class NewChunk:
    rel: str
    doc_id: str
    source: str
    position: int
    start_char: int
    end_char: int
    tokens: int
    text_hash: str     # of the embedded text (title + text): the embedding cache key
    text: str
    title: str = ""
    counts: dict | None = None  # the text's tokens per counting encoding (ragkit.tokens.counts_in_every_encoding)


@dataclass
class ChunkRow:
    id: int
    doc_id: str
    source: str
    position: int
    start_char: int
    end_char: int
    text: str
    tokens: int
    title: str
    counts: dict | None = None  # None: an index written before chunks kept their counts


def damaged_message(index_dir: Path, what: str) -> str:
    return f"the index at {index_dir} is damaged ({what}); rebuild it with `ragkit index <PATH> --rebuild`"


def mismatch_message(index_dir: Path, have: dict, want: dict) -> str:
    diffs = [f"{k}: index has {have.get(k)!r}, requested {want.get(k)!r}" for k in sorted(set(have) | set(want))
             if have.get(k) != want.get(k)]
    return (f"the index at {index_dir} was built with different settings ({'; '.join(diffs)}). "
            f"Rebuild it with `ragkit index <PATH> --rebuild` (re-embeds everything), or open it with its own "
            f"settings (e.g. --embed-model {have.get('embed_model')!r} --embed-backend {have.get('embed_backend')!r}).")


def _setup_embedding_cache(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, hash TEXT, vec BLOB, PRIMARY KEY(model, hash))")
    db.commit()


class EmbeddingCache:
    """content hash -> float32 vector, per model; committed in batches so a killed build keeps its work.
    A damaged file is moved aside and the cache started afresh (ragkit.cache_file)."""

    WHAT, LOSS = "embedding cache", "vectors it held are computed again"   # cache_file's warning

    def __init__(self, path: Path, model: str, dim: int):
        self.path, self.model, self.dim = path, model, dim
        self._db = open_cache(path, self._connect, self.WHAT, self.LOSS)

    _connect = staticmethod(connecting(_setup_embedding_cache))

    @recovering
    def get_many(self, hashes: list[str]) -> dict:
        return _read_vectors(self._db, self.model, self.dim, hashes)

    @recovering
    def put_many(self, hashes: list[str], vecs) -> None:
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?,?,?)",
                            [(self.model, h, v.astype("float32").tobytes()) for h, v in zip(hashes, vecs)])
        self._db.commit()

    @recovering
    def prune(self, live_hashes: set[str]) -> None:
        """Drops vectors no live chunk uses, once they outnumber the live ones by half."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()
        if n <= max(1000, 1.5 * len(live_hashes)):
            return
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (hash TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM keep")
        self._db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", [(h,) for h in live_hashes])
        self._db.execute("DELETE FROM vectors WHERE model != ? OR hash NOT IN (SELECT hash FROM keep)", [self.model])
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def _read_vectors(db: sqlite3.Connection, model: str, dim: int, hashes: list[str]) -> dict:
    """{hash: float32 vector} of those of `hashes` the embedding cache holds for `model`."""
    import numpy as np

    out = {}
    for i in range(0, len(hashes), 900):
        part = hashes[i:i + 900]
        q = f"SELECT hash, vec FROM vectors WHERE model=? AND hash IN ({','.join('?' * len(part))})"
        for h, blob in db.execute(q, [model, *part]):
            # a row of another size, type or NaNs (a damaged page SQLite cannot tell) reads as missing
            if isinstance(blob, bytes) and len(blob) == 4 * dim:
                v = np.frombuffer(blob, dtype="float32")
                if np.isfinite(v).all():
                    out[h] = v
    return out


class CachedVectorReader:
    """Read-only lookups in the embedding cache for IVF-PQ re-ranking, shared by a generation's threads.
    A search never creates, writes or moves the file: one that is missing, damaged or not yet
    readable reads as holding nothing (the caller falls back), and is tried again on the next call."""

    BUSY_TIMEOUT_S = 0.2  # a cache locked longer (another process's exclusive lock) falls back, not stalls

    def __init__(self, path: Path, model: str, dim: int):
        self.path, self.model, self.dim = path, model, dim
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def get_many(self, hashes: list[str]) -> dict:
        with self._lock:
            try:
                if self._db is None:
                    self._db = sqlite3.connect(read_only_uri(self.path), uri=True, check_same_thread=False,
                                               timeout=self.BUSY_TIMEOUT_S)
                return _read_vectors(self._db, self.model, self.dim, hashes)
            except sqlite3.Error:
                self._close()
                return {}

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        with self._lock:
            self._close()


def rerank_pool(k: int, rerank: int | None = None) -> int:
    """IVF-PQ candidates to re-score exactly for a top-k search: `rerank` (0: none, PQ order), by default
    max(RERANK_POOL, RERANK_PER_K x k); never fewer than k."""
    if rerank == 0:
        return 0
    return max(k, rerank if rerank is not None else max(RERANK_POOL, RERANK_PER_K * k))


def exact_rerank(queries, candidates: list[list[int]], vectors_of) -> list[list[tuple[int, float]] | None]:
    """Each query's candidate ids ordered by exact inner product with their stored vectors, best first,
    as (id, score). `vectors_of(ids) -> {id: vector}`; a query with a candidate it cannot give back gets
    None (the caller keeps its PQ order: mixing exact and PQ scores would rank wrongly)."""
    import numpy as np

    found = vectors_of(sorted({i for row in candidates for i in row}))
    out: list[list[tuple[int, float]] | None] = []
    for q, row in zip(queries, candidates):
        if not row or any(i not in found for i in row):
            out.append(None if row else [])
            continue
        scores = np.stack([found[i] for i in row]) @ np.asarray(q, dtype="float32")
        order = np.argsort(-scores, kind="stable")
        out.append([(row[j], float(scores[j])) for j in order])
    return out


_fallback_warned = threading.Lock()  # taken, never released, by the one search that warns


def _warn_no_rerank(cache_path: Path) -> None:
    """Once per process: a search kept PQ order because the embedding cache lacked a candidate's vector."""
    if not _fallback_warned.acquire(blocking=False):
        return
    from ragkit.console import warn

    warn(f"the embedding cache {cache_path} lacks vectors of this IVF-PQ index (deleted, pruned, damaged or "
         f"locked by another process), so "
         f"some searches keep the index's approximate order (lower recall); rebuild it with "
         f"`ragkit index <PATH> --rebuild` to restore the exact re-rank")


def _index_vectors(index):
    """(ids, vectors) stored in an IndexIDMap2 over Flat or HNSWFlat, without re-embedding (IVF-PQ
    keeps only lossy codes: see _live_old_vectors)."""
    import faiss
    import numpy as np

    inner = faiss.downcast_index(index.index)
    flat = faiss.downcast_index(inner.storage) if hasattr(inner, "storage") else inner
    vecs = faiss.vector_to_array(flat.codes).view("float32").reshape(-1, index.d)
    ids = faiss.vector_to_array(index.id_map).astype("int64")
    return ids, np.ascontiguousarray(vecs)


def read_faiss(path: Path, flags: int = 0):
    """faiss.read_index, also under a folder whose name is not UTF-8 (FAISS takes only UTF-8 paths:
    such a file is read by Python and handed over as bytes; on-disk IVF lists need a UTF-8 path)."""
    import faiss

    if encodable(str(path)) == str(path):
        return faiss.read_index(str(path), flags)
    import numpy as np

    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.fromfile(path, dtype="uint8"), reader.data)
    return faiss.read_index(reader, flags)


def read_index_in(folder: Path, writable: bool = False):
    """The index.faiss of a generation folder. Its on-disk IVF lists (if any) are mapped from the
    lists.ivfdata beside it, whatever path index.faiss recorded: a copied or moved folder, and indexes
    written before the recorded path was the final one, point at a temp folder or at another copy.
    FAISS's own IO_FLAG_ONDISK_SAME_DIR does the same but printf's "updating ondisk filename" to C's
    stdout on every open, which reaches the process's stdout at exit (after `search --json` output).
    Readers map the lists read-only; `writable` is for a build's own copy (add/remove write in place)."""
    import faiss

    lists = folder / LISTS_FILE
    if not lists.exists():
        return read_faiss(folder / "index.faiss")
    index = read_faiss(folder / "index.faiss", faiss.IO_FLAG_SKIP_IVF_DATA)  # the list table, nothing mapped
    ondisk = _ondisk_lists(index)
    if ondisk is None:
        raise ValueError(f"{LISTS_FILE} is present but index.faiss has no on-disk inverted lists")
    size = lists.stat().st_size
    if size < ondisk.totsize:  # mapping past the end of the file would crash the first search (SIGBUS)
        raise ValueError(f"{LISTS_FILE} has {size} bytes, index.faiss expects {ondisk.totsize}")
    ondisk.filename = str(lists.absolute())
    ondisk.read_only = not writable
    ondisk.do_mmap()
    return index


def _ondisk_lists(index):
    """The OnDiskInvertedLists of an IVF index, or None (lists in RAM, or not IVF)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def write_faiss(index, path: Path) -> None:
    """faiss.write_index, also under a folder whose name is not UTF-8 (see read_faiss)."""
    import faiss

    if encodable(str(path)) == str(path):
        faiss.write_index(index, str(path))
    else:
        faiss.serialize_index(index).tofile(path)


def choose_kind(live: int, old_kind: str | None, hnsw_threshold: int = HNSW_THRESHOLD,
                ivfpq_threshold: int = IVFPQ_THRESHOLD) -> str:
    """flat, hnsw or ivfpq by live chunk count; an existing index keeps its kind until the count falls
    to half of the threshold that brought it in (no flipping back and forth around a threshold)."""
    if live >= ivfpq_threshold or (old_kind == "ivfpq" and live > ivfpq_threshold // 2):
        return "ivfpq"
    if live >= hnsw_threshold or (old_kind in ("hnsw", "ivfpq") and live > hnsw_threshold // 2):
        return "hnsw"
    return "flat"


def ivf_nlist(n: int) -> int:
    """Clusters for n vectors: the power of two nearest sqrt(n), capped so the k-means sample keeps
    IVFPQ_TRAIN_PER_LIST points per cluster. FAISS suggests 4-16 sqrt(n) for speed at query time; on
    2 cores the k-means training and the assignment of every vector cost in proportion to nlist, and
    a query at sqrt(n) lists still scans only nprobe*sqrt(n) PQ codes (16K at 1M, nprobe 16: < 1 ms)."""
    import math

    want = 2 ** round(math.log2(max(1.0, math.sqrt(max(n, 1)))))
    cap = 2 ** int(math.log2(max(1, n // IVFPQ_TRAIN_PER_LIST))) if n >= IVFPQ_TRAIN_PER_LIST else 1
    return max(1, min(want, cap))


def new_faiss_index(kind: str, dim: int, n: int = 0):
    """An empty index of `kind`; for ivfpq an untrained IndexIVFPQ sized for n vectors."""
    import faiss

    if kind == "ivfpq":
        m = IVFPQ_M if dim % IVFPQ_M == 0 else next(m for m in (64, 32, 24, 16, 8, 4, 2, 1) if dim % m == 0)
        index = faiss.index_factory(dim, f"IVF{ivf_nlist(n)},PQ{m}x{IVFPQ_NBITS}", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = ivf.pq.cp.niter = IVFPQ_KMEANS_ITER
        ivf.pq.cp.max_points_per_centroid = IVFPQ_PQ_TRAIN_PER_CODE
        ivf.do_polysemous_training = False  # index_factory turns it on; it costs minutes and we scan codes anyway
        return index
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)


def read_only_uri(path: Path) -> str:
    """The SQLite URI opening `path` read-only. Its bytes are percent-encoded: a folder named `what?`,
    `#1` or `100%` would otherwise end the path early (and open another file), one not UTF-8 fail."""
    from urllib.parse import quote

    return f"file:{quote(os.fsencode(path))}?mode=ro"


class Generation:
    """A readable, complete generation of an index folder (what searches use)."""

    def __init__(self, index_dir: Path, name: str):
        """Raises OSError, ValueError, KeyError, sqlite3.DatabaseError or RuntimeError (faiss) when
        the generation's files are missing or damaged: `open_generation` turns them into one sentence."""
        self.index_dir, self.name = index_dir, name
        self.path = index_dir / name
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.tombstones = int(self.manifest.get("tombstones", 0))
        self.kind = self.manifest["index_type"]
        if "dim" not in self.manifest["settings"]:
            raise KeyError("settings.dim")
        # IVF-PQ re-rank: the vectors by content hash in the index folder's embedding cache (opened on first use)
        self._cache = self._vector_reader()
        self.db = sqlite3.connect(read_only_uri(self.path / "chunks.sqlite"), uri=True, check_same_thread=False)
        self._db_lock = threading.Lock()
        try:
            self.db.execute("SELECT 1 FROM files LIMIT 1").fetchall()  # reads the header: garbage fails here
            self._counts_column = "counts" if _has_counts_column(self.db) else "NULL"
            self.index = read_index_in(self.path)
        except BaseException:
            self.db.close()
            raise

    @contextmanager
    def _reading(self):
        """The chunk table under its lock; a page damaged after opening is one clear error, not a traceback."""
        with self._db_lock:
            try:
                yield self.db
            except sqlite3.DatabaseError as exc:
                raise IndexError_(damaged_message(self.index_dir, f"{self.name}/chunks.sqlite: {exc}")) from None

    @property
    def settings(self) -> dict:
        return {**LEGACY_SETTINGS, **self.manifest["settings"]}

    @property
    def live_chunks(self) -> int:
        return int(self.manifest["chunks"])

    @property
    def nprobe(self) -> int | None:
        """IVF-PQ: clusters scanned per query by default (measured at build, or set by `index --nprobe`)."""
        ivf = self.manifest.get("ivfpq")
        return int(ivf["nprobe"]) if ivf else None

    @property
    def nlist(self) -> int | None:
        """IVF-PQ: the clusters there are (an nprobe above it scans them all)."""
        ivf = self.manifest.get("ivfpq")
        return int(ivf["nlist"]) if ivf else None

    def search(self, queries, k: int, nprobe: int | None = None,
               rerank: int | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (chunk id, score) per query vector; tombstoned ids are over-fetched and dropped.
        IVF-PQ only (other kinds ignore them): nprobe overrides the index's default; the top
        rerank_pool(k, rerank) PQ candidates are re-scored exactly (rerank=0: PQ order and scores)."""
        import faiss

        n = len(queries)
        if n == 0 or self.index.ntotal == 0:
            return [[] for _ in range(n)]
        # One query: one OpenMP thread is faster (memory-bound, and the machine is shared); batches use BLAS.
        from ragkit.embed import default_threads

        faiss.omp_set_num_threads(1 if n < 20 else default_threads())
        pool = rerank_pool(k, rerank) if self.kind == "ivfpq" else 0
        fetch = min(self.index.ntotal, max(k, pool) + (min(self.tombstones, 4 * k + 64) if self.tombstones else 0))
        while True:
            params = None
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW()
                params.efSearch = max(HNSW_EF_SEARCH, fetch)
            elif self.kind == "ivfpq":
                params = faiss.SearchParametersIVF()
                params.nprobe = min(int(nprobe or self.nprobe), self.nlist)  # more lists than exist: all of them
            scores, ids = self.index.search(queries, fetch, params=params)
            out = [[(int(i), float(s)) for i, s in zip(row_i, row_s) if i >= 0] for row_i, row_s in zip(ids, scores)]
            if self.tombstones:
                dead = self._dead({i for row in out for i, _ in row})
                out = [[(i, s) for i, s in row if i not in dead] for row in out]
                if any(len(r) < k for r in out) and fetch < self.index.ntotal:
                    fetch = min(self.index.ntotal, fetch * 4)
                    continue
            if pool:
                out = self._reranked(queries, out)
            return [r[:k] for r in out]

    def _reranked(self, queries, found: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
        """PQ candidates re-scored by exact inner product; a query missing a vector keeps PQ order."""
        ranked = exact_rerank(queries, [[i for i, _ in row] for row in found], self.exact_vectors)
        if any(r is None for r in ranked):
            _warn_no_rerank(self.index_dir / "embcache.sqlite")
        return [pq if r is None else r for r, pq in zip(ranked, found)]

    def exact_vectors(self, ids: list[int]) -> dict:
        """{chunk id: float32 vector} from the embedding cache by the chunks' content hashes (what an
        IVF-PQ search re-ranks with); ids whose vector the cache lacks are left out."""
        hash_of: dict[int, str] = {}
        with self._reading() as db:
            for i in range(0, len(ids), 900):
                part = [int(x) for x in ids[i:i + 900]]
                q = f"SELECT id, text_hash FROM chunks WHERE id IN ({','.join('?' * len(part))})"
                hash_of.update(db.execute(q, part).fetchall())
        vecs = self._cache.get_many(list(set(hash_of.values())))
        return {i: vecs[h] for i, h in hash_of.items() if h in vecs}

    def _vector_reader(self) -> CachedVectorReader:
        from ragkit.embed_export import embedding_cache_key

        st = self.settings
        key = embedding_cache_key(st["embed_model"], st["embed_backend"], st["embed_precision"],
                                  st["embed_quantization"])
        return CachedVectorReader(self.index_dir / "embcache.sqlite", key, int(st["dim"]))

    def _dead(self, ids: set[int]) -> set[int]:
        if not ids:
            return set()
        with self._reading() as db:
            q = f"SELECT id FROM tombstones WHERE id IN ({','.join('?' * len(ids))})"
            return {r[0] for r in db.execute(q, list(ids))}

    def chunks(self, ids: list[int]) -> dict[int, ChunkRow]:
        out: dict[int, ChunkRow] = {}
        with self._reading() as db:
            for i in range(0, len(ids), 900):
                part = ids[i:i + 900]
                q = (f"SELECT id, doc_id, source, position, start_char, end_char, text, tokens, title, "
                     f"{self._counts_column} FROM chunks WHERE id IN ({','.join('?' * len(part))})")
                for *row, counts in db.execute(q, part):
                    out[row[0]] = ChunkRow(*row, json.loads(counts) if counts else None)
        return out

    def files(self) -> dict[str, FileRecord]:
        with self._reading() as db:
            return {r[0]: FileRecord(*r) for r in db.execute(
                "SELECT rel, size, mtime_ns, sha256, chunks, skipped FROM files")}

    def close(self) -> None:
        self.db.close()
        self._cache.close()


def _has_counts_column(db: sqlite3.Connection) -> bool:
    return any(r[1] == "counts" for r in db.execute("PRAGMA table_info(chunks)"))


def read_current(index_dir: Path) -> str | None:
    try:
        return json.loads((index_dir / "CURRENT").read_text())["generation"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError) as exc:  # garbage, a list, a directory...
        raise IndexError_(damaged_message(index_dir, f"CURRENT: {type(exc).__name__}: {exc}")) from None


def open_generation(index_dir: Path) -> Generation | None:
    """The current generation, or None when the folder holds no complete index yet."""
    for _ in range(5):  # a writer may replace CURRENT and delete an old generation between our reads
        name = read_current(index_dir)
        if name is None:
            return None
        try:
            gen = Generation(index_dir, name)
        except (OSError, sqlite3.DatabaseError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            if read_current(index_dir) != name:
                continue
            raise IndexError_(damaged_message(index_dir, f"generation {name} unreadable: {type(exc).__name__}: "
                                                         f"{exc}")) from None
        if gen.manifest.get("format") != FORMAT_VERSION:
            raise IndexError_(f"the index at {index_dir} has format {gen.manifest.get('format')}, this ragkit "
                              f"reads {FORMAT_VERSION}; rebuild with `ragkit index <PATH> --rebuild`")
        return gen
    raise IndexError_(f"the index at {index_dir} kept changing while opening it; try again")


def current_settings(index_dir: Path) -> dict | None:
    """The current generation's settings, read from its manifest without loading FAISS: what opening a
    Corpus needs (stuffing and `ragkit plan` never search). None when there is no index yet."""
    for _ in range(5):  # as in open_generation: CURRENT may move on between our reads
        name = read_current(index_dir) if index_dir.is_dir() else None
        if name is None:
            return None
        try:
            return {**LEGACY_SETTINGS, **json.loads((index_dir / name / "manifest.json").read_text())["settings"]}
        except FileNotFoundError:
            if read_current(index_dir) != name:
                continue
        except (ValueError, KeyError):
            pass
        raise IndexError_(f"the index at {index_dir} is damaged (generation {name} unreadable); "
                          f"rebuild with `ragkit index <PATH> --rebuild`")
    raise IndexError_(f"the index at {index_dir} kept changing while opening it; try again")


class WriteLock:
    """One writer per index folder. With timeout 0 the second one gets IndexBusy at once (a clear
    error); readers that need a first index wait a bounded time instead (timeout_s > 0)."""

    def __init__(self, index_dir: Path, timeout_s: float = 0):
        from filelock import FileLock

        self.index_dir = index_dir
        self.info = index_dir / "lock.info"
        self.lock = FileLock(str(index_dir / "lock"), timeout=timeout_s)

    def holder(self) -> str:
        """'pid N, since T' of the process holding the lock, or '' when unknown."""
        try:
            return self.info.read_text().strip()
        except OSError:
            return ""

    def __enter__(self):
        from filelock import Timeout

        try:
            self.lock.acquire()
        except Timeout:
            holder = self.holder()
            raise IndexBusy(f"another `ragkit index` is already updating {self.index_dir}"
                            f"{f' ({holder})' if holder else ''}; wait for it to finish and run again "
                            f"(searches and questions keep working meanwhile)", holder) from None
        # Written whole and renamed into place: a reader never sees a half-written holder.
        tmp = self.info.with_name(f"lock.info.{os.getpid()}")
        tmp.write_text(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.replace(tmp, self.info)
        return self

    def __exit__(self, *exc):
        self.lock.release()


@dataclass
class Changes:
    """The difference between the files on disk and the current generation."""

    added: list = field(default_factory=list)      # SourceFile
    changed: list = field(default_factory=list)    # SourceFile
    removed: list = field(default_factory=list)    # rel
    unchanged: int = 0
    unchanged_rels: set = field(default_factory=set)
    restat: dict = field(default_factory=dict)     # rel -> FileRecord (same content, new stat)
    hashes: dict = field(default_factory=dict)     # rel -> sha256 of added/changed

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def _content_hash(path: Path, st: os.stat_result | None) -> str:
    """sha256 of a regular file's bytes, or UNREADABLE (never opens a FIFO or device: it could block)."""
    from ragkit.loaders import file_sha256

    if st is None or not stat.S_ISREG(st.st_mode):
        return UNREADABLE
    try:
        return file_sha256(path)
    except OSError:
        return UNREADABLE


def scan_changes(files, old: dict[str, FileRecord]) -> Changes:
    """Stat first (size + mtime, like git); hash only files whose stat moved.

    A file recorded as UNREADABLE is hashed again every run: reading can start to work with nothing
    in its stat changing (chmod moves only ctime), and then it must be indexed. A file that cannot
    even be stat'ed (dangling symlink, symlink loop) counts as changed, so it is loaded and warned about."""
    ch = Changes()
    seen = set()
    for sf in files:
        seen.add(sf.rel)
        try:
            st = sf.path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            st, size, mtime = None, -1, -1
        rec = old.get(sf.rel)
        if rec and st is not None and rec.sha256 != UNREADABLE and (rec.size, rec.mtime_ns) == (size, mtime):
            ch.unchanged += 1
            ch.unchanged_rels.add(sf.rel)
            continue
        digest = _content_hash(sf.path, st)
        if rec and rec.sha256 == digest:
            ch.unchanged += 1
            ch.unchanged_rels.add(sf.rel)
            if (rec.size, rec.mtime_ns) != (size, mtime):  # same content, new stat: refresh the row only
                ch.restat[sf.rel] = FileRecord(sf.rel, size, mtime, digest, rec.chunks, rec.skipped)
            continue
        ch.hashes[sf.rel] = digest
        (ch.changed if rec else ch.added).append(sf)
    ch.removed = sorted(set(old) - seen)
    return ch


def write_generation(index_dir: Path, old: Generation | None, settings: Settings, *,
                     remove_rels: list[str], file_records: list[FileRecord], new_chunks: list[NewChunk],
                     new_vectors, hnsw_threshold: int = HNSW_THRESHOLD, after: Generation | None = None,
                     ivfpq_threshold: int = IVFPQ_THRESHOLD, nprobe: int | None = None,
                     cache_vectors=None, ivf_ondisk: bool | None = None) -> dict:
    """Writes the next generation atomically and makes it current. Returns its manifest.

    `old` is the generation the new one extends (None = from nothing); `after` is the current one
    (differs from `old` on --rebuild) and only sets the generation number. IVF-PQ only: `nprobe`
    replaces the measured default; `cache_vectors(hashes) -> {hash: vector}` gives back the vectors
    PQ codes cannot (to retrain, or to leave IVF-PQ); `ivf_ondisk` forces on-disk lists on (True) or
    off (False) instead of deciding by size."""
    import faiss
    import numpy as np

    index_dir.mkdir(parents=True, exist_ok=True)
    after = after or old
    prev_no = int(after.name[1:]) if after else 0
    name = f"g{prev_no + 1:06d}"
    tmp = index_dir / f"tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    db_path = tmp / "chunks.sqlite"
    if old:
        with sqlite3.connect(str(db_path)) as dst:  # consistent copy, even of a db a reader holds open
            old.db.backup(dst)
    db = sqlite3.connect(str(db_path))
    try:
        db.executescript(_SCHEMA)
        if not _has_counts_column(db):  # a generation written before chunks kept their counts: its rows stay NULL
            db.execute("ALTER TABLE chunks ADD COLUMN counts TEXT")

        # 1. Chunk table: drop rows of removed/changed files, append new rows with fresh, never-reused ids.
        removed_ids: list[int] = []
        for i in range(0, len(remove_rels), 900):
            part = remove_rels[i:i + 900]
            marks = ",".join("?" * len(part))
            removed_ids += [r[0] for r in db.execute(f"SELECT id FROM chunks WHERE rel IN ({marks})", part)]
            db.execute(f"DELETE FROM chunks WHERE rel IN ({marks})", part)
            db.execute(f"DELETE FROM files WHERE rel IN ({marks})", part)
        row = db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        next_id = int(row[0]) if row else 0
        new_ids = np.arange(next_id, next_id + len(new_chunks), dtype="int64")
        db.executemany("INSERT INTO chunks (id, rel, doc_id, source, position, start_char, end_char, tokens, "
                       "text_hash, text, title, counts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       [(int(i), c.rel, c.doc_id, c.source, c.position, c.start_char, c.end_char, c.tokens,
                         c.text_hash, c.text, c.title, json.dumps(c.counts) if c.counts else None)
                        for i, c in zip(new_ids, new_chunks)])
        db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", [str(next_id + len(new_chunks))])
        db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)",
                       [(f.rel, f.size, f.mtime_ns, f.sha256, f.chunks, f.skipped) for f in file_records])
        (live,) = db.execute("SELECT COUNT(*) FROM chunks").fetchone()

        # 2. Vectors: extend the old index in place when possible, otherwise build from stored vectors.
        dim = settings.dim
        new_vectors = np.ascontiguousarray(new_vectors, dtype="float32").reshape(-1, dim)
        old_kind = old.kind if old else None
        want_kind = choose_kind(live, old_kind, hnsw_threshold, ivfpq_threshold)
        ivf = dict(old.manifest.get("ivfpq") or {}) if old_kind == "ivfpq" else {}
        index = None  # None: built afresh below
        if old_kind == want_kind == "flat":
            index = read_faiss(old.path / "index.faiss")
            if removed_ids:
                index.remove_ids(np.array(removed_ids, dtype="int64"))
            index.add_with_ids(new_vectors, new_ids)
            db.execute("DELETE FROM tombstones")
        elif old_kind == want_kind == "hnsw":
            db.executemany("INSERT OR IGNORE INTO tombstones VALUES (?)", [(i,) for i in removed_ids])
            (dead,) = db.execute("SELECT COUNT(*) FROM tombstones").fetchone()
            if dead <= TOMBSTONE_REBUILD_FRACTION * (int(old.manifest["vectors"]) + len(new_ids)):
                index = read_faiss(old.path / "index.faiss")
                index.add_with_ids(new_vectors, new_ids)
        elif old_kind == want_kind == "ivfpq" and live < IVFPQ_RETRAIN_GROWTH * int(ivf["trained_at"]):
            # on the trained index, no retraining: IVF removes ids itself, so no tombstones either
            index = _open_ivf_copy(old, tmp)
            with _stdout_to_stderr(ivf.get("ondisk", False)):
                if removed_ids:
                    index.remove_ids(np.array(removed_ids, dtype="int64"))
                if len(new_ids):
                    index.add_with_ids(new_vectors, new_ids)
            if nprobe:
                ivf["nprobe"] = min(int(nprobe), int(ivf["nlist"]))
        if index is None:
            # first build, a change of index type, an HNSW past its tombstone limit, or an IVF-PQ to retrain
            ids, vecs = (_live_old_vectors(old, db, cache_vectors, next_id) if old is not None
                         else (np.zeros(0, "int64"), np.zeros((0, dim), "float32")))
            ids, vecs = np.concatenate([ids, new_ids]), np.concatenate([vecs, new_vectors])
            if want_kind == "ivfpq":
                index, ivf = _train_ivfpq(dim, ids, vecs, tmp, ivf_ondisk, nprobe)
                ivf["trained_in"] = name
            else:
                index = _rebuild(want_kind, dim, ids, vecs)
            db.execute("DELETE FROM tombstones")
        (dead,) = db.execute("SELECT COUNT(*) FROM tombstones").fetchone()
        db.commit()
    except BaseException:
        # released now, not whenever the garbage collector gets to it: its rollback would delete the
        # journal of the next build in this process, which reuses the same temp folder name
        db.close()
        raise
    db.close()
    _crash_point("before_index_write")
    final = index_dir / name
    with _lists_recorded_as(index, final / LISTS_FILE):
        write_faiss(index, tmp / "index.faiss")

    manifest = {
        "format": FORMAT_VERSION, "generation": name, "settings": settings.to_dict(),
        "index_type": want_kind, "chunks": int(live), "vectors": int(index.ntotal), "tombstones": int(dead),
        "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
        if want_kind == "hnsw" else None,
        "ivfpq": ivf if want_kind == "ivfpq" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for f in ("chunks.sqlite", "index.faiss", "manifest.json", LISTS_FILE):
        if f != LISTS_FILE or (tmp / f).exists():
            _fsync_file(tmp / f)
    _crash_point("before_rename")
    if final.exists():  # left by a run killed between rename and pointer swap: never current, safe to drop
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(index_dir)
    _crash_point("before_pointer")
    ptr_tmp = index_dir / "CURRENT.tmp"
    with open(ptr_tmp, "w") as f:
        f.write(json.dumps({"generation": name}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(ptr_tmp, index_dir / "CURRENT")
    _fsync_dir(index_dir)
    _crash_point("after_pointer")
    cleanup(index_dir, keep={name, after.name if after else name})
    return manifest


def _live_old_vectors(old: "Generation", db, cache_vectors, first_new_id: int):
    """(ids, vectors) of the live chunks the old generation already held (the new ones excluded):
    read back from a Flat/HNSW index, or from the embedding cache for IVF-PQ (PQ codes are lossy)."""
    import faiss
    import numpy as np

    if old.kind in ("flat", "hnsw"):
        ids, vecs = _index_vectors(read_faiss(old.path / "index.faiss"))
        live = {r[0] for r in db.execute("SELECT id FROM chunks")}
        keep = np.fromiter((i in live for i in ids), dtype=bool, count=len(ids))
        return ids[keep], np.ascontiguousarray(vecs[keep])
    dim = old.settings["dim"]
    rows = db.execute("SELECT id, text_hash FROM chunks WHERE id < ? ORDER BY id", [first_new_id]).fetchall()
    found = cache_vectors(list({h for _, h in rows})) if cache_vectors and rows else {}
    if any(h not in found for _, h in rows):
        raise IndexError_(f"the IVF-PQ index at {old.index_dir} needs its vectors again (to retrain or change "
                          f"index type) and the embedding cache lacks some; rebuild it with "
                          f"`ragkit index <PATH> --rebuild`")
    ids = np.array([i for i, _ in rows], dtype="int64")
    vecs = np.stack([found[h] for _, h in rows]).astype("float32") if rows else np.zeros((0, dim), "float32")
    return ids, vecs


def _rebuild(kind: str, dim: int, ids, vecs):
    """A fresh Flat or HNSW index of the given vectors."""
    index = new_faiss_index(kind, dim)
    if len(ids):
        index.add_with_ids(vecs, ids)
    return index


@contextmanager
def _lists_recorded_as(index, path: Path):
    """On-disk lists written into index.faiss with the path they will have once the temp folder is
    renamed into place (plain faiss.read_index then finds them); the index keeps using its temp file."""
    ondisk = _ondisk_lists(index)
    if ondisk is None:
        yield
        return
    building = ondisk.filename
    ondisk.filename = str(path.absolute())
    try:
        yield
    finally:
        ondisk.filename = building


@contextmanager
def _stdout_to_stderr(enabled: bool = True):
    """FAISS's OnDiskInvertedLists prints "resizing ..." with C printf on every growth of its file;
    that must not land in stdout (`ragkit index --json`). Only the single writer (under the lock) uses it."""
    if not enabled:
        yield
        return
    import sys

    import ctypes

    libc_fflush = ctypes.CDLL(None).fflush  # C's stdout is buffered apart from Python's: flush both
    sys.stdout.flush()
    libc_fflush(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc_fflush(None)  # FAISS's lines still in C's buffer go to stderr now, not to stdout at exit
        os.dup2(saved, 1)
        os.close(saved)


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def ivfpq_bytes(n: int, dim: int, nlist: int, m: int = IVFPQ_M) -> int:
    """FAISS's in-RAM layout of IndexIVFPQ: per vector m code bytes + an 8-byte id, plus the coarse
    centroids (nlist x dim floats) and the PQ codebooks (dim x 256 floats)."""
    return n * (m + 8) + nlist * dim * 4 + dim * (1 << IVFPQ_NBITS) * 4


def ivf_recall(index, queries, truth_ids, nprobes, k: int = 10, pool: int = 0,
               vectors_of=None) -> dict[int, float]:
    """recall@k of an IVF index at each nprobe against exact neighbour ids (truth_ids: n x k); with a
    pool, of what searches return: the top `pool` by PQ re-ranked exactly (exact_rerank, vectors_of)."""
    import faiss

    out = {}
    nlist = faiss.extract_index_ivf(index).nlist
    for nprobe in nprobes:
        if nprobe > nlist:
            break
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe)
        _, got = index.search(queries, min(index.ntotal, max(k, pool)), params=params)
        got = [[int(i) for i in row if i >= 0] for row in got]
        if pool:
            got = [[i for i, _ in r] for r in exact_rerank(queries, got, vectors_of)]
        out[int(nprobe)] = float(sum(len(set(a) & set(b[:k])) for a, b in zip(truth_ids, got)) / (k * len(queries)))
    return out


def _vectors_by_id(ids, vecs):
    """vectors_of for exact_rerank over vectors in RAM (ids -> rows of vecs), without a per-id dict."""
    import numpy as np

    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def vectors_of(want: list[int]) -> dict:
        want_a = np.asarray(want, dtype="int64")
        pos = np.clip(np.searchsorted(sorted_ids, want_a), 0, max(len(ids) - 1, 0))
        return {int(i): vecs[order[p]] for i, p in zip(want_a, pos) if len(ids) and sorted_ids[p] == i}
    return vectors_of


def choose_nprobe(recalls: dict[int, float], target: float = RECALL_TARGET) -> int:
    """The smallest nprobe reaching the target; if none does (PQ bounds recall), the smallest within
    0.01 of the best measured."""
    for nprobe in sorted(recalls):
        if recalls[nprobe] >= target:
            return nprobe
    best = max(recalls.values())
    return min(n for n, r in recalls.items() if r >= best - 0.01)


def _train_ivfpq(dim: int, ids, vecs, tmp: Path, ondisk: bool | None, nprobe: int | None):
    """A trained, filled IVF-PQ index of (ids, vecs) and its manifest entry with the measured recall."""
    import faiss
    import numpy as np

    n = len(ids)
    index = new_faiss_index("ivfpq", dim, n)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    rng = np.random.default_rng(0)
    n_train = min(n, max(ivf.nlist * IVFPQ_TRAIN_PER_LIST, 40 * (1 << IVFPQ_NBITS)))
    t0 = time.perf_counter()
    index.train(vecs[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else vecs)
    train_s = time.perf_counter() - t0
    if ondisk is None:
        ondisk = ivfpq_bytes(n, dim, ivf.nlist, ivf.pq.M) > ONDISK_RAM_FRACTION * _ram_bytes()
    if ondisk:
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(tmp / LISTS_FILE))
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # the index owns it now
    with _stdout_to_stderr(ondisk):
        for i in range(0, n, 65536):
            index.add_with_ids(vecs[i:i + 65536], ids[i:i + 65536])
    # recall@10 against exact search over the same vectors, stored vectors as queries
    qi = rng.choice(n, min(RECALL_QUERIES, n), replace=False)
    queries = np.ascontiguousarray(vecs[qi])
    k = min(10, n)
    _, exact = faiss.knn(queries, vecs, k, faiss.METRIC_INNER_PRODUCT)
    # what searches return (the PQ top rerank_pool(k) re-ranked exactly), and PQ order alone for comparison
    pool = rerank_pool(k)
    recalls = ivf_recall(index, queries, ids[exact], IVFPQ_NPROBES, k, pool, _vectors_by_id(ids, vecs))
    pq_recalls = ivf_recall(index, queries, ids[exact], IVFPQ_NPROBES, k)
    chosen = choose_nprobe(recalls)
    info = {"nlist": int(ivf.nlist), "m": int(ivf.pq.M), "nbits": int(ivf.pq.nbits),
            "nprobe": min(int(nprobe or chosen), int(ivf.nlist)), "measured_nprobe": int(chosen), "trained_at": int(n),
            "train_sample": int(n_train), "train_s": round(train_s, 2), "ondisk": bool(ondisk),
            "recall_at_10": {str(p): round(r, 4) for p, r in recalls.items()}, "rerank_pool": int(pool),
            "pq_recall_at_10": {str(p): round(r, 4) for p, r in pq_recalls.items()},
            "recall_queries": int(len(qi)), "recall_target": RECALL_TARGET}
    return index, info


def _open_ivf_copy(old: "Generation", tmp: Path):
    """The old IVF-PQ index, opened from a copy in the new generation's folder: on-disk lists are
    written in place by add/remove, and the old generation must stay as readers saw it."""
    for f in ("index.faiss", LISTS_FILE):
        if (old.path / f).exists():
            shutil.copyfile(old.path / f, tmp / f)
    return read_index_in(tmp, writable=True)


def cleanup(index_dir: Path, keep: set[str]) -> None:
    """Removes stale generations and temp folders (only ever called under the write lock).
    The previous generation is kept so a reader that just read CURRENT can still open it."""
    for p in index_dir.iterdir():
        if p.is_dir() and (p.name.startswith("tmp-") or (p.name.startswith("g") and p.name not in keep)):
            shutil.rmtree(p, ignore_errors=True)
    try:
        (index_dir / "CURRENT.tmp").unlink()
    except FileNotFoundError:
        pass


def cleanup_stray(index_dir: Path, current: str | None) -> None:
    """Before a build (under the lock): drop temp folders and generations newer than CURRENT that a
    killed run left behind. They were never current, so no reader uses them."""
    if not index_dir.is_dir():
        return
    cur_no = int(current[1:]) if current else 0
    for p in index_dir.iterdir():
        if not p.is_dir():
            continue
        if p.name.startswith("tmp-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith("g") and p.name[1:].isdigit() and int(p.name[1:]) > cur_no:
            shutil.rmtree(p, ignore_errors=True)
