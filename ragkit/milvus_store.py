"""An index in Milvus: the same chunks, vectors and promises as the FAISS folder, on Milvus's primitives.

One pymilvus client speaks to Milvus Lite (embedded: `--store milvus-lite:PATH`) and to a Milvus
server or cluster (`--store milvus://HOST:19530/COLLECTION`). pymilvus is imported only here.

Layout (ALIAS is the collection name the user gave, default "ragkit"):

    ALIAS                 a Milvus alias: the only thing a reader trusts (like the folder's CURRENT)
    ALIAS__g000003        chunks: auto id, vector, text, source, doc_id, rel, title, span, text_hash
    ALIAS__g000003_files  one row per file (rel, size, mtime_ns, sha256, chunks, skipped): the change
                          scan's input; Milvus wants a vector field in every collection, so it has a
                          2-d placeholder that is never searched

The manifest (embed model, backend, dim, chunker settings, text_field) is a property of the chunk
collection (`ragkit.manifest`), written when the collection is created. Settings never change on a
collection (a change needs --rebuild, and a rebuild creates a new collection), so the manifest
switches with the alias in the same atomic step and needs no second collection to keep in sync.

Writes: the first build and --rebuild fill a new collection while readers keep searching the old
one, then `alter_alias` switches them over at once; the collection before that is dropped on the
next write (a reader that resolved the alias just before the switch can finish). An incremental
update is applied in place: new chunks are inserted first, then the replaced chunks deleted by id
and the file rows updated, so a search during it may see a changed file's old and new chunks side
by side for a moment, never neither; a run killed half-way leaves file rows that still say
"changed", and the next run deletes every chunk of those files (orphans included) and redoes them.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from ragkit import store as _store
from ragkit.errors import ConfigError, IndexError_, InputError

FORMAT_VERSION = 1
INSERT_BATCH = 512
MAX_VARCHAR = 65_535
FILTER_FIELDS = "source, doc_id, title, rel, position, start_char, end_char, tokens"
_CHUNK_FIELDS = ["id", "doc_id", "source", "position", "start_char", "end_char", "text", "tokens", "title"]
_FILE_FIELDS = ["rel", "size", "mtime_ns", "sha256", "chunks", "skipped"]
_clients: dict[str, list] = {}   # uri -> [client, number of open stores using it]
_clients_lock = threading.Lock()


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise ConfigError("a Milvus store needs the [milvus] extra: pip install 'ragkit[milvus]'") from None
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its errors reach the user as one sentence
    # Milvus Lite's in-process gRPC server logs a traceback when the query iterator probes an RPC it
    # lacks (AllocTimestamp) and falls back; the iterator works, the traceback would only alarm.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)  # "another process holds the lock": said once, below
    return pymilvus


def _client(uri: str, hold: bool):
    """One client per URI per process (Milvus Lite serves a .db to one process at a time); `hold` counts
    a new user of it, released by _release."""
    pymilvus = _pymilvus()
    with _clients_lock:
        if uri not in _clients:
            try:
                _clients[uri] = [pymilvus.MilvusClient(uri), 0]
            except pymilvus.exceptions.MilvusException as exc:
                where = (_lite_open_failure(Path(uri)) if not uri.startswith("http")
                         else f"cannot reach Milvus at {uri}; is the server running?")
                raise IndexError_(f"{where} ({getattr(exc, 'message', exc)})") from None
        _clients[uri][1] += hold
        return _clients[uri][0]


def _lite_open_failure(db: Path) -> str:
    """Why Milvus Lite could not open `db` (it says only "Open local milvus failed")."""
    if not db.parent.is_dir():
        return f"the folder {db.parent} of the Milvus Lite database {db.name} does not exist; create it or fix the path"
    if db.exists() and not db.is_dir():
        return (f"{db} is a file, not a Milvus Lite database (Milvus Lite keeps one in a folder it makes); "
                f"give a new path ending in .db")
    return (f"the Milvus Lite database {db} is open in another process (Milvus Lite serves one process at a "
            f"time: wait for it, or use a Milvus server, --store milvus://HOST:19530/NAME)")


def _release(uri: str) -> None:
    """Closes the URI's client when its last store closes (frees a Milvus Lite .db for other processes)."""
    with _clients_lock:
        held = _clients.get(uri)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _clients[uri]
            held[0].close()
            if not uri.startswith("http"):  # closing the client leaves Milvus Lite's server holding the .db
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(uri)


def _str_list(values: list[str]) -> str:
    """A Milvus list literal of strings. Not ASCII-escaped: Milvus's parser reads \" and \\ but not \\uXXXX,
    so `café.txt` must stay as it is."""
    return json.dumps(values, ensure_ascii=False)


