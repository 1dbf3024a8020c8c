"""`ragkit index --engine ray`: load, chunk and embed the changed files on a Ray cluster.

Corpus.index still scans the files, consults the embedding cache and writes the generation; this engine
replaces only the stages in between, with Ray Data:

    changed files  -> map_batches(tasks: corpus.chunk_file)        -> (file record, chunks) to the driver
    texts not in the embedding cache -> map_batches(actor pool: ragkit.embed.get_embedder)
                   -> (hash, vector) batches streamed to the driver, committed to the cache as they come

Both stages run the local path's own code, so chunk ids, texts and vectors are the same; the write is
the local one, so a killed driver leaves the previous generation serving and a re-run reuses the
vectors already cached. Retries are explicit: a chunking task whose worker dies is retried
CHUNK_TASK_RETRIES times; an embedding actor that dies is restarted EMBED_ACTOR_RESTARTS times and its
batch retried. Errors raised by ragkit code in a task (e.g. a file not visible on a node) fail at once.

The corpus must be readable at the same path on every node (a shared filesystem), and every node needs
ragkit with its `ray` and `onnx` extras. `import ray` happens only here.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

from ragkit.console import warn
from ragkit.errors import ConfigError, IndexError_, RagkitError

CHUNK_TASK_RETRIES = 3
EMBED_ACTOR_RESTARTS = 3
# One single-threaded actor per CPU: onnx-int8 on one thread is the most work per core (README,
# "Embedding backends"). 256 texts are 8-30 s of model work on a core (benchmarks/bench_ray_engine.py:
# 8-33 chunks/s), so Ray's per-call cost (milliseconds) is noise; smaller batches only help a tiny corpus.
DEFAULT_BATCH_SIZE = 256
FILES_PER_TASK = 16


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; a bare `ray` lacks Ray Data
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'ragkit[ray]'") from None
    return ray


def actor_plan(resources: dict, actors: int | None) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster's resources: one actor per GPU when
    there are GPUs, else one single-threaded actor per CPU; `actors` overrides the count."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return actors or gpus, 1.0, 1.0
    return actors or max(1, int(resources.get("CPU", 1))), 1.0, 0.0


def _fault_point(name: str) -> None:
    """Test hook: with RAGKIT_RAY_FAULT_DIR set, a file <dir>/<name> kills this worker process once
    (the file is removed first, so Ray's retry goes through)."""
    folder = os.environ.get("RAGKIT_RAY_FAULT_DIR")
    if folder:
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:
            return
        os._exit(1)


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on fails in seconds here; Ray itself retries for minutes."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray's to judge
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check --ray-address "
                          f"(e.g. ray://HEAD:10001 or HEAD:6379) and that its head node is running") from None


_chunkers: dict = {}


def _chunk_batch(batch, *, root: str, model: str | None, chunk: dict, text_field: str):
    """A Ray task: the files of one batch loaded and chunked as the local path does."""
    from ragkit.chunking import ChunkSettings, Chunker
    from ragkit.corpus import chunk_file
    from ragkit.embed import load_piece_tokenizer
    from ragkit.loaders import SourceFile

    _fault_point("chunk")
    if not Path(root).exists():  # a node without the shared filesystem would record every file as unreadable
        import socket

        raise IndexError_(f"{root} is not readable on Ray node {socket.gethostname()}; --engine ray needs the "
                          f"corpus at the same path on every node (a shared filesystem)")
    key = (model, json.dumps(chunk, sort_keys=True))
    if key not in _chunkers:
        _chunkers[key] = Chunker(load_piece_tokenizer(model), ChunkSettings(**chunk))
    out = []
    for i, path, rel, digest in zip(batch["i"], batch["path"], batch["rel"], batch["digest"]):
        skips: list[tuple[str, str]] = []
        record, chunks = chunk_file(SourceFile(Path(path), str(rel)), str(digest), _chunkers[key], text_field,
                                    lambda r, why: skips.append((r, why)))
        out.append(json.dumps({"i": int(i), "record": asdict(record), "chunks": [asdict(c) for c in chunks],
                               "skips": skips}))
    return {"payload": out}


class _Embed:
    """A Ray actor holding the embedding model: the backend the index records, `threads` threads, on
    the GPU Ray gave it when its runtime can use one. Each batch it returns carries `cpu_note`: why it
    embeds on the CPU although it was given a GPU ("" otherwise), for the driver to print once.

    The CUDA path (device="cuda") has never run in ragkit's tests: the machines they ran on have no GPU
    and a CPU-only torch wheel; tests/test_embed_device.py covers the fallback with a declared GPU resource."""

    def __init__(self, model: str | None, backend: str, threads: int):
        os.environ["RAGKIT_EMBED_THREADS"] = str(threads)  # this process is the actor's alone
        import ray

        from ragkit.embed import embedding_device, get_embedder

        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs, so "cuda" is the GPU reserved for it.
        device, note = embedding_device(ray.get_gpu_ids(), backend)
        self.emb = get_embedder(model, backend, device)
        if note is None and self.emb.device != device:
            note = "onnxruntime could not start its CUDAExecutionProvider: check the CUDA and cuDNN libraries"
        self.cpu_note = note or ""

    def __call__(self, batch):
        import numpy as np

        _fault_point("embed")
        return {"hash": batch["hash"], "vector": self.emb.encode(list(batch["text"])),
                "cpu_note": np.full(len(batch["hash"]), self.cpu_note)}


