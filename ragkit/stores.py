"""Where an index lives: the FAISS folder (the default) or a Milvus collection (`--store`).

    --store milvus-lite:PATH              Milvus Lite, embedded in this process (a .db folder at PATH)
    --store milvus://HOST:19530/COLLECTION  a Milvus server or cluster

A store is what `Corpus` writes into and searches. Each one keeps the same promises: incremental by
content hash, one writer at a time (a lock file in `state_dir`, which also holds the embedding
cache), the settings the vectors depend on stored with them and checked on open, and a reader that
never sees a half-built index. A store hands out *views* (the FAISS folder's `store.Generation`, a
Milvus collection's `milvus_store.CollectionView`): one consistent state that searches use, with
`name`, `settings`, `manifest`, `kind`, `live_chunks` and `files()`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ragkit import store as _store
from ragkit.errors import InputError

MILVUS_EXTRA_HINT = "pip install 'ragkit[milvus]'"
STORE_HELP = ("Where the index lives: the FAISS folder (default), milvus-lite:PATH (embedded Milvus) or "
              "milvus://HOST:19530/COLLECTION (a Milvus server or cluster).")
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


@dataclass(frozen=True)
class StoreSpec:
    """A parsed --store value: kind is "folder", "milvus-lite" or "milvus"."""

    kind: str
    uri: str = ""              # milvus-lite: the .db path; milvus: http://HOST:PORT
    collection: str = "ragkit"  # the alias readers search (a Milvus collection name)

    @property
    def url(self) -> str:
        if self.kind == "milvus-lite":
            return f"milvus-lite:{self.uri}" + (f"#{self.collection}" if self.collection != "ragkit" else "")
        if self.kind == "milvus":
            return f"milvus://{self.uri.removeprefix('http://')}/{self.collection}"
        return "folder"


def parse_store(url: str | None) -> StoreSpec:
    """`None`/"folder" -> the FAISS folder; milvus-lite:PATH[#COLLECTION]; milvus://HOST[:PORT]/COLLECTION."""
    if url is None or url == "" or url == "folder":
        return StoreSpec("folder")
    bad = (f"--store {url!r} is not a store; use milvus-lite:PATH (embedded, e.g. milvus-lite:./index.db), "
           f"milvus://HOST:19530/COLLECTION (a Milvus server), or leave it out for the FAISS folder")
    if url.startswith("milvus-lite:"):
        path, _, coll = url.removeprefix("milvus-lite:").rpartition("#")
        if not path.endswith(".db"):  # no "NAME.db#COLLECTION" at the end: a '#' is part of the folder's name
            path, coll = url.removeprefix("milvus-lite:"), ""
        if not path or (coll and not _COLLECTION.fullmatch(coll)):
            raise InputError(bad + (" (a collection name after # is letters, digits and _, starting with a letter "
                                    "or _)" if coll else ""))
        if not path.endswith(".db"):  # how pymilvus tells a Milvus Lite file from a server address
            raise InputError(f"--store {url!r}: a Milvus Lite path ends in .db, e.g. milvus-lite:./index.db")
        return StoreSpec("milvus-lite", str(Path(path).expanduser().resolve()), coll or "ragkit")
    m = re.fullmatch(r"milvus://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?/([^/]+)", url)
    if not m or not _COLLECTION.fullmatch(m.group(3)):
        raise InputError(bad + " (a collection name is letters, digits and _, starting with a letter or _)"
                         if m else bad)
    if m.group(2) and not 0 < int(m.group(2)) < 65536:
        raise InputError(f"--store {url!r}: port {m.group(2)} is not a TCP port (1-65535); Milvus listens on 19530")
    return StoreSpec("milvus", f"http://{m.group(1)}:{m.group(2) or 19530}", m.group(3))


def open_store(url: str | None, index_dir: Path, corpus_path: Path):
    """The store `url` names (see parse_store); the FAISS folder at `index_dir` by default."""
    spec = parse_store(url)
    if spec.kind == "folder":
        return FolderStore(index_dir)
    from ragkit.milvus_store import MilvusStore

    if spec.kind == "milvus-lite":  # the lock and the embedding cache sit next to the .db
        state = Path(spec.uri).with_name(Path(spec.uri).name + ".ragkit") / spec.collection
    else:  # a cluster has no folder of ours: they stay with the corpus (one writer per machine, see README)
        host = re.sub(r"[^A-Za-z0-9.]+", "-", spec.uri.removeprefix("http://"))
        state = index_dir / f"milvus-{host}-{spec.collection}"
    return MilvusStore(spec, state)


class FolderStore:
    """The FAISS folder of ragkit.store (generations switched by the CURRENT pointer)."""

    kind = "folder"

    def __init__(self, index_dir: Path):
        self.index_dir = self.state_dir = index_dir
        self.location = str(index_dir)
        self.cache_path = index_dir / "embcache.sqlite"
        self.private_paths = (index_dir,)   # never indexed as documents
        self._pointer = index_dir / "CURRENT"
        self._seen: tuple | None = None     # (the pointer's inode, mtime_ns, size), the name read then

    def index_hint(self, corpus_path: Path, default_dir: Path) -> str:
        other = "" if self.index_dir.resolve() == default_dir else f" --index-dir {self.index_dir}"
        return f"no index at {self.index_dir}; run `ragkit index {corpus_path}{other}` first"

    def exists(self) -> bool:
        return self.index_dir.is_dir()

    def prepare(self) -> None:
        _store.create_dir(self.index_dir)

    def current_name(self) -> str | None:
        """The current generation's name. Asked on every query: the pointer is read again only when a
        stat says it was replaced (a writer's atomic rename gives it a new inode)."""
        try:
            st = os.stat(self._pointer)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return _store.read_current(self.index_dir)  # its one-sentence error
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._seen
        if seen is not None and seen[0] == stamp:
            return seen[1]
        name = _store.read_current(self.index_dir)
        self._seen = (stamp, name)  # one assignment: threads see a whole pair
        return name

    def current_settings(self) -> dict | None:
        return _store.current_settings(self.index_dir)

    def open_current(self):
        return _store.open_generation(self.index_dir)

    def write_lock(self, timeout_s: float = 0):
        return _store.WriteLock(self.index_dir, timeout_s=timeout_s)

    def cleanup_stray(self, current: str | None) -> None:
        _store.cleanup_stray(self.index_dir, current)

    def write(self, old, settings, **kw) -> dict:
        return _store.write_generation(self.index_dir, old, settings, **kw)

    def check_where(self, where: str | None) -> None:
        if where:
            raise InputError("--where filters need a Milvus store (--store milvus-lite:PATH or milvus://...); the "
                             "FAISS folder keeps no filterable metadata index, so leave --where out here")

    def search(self, gen, vectors, k: int, where: str | None = None, *, nprobe: int | None = None,
               rerank: int | None = None) -> list[list[tuple[_store.ChunkRow, float]]]:
        """Top-k (chunk row, score) per query vector, best first (an IVF-PQ index's nprobe and rerank:
        store.Generation.search)."""
        self.check_where(where)
        results = gen.search(vectors, k, nprobe=nprobe, rerank=rerank)
        rows = gen.chunks(sorted({i for r in results for i, _ in r}))
        return [[(rows[i], s) for i, s in r if i in rows] for r in results]

    def close(self) -> None:
        pass  # a generation holds its own files; Corpus.close() closes it

    def live_hashes(self, gen) -> set[str]:
        with gen._reading() as db:
            return {r[0] for r in db.execute("SELECT text_hash FROM chunks")}