def _gen_no(name: str | None) -> int:
    try:
        return int(name.rsplit("__g", 1)[1]) if name else 0
    except (IndexError, ValueError):
        return 0


class CollectionView:
    """One chunk collection as readers see it (what Corpus keeps as its current generation)."""

    nprobe = None  # a FAISS IVF-PQ setting (store.Generation.nprobe); Milvus tunes its own search

    def __init__(self, client, name: str, manifest: dict):
        self.client, self.name, self.manifest = client, name, manifest
        self.kind = manifest.get("index_type", "milvus")
        if client.get_load_state(name).get("state").name != "Loaded":  # a reopened database starts released
            client.load_collection(name)
            client.load_collection(name + "_files")

    @property
    def live_chunks(self) -> int:
        """Counted by Milvus each time: incremental updates change the collection in place."""
        (row,) = self.client.query(self.name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(row["count(*)"])

    @property
    def settings(self) -> dict:
        return {**_store.LEGACY_SETTINGS, **self.manifest["settings"]}

    def _all(self, collection: str, fields: list[str]) -> list[dict]:
        it = self.client.query_iterator(collection, batch_size=4096, filter="", output_fields=fields,
                                        consistency_level="Strong")
        out: list[dict] = []
        try:
            while batch := it.next():
                out += batch
        finally:
            it.close()
        return out

    def files(self) -> dict[str, _store.FileRecord]:
        return {r["rel"]: _store.FileRecord(*(r[f] for f in _FILE_FIELDS[:5]), r["skipped"] or None)
                for r in self._all(self.name + "_files", _FILE_FIELDS)}

    def close(self) -> None:
        pass  # the client is shared by every view of its URI


class MilvusStore:
    """A Milvus alias and the chunk collections behind it (see the module docstring)."""

    kind = "milvus"

    def __init__(self, spec, state_dir: Path):
        self.spec, self.alias, self.state_dir = spec, spec.collection, state_dir
        self.location = spec.url
        self._holding = False
        self._hold_lock = threading.Lock()
        self.cache_path = state_dir / "embcache.sqlite"
        lite = (Path(spec.uri), Path(spec.uri + ".ragkit")) if spec.kind == "milvus-lite" else ()
        self.private_paths = (state_dir, *lite)   # never indexed as documents

    @property
    def client(self):
        with self._hold_lock:  # counted once per store, whichever thread asks first
            hold, self._holding = not self._holding, True
            return _client(self.spec.uri, hold)

    def close(self) -> None:
        with self._hold_lock:
            held, self._holding = self._holding, False
        if held:
            _release(self.spec.uri)

    def index_hint(self, corpus_path: Path, default_dir: Path) -> str:
        return (f"no index in {self.location}; run `ragkit index {corpus_path} --store {self.location}` first")

    def exists(self) -> bool:
        if self.spec.kind == "milvus-lite" and not Path(self.spec.uri).exists():
            return False
        return self.current_name() is not None

    def prepare(self) -> None:
        _store.create_dir(self.state_dir)

    def current_name(self) -> str | None:
        """The collection the alias points at, or None before the first build."""
        if self.spec.kind == "milvus-lite" and not Path(self.spec.uri).exists():
            _pymilvus()  # without the extra, that is the error to see first
            return None  # nothing built yet; opening a client would create the database, and a read creates nothing
        c = self.client
        if self.alias not in c.list_aliases().get("aliases", []):
            if c.has_collection(self.alias):
                raise IndexError_(f"{self.location}: {self.alias!r} is a collection, not ragkit's alias; pick another "
                                  f"collection name in --store, or drop that collection")
            return None
        return c.describe_alias(self.alias)["collection_name"]

    def _manifest(self, name: str) -> dict:
        try:
            return json.loads(self.client.describe_collection(name)["properties"]["ragkit.manifest"])
        except (KeyError, ValueError) as exc:
            raise IndexError_(_store.damaged_message(Path(self.location), f"collection {name}: no ragkit manifest "
                                                                          f"({exc})")) from None

    def current_settings(self) -> dict | None:
        name = self.current_name()
        return None if name is None else {**_store.LEGACY_SETTINGS, **self._manifest(name)["settings"]}

    def open_current(self) -> CollectionView | None:
        name = self.current_name()
        if name is None:
            return None
        manifest = self._manifest(name)
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexError_(f"{self.location} has format {manifest.get('format')}, this ragkit reads "
                              f"{FORMAT_VERSION}; rebuild with `ragkit index <PATH> --store {self.location} --rebuild`")
        return CollectionView(self.client, name, manifest)

    def write_lock(self, timeout_s: float = 0):
        # A lock file on this machine: enough for Milvus Lite (one process anyway) and for one indexing
        # machine per cluster collection; Milvus has no lock of its own (README: one writer per collection).
        self.prepare()
        return _store.WriteLock(self.state_dir, timeout_s=timeout_s)

    def cleanup_stray(self, current: str | None) -> None:
        """Under the lock: drop collections a killed build left behind (never aliased, so never read)."""
        for name in self._generations():
            if _gen_no(name) > _gen_no(current):
                self._drop(name)

    def _generations(self) -> list[str]:
        prefix = self.alias + "__g"
        return [n for n in self.client.list_collections() if n.startswith(prefix) and not n.endswith("_files")]

    def _drop(self, name: str) -> None:
        for n in (name, name + "_files"):
            if self.client.has_collection(n):
                self.client.drop_collection(n)

    # -- writing ------------------------------------------------------------------------------------
    def write(self, old: CollectionView | None, settings: _store.Settings, *, remove_rels, file_records, new_chunks,
              new_vectors, after: CollectionView | None = None, hnsw_threshold: int = _store.HNSW_THRESHOLD,
              **_faiss_only) -> dict:  # ivfpq_threshold, nprobe, cache_vectors: FAISS-folder knobs
        """Brings the alias's collection up to date: in place from `old`, or a new collection when old is None
        (first build, --rebuild) switched in by the alias. Returns the manifest."""
        import numpy as np

        vectors = np.ascontiguousarray(new_vectors, dtype="float32").reshape(-1, settings.dim)
        if old is None:
            return self._build_new(settings, file_records, new_chunks, vectors, after, hnsw_threshold)
        c = self.client
        touched = set(remove_rels) | {ch.rel for ch in new_chunks} | {f.rel for f in file_records if f.skipped}
        stale_ids = self._ids_of(old.name, sorted(touched))
        self._insert_chunks(old.name, new_chunks, vectors)
        _store._crash_point("milvus_after_insert")
        for i in range(0, len(stale_ids), 4096):
            c.delete(old.name, ids=stale_ids[i:i + 4096])
        gone = sorted(set(remove_rels) - {f.rel for f in file_records})
        for i in range(0, len(gone), 500):
            c.delete(old.name + "_files", filter=f"rel in {_str_list(gone[i:i + 500])}")
        self._upsert_files(old.name, file_records)
        return old.manifest

    def _build_new(self, settings, file_records, new_chunks, vectors, after, hnsw_threshold: int) -> dict:
        c = self.client
        name = f"{self.alias}__g{_gen_no(after.name if after else None) + 1:06d}"
        self._drop(name)  # left by a killed run: never aliased
        # Chosen when the collection is made, at the folder's threshold; crossing it later keeps the
        # collection's type until the next --rebuild (Milvus rebuilds an index only on a released collection).
        index_type = "HNSW" if len(new_chunks) >= hnsw_threshold else "FLAT"
        manifest = {"format": FORMAT_VERSION, "generation": name, "settings": settings.to_dict(),
                    "index_type": f"milvus-{index_type}", "metric": "IP",
                    "hnsw": {"M": _store.HNSW_M, "efConstruction": _store.HNSW_EF_CONSTRUCTION,
                             "ef": _store.HNSW_EF_SEARCH} if index_type == "HNSW" else None,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._create(name, settings.dim, manifest, index_type)
        self._insert_chunks(name, new_chunks, vectors)
        self._upsert_files(name, file_records)
        c.flush(name)
        c.flush(name + "_files")
        _store._crash_point("before_pointer")
        if self.alias in c.list_aliases().get("aliases", []):
            c.alter_alias(name, self.alias)
        else:
            c.create_alias(name, self.alias)
        _store._crash_point("after_pointer")
        keep = {name, after.name if after else name}
        for old in self._generations():
            if old not in keep:
                self._drop(old)
        return manifest

    def _create(self, name: str, dim: int, manifest: dict, index_type: str) -> None:
        from pymilvus import DataType, MilvusClient

        c = self.client
        s = MilvusClient.create_schema(auto_id=True)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        for f in ("rel", "doc_id", "source", "title", "text_hash"):
            s.add_field(f, DataType.VARCHAR, max_length=4096)
        s.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        for f in ("position", "start_char", "end_char", "tokens"):
            s.add_field(f, DataType.INT64)
        ip = c.prepare_index_params()
        if index_type == "HNSW":
            ip.add_index("vector", index_type="HNSW", metric_type="IP",
                         params={"M": _store.HNSW_M, "efConstruction": _store.HNSW_EF_CONSTRUCTION})
        else:
            ip.add_index("vector", index_type="FLAT", metric_type="IP")  # exact, as the folder below 20K chunks
        ip.add_index("rel", index_type="INVERTED")
        c.create_collection(name, schema=s, index_params=ip, consistency_level="Strong",
                            properties={"ragkit.manifest": json.dumps(manifest)})
        f = MilvusClient.create_schema(auto_id=False)
        f.add_field("rel", DataType.VARCHAR, is_primary=True, max_length=4096)
        for k in ("size", "mtime_ns", "chunks"):
            f.add_field(k, DataType.INT64)
        f.add_field("sha256", DataType.VARCHAR, max_length=64)
        f.add_field("skipped", DataType.VARCHAR, max_length=4096)
        f.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        fp = c.prepare_index_params()
        fp.add_index("placeholder", index_type="FLAT", metric_type="L2")
        c.create_collection(name + "_files", schema=f, index_params=fp, consistency_level="Strong")

    def _ids_of(self, name: str, rels: list[str]) -> list[int]:
        ids: list[int] = []
        for i in range(0, len(rels), 500):
            it = self.client.query_iterator(name, batch_size=4096, filter=f"rel in {_str_list(rels[i:i + 500])}",
                                            output_fields=["id"], consistency_level="Strong")
            try:
                while batch := it.next():
                    ids += [r["id"] for r in batch]
            finally:
                it.close()
        return ids

    def _insert_chunks(self, name: str, chunks, vectors) -> None:
        for i in range(0, len(chunks), INSERT_BATCH):
            rows = []
            for ch, v in zip(chunks[i:i + INSERT_BATCH], vectors[i:i + INSERT_BATCH]):
                for what, value in (("source", ch.source), ("text", ch.text), ("doc_id", ch.doc_id)):
                    if len(value.encode()) > (MAX_VARCHAR if what == "text" else 4096):
                        raise InputError(f"{ch.rel}: a chunk's {what} is longer than Milvus keeps in one field; "
                                         f"lower --chunk-tokens or shorten the file's name")
                rows.append({"vector": v.tolist(), "rel": ch.rel, "doc_id": ch.doc_id, "source": ch.source,
                             "title": ch.title.encode()[:4096].decode(errors="ignore"), "text_hash": ch.text_hash,
                             "text": ch.text, "position": ch.position, "start_char": ch.start_char,
                             "end_char": ch.end_char, "tokens": ch.tokens})
            self.client.insert(name, rows)
            _store._crash_point("milvus_insert_batch")

    def _upsert_files(self, name: str, records) -> None:
        rows = [{"rel": f.rel, "size": f.size, "mtime_ns": f.mtime_ns, "sha256": f.sha256, "chunks": f.chunks,
                 "skipped": f.skipped or "", "placeholder": [0.0, 0.0]} for f in records]
        for i in range(0, len(rows), INSERT_BATCH):
            self.client.upsert(name + "_files", rows[i:i + INSERT_BATCH])

    # -- reading ------------------------------------------------------------------------------------
    def check_where(self, where: str | None) -> None:
        pass  # Milvus parses it; search() turns a parse error into one sentence

    def search(self, view: CollectionView, vectors, k: int, where: str | None = None, *, nprobe: int | None = None,
               rerank: int | None = None):  # nprobe, rerank: FAISS IVF-PQ knobs
        """Top-k (chunk row, score) per query vector, best first; `where` is a Milvus filter expression."""
        pymilvus = _pymilvus()
        if len(vectors) == 0:
            return []
        try:
            res = view.client.search(view.name, data=[v.tolist() for v in vectors], limit=k, filter=where or "",
                                     output_fields=_CHUNK_FIELDS[1:],
                                     search_params={"metric_type": "IP", "params": {"ef": max(_store.HNSW_EF_SEARCH, k)}}
                                     if view.kind == "milvus-HNSW" else {"metric_type": "IP"},
                                     consistency_level="Strong")
        except pymilvus.exceptions.MilvusException as exc:
            if where and getattr(exc, "code", None) in (6, 1100, 65535):
                first = str(getattr(exc, "message", exc)).splitlines()[0]
                raise InputError(f"--where {where!r} is not a filter Milvus accepts ({first}); write e.g. "
                                 f"--where 'source like \"docs/%\"' over the fields {FILTER_FIELDS}") from None
            raise IndexError_(f"{self.location}: search failed ({getattr(exc, 'message', exc)})") from None
        out = []
        for hits in res:
            row = []
            for h in hits:
                e = h["entity"]
                row.append((_store.ChunkRow(h["id"], *(e[f] for f in _CHUNK_FIELDS[1:])), float(h["distance"])))
            out.append(row)
        return out

    def live_hashes(self, view: CollectionView) -> set[str]:
        return {r["text_hash"] for r in view._all(view.name, ["text_hash"])}