def _retries(**kw) -> dict:
    """Ray remote options Ray Data has no named parameter for yet (its `**ray_remote_args`, deprecated
    in 2.60 without a replacement for retries): set explicitly, because its actor default is to retry forever."""
    return kw


class RayEngine:
    """Runs on the Ray cluster at `address`, or on a local instance it starts (and stops) itself.
    Connects on first use, so an index with nothing to do never starts Ray. Use as a context manager."""

    def __init__(self, address: str | None = None, *, actors: int | None = None,
                 batch_size: int | None = None, num_cpus: int | None = None):
        if actors is not None and actors < 1:
            raise ConfigError("--ray-actors must be at least 1")
        if batch_size is not None and batch_size < 1:
            raise ConfigError("--ray-batch-size must be at least 1")
        self.address, self.actors, self.num_cpus = address, actors, num_cpus
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.ray = _import_ray()
        self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _connect(self):
        """Joins the cluster (or a Ray already initialised in this process, e.g. by a notebook)."""
        ray = self.ray
        if not ray.is_initialized():
            quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
            try:
                if self.address:
                    _check_reachable(self.address)
                    ray.init(address=self.address, **quiet)
                else:
                    ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at {self.address or 'a new local instance'} "
                                  f"({exc}); check --ray-address (e.g. ray://HEAD:10001 or HEAD:6379)") from None
            self._started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ragkit draws its own embedding bar
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # failures reach us as exceptions
        return ray

    def chunk_files(self, corpus, work: list, on_skip):
        """(file record, chunks) per (SourceFile, sha256) in `work`, in order; skips reported here."""
        from ragkit.store import FileRecord, NewChunk

        if not work:
            return []
        ray = self._connect()
        items = [{"i": i, "path": str(sf.path), "rel": sf.rel, "digest": digest} for i, (sf, digest) in enumerate(work)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // FILES_PER_TASK)))
        with _ray_errors(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(_chunk_batch, batch_size=FILES_PER_TASK, batch_format="numpy", num_cpus=1,
                                fn_kwargs={"root": str(corpus.path), "model": corpus._model_arg(),
                                           "chunk": corpus.chunk_settings.to_dict(), "text_field": corpus.text_field},
                                **_retries(max_retries=CHUNK_TASK_RETRIES))
            rows = sorted((json.loads(p) for b in ds.iter_batches(batch_size=None, batch_format="numpy")
                           for p in b["payload"]), key=lambda r: r["i"])
        out = []
        for r in rows:
            for rel, why in r["skips"]:
                on_skip(rel, why)
            out.append((FileRecord(**r["record"]), [NewChunk(**c) for c in r["chunks"]]))
        return out

    def embed(self, corpus, items: list[tuple[str, str]]):
        """Yields (hashes, vectors) batches for (hash, text) items as the actor pool returns them."""
        if not items:
            return
        ray = self._connect()
        actors, cpus, gpus = actor_plan(ray.cluster_resources(), self.actors)
        blocks = max(1, -(-len(items) // self.batch_size))
        ds = ray.data.from_items([{"hash": h, "text": t} for h, t in items], override_num_blocks=blocks)
        with _ray_errors(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(_Embed, batch_size=self.batch_size, batch_format="numpy",
                                fn_constructor_kwargs={"model": corpus._model_arg(), "backend": corpus.backend.key,
                                                       "threads": max(1, int(cpus))},
                                compute=ray.data.ActorPoolStrategy(size=min(actors, blocks)), num_cpus=cpus,
                                num_gpus=gpus, **_retries(max_restarts=EMBED_ACTOR_RESTARTS,
                                                          max_task_retries=EMBED_ACTOR_RESTARTS))
            notes: set[str] = set()
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for note in set(b["cpu_note"]) - notes - {""}:  # once per build, not per actor or batch
                    warn(f"the embedding actors were given GPUs but embed on the CPU ({note})")
                    notes.add(note)
                yield [str(h) for h in b["hash"]], b["vector"]


class _ray_errors:
    """Ray's task errors as ragkit errors: ragkit's own error from a task as it was raised, anything else
    as one sentence that says the previous index still serves."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, RagkitError):
            return False
        seen = exc
        while seen is not None:
            if isinstance(seen, RagkitError):
                raise seen from None
            cause = getattr(seen, "cause", None)
            seen = cause if isinstance(cause, BaseException) and cause is not seen else seen.__cause__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise IndexError_(f"the Ray build failed ({type(exc).__name__}: {first[:300]}); the previous index "
                          f"still serves; run the same command again (vectors already computed are reused)") from exc
