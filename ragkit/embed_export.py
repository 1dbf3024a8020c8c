"""Embedding backends and their exported models, made once, offline, from the local weights.

A backend is how the same sentence-transformers model is run:

    torch       PyTorch (sentence-transformers' default), float32
    onnx        ONNX Runtime, float32, exported by sentence-transformers (`backend="onnx"`)
    onnx-int8   ONNX Runtime, int8 weights by dynamic quantization
                (`sentence_transformers.backend.export_dynamic_quantized_onnx_model`, the config
                for this CPU: avx512_vnni / avx512 / avx2 / arm64)
    openvino    OpenVINO, float32 (`backend="openvino"`), when optimum-intel is installed

The exports live under <ragkit cache>/embed/<model>-<hash>/<backend>/, each a complete
sentence-transformers folder plus ragkit-provenance.json. Like the local model's conversion
(ragkit/local_model.py) an export is built in a temporary folder and renamed into place under a
file lock, so a killed export leaves nothing half-done and a finished one is never redone.
Exporting needs sentence-transformers[onnx] (optimum); running an onnx export needs only
onnxruntime and tokenizers (ragkit.embed.OnnxEmbedder).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ragkit.atomic_dir import build_once, crash_point
from ragkit.config import cache_dir, embed_backend, set_offline_env
from ragkit.errors import ConfigError

PROVENANCE_FILE = "ragkit-provenance.json"


@dataclass(frozen=True)
class Backend:
    """One way to run the embedding model; `key` is what the index manifest records and checks."""

    key: str               # torch | onnx | onnx-int8 | openvino
    runtime: str           # torch | onnx | openvino  (sentence-transformers' backend=)
    precision: str         # fp32 | int8
    quantization: str | None = None  # e.g. "dynamic-avx2": the config the int8 weights were made with

    def cache_key(self, model: str) -> str:
        return embedding_cache_key(model, self.key, self.precision, self.quantization)

    def manifest(self) -> dict:
        return {"embed_backend": self.key, "embed_precision": self.precision,
                "embed_quantization": self.quantization}


def embedding_cache_key(model: str, backend: str, precision: str, quantization: str | None) -> str:
    """The embedding cache's key (also read back from an index manifest's settings by store.Generation):
    torch keeps the bare model name, so existing caches stay valid."""
    return model if backend == "torch" else f"{model}#{backend}:{quantization or precision}"


@functools.cache  # read once: every query asks (through get_backend), and the CPU does not change
def _cpu_quantization_config() -> str:
    """sentence-transformers' dynamic-quantization preset for this CPU."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


BACKEND_KEYS = ("torch", "onnx", "onnx-int8", "openvino")


def backends() -> dict[str, Backend]:
    q = _cpu_quantization_config()
    return {b.key: b for b in (Backend("torch", "torch", "fp32"), Backend("onnx", "onnx", "fp32"),
                               Backend("onnx-int8", "onnx", "int8", f"dynamic-{q}"),
                               Backend("openvino", "openvino", "fp32"))}


# Chosen by measurement (benchmarks/bench_embed_backends.py, README "Embedding backends"):
# int8 ONNX embeds several times faster than torch with the same recall@5, and a query needs no torch.
DEFAULT_EMBED_BACKEND = "onnx-int8"
# What an index without an embed_backend field was built with (every index before backends existed).
LEGACY_BACKEND = "torch"


def get_backend(name: str | None) -> Backend:
    """The Backend called `name` (None: $RAGKIT_EMBED_BACKEND, else the default)."""
    table = backends()
    name = name or embed_backend() or DEFAULT_EMBED_BACKEND
    key = name.strip().lower()
    if key not in table:
        raise ConfigError(f"unknown embedding backend {name!r}; choose one of {', '.join(table)} "
                          f"(--embed-backend or RAGKIT_EMBED_BACKEND).")
    return table[key]


# --------------------------------------------------------------------------- where exports live

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name)[:60]


def _weights_fingerprint(source: Path) -> str:
    """Cheap identity of the source weights (path, sizes, mtimes): a changed model gets a new export."""
    h = hashlib.sha256(str(source.resolve()).encode())
    for f in sorted(source.glob("*.safetensors")) + sorted(source.glob("pytorch_model*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def export_dir(name: str, source: str, backend: Backend) -> Path:
    return cache_dir() / "embed" / f"{_slug(name)}-{_weights_fingerprint(Path(source))}" / backend.key


def read_provenance(folder: Path) -> dict | None:
    try:
        return json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_exported(folder: Path) -> bool:
    """A complete export: the provenance file is written last, then the folder is renamed in."""
    prov = read_provenance(folder)
    return bool(prov) and (folder / prov.get("model_file", "")).is_file()


def ensure_exported(name: str, source: str, backend: Backend, *, log=None) -> Path:
    """The exported model folder for (model, backend), exporting it once. torch needs no export."""
    if backend.runtime == "torch":
        return Path(source)
    final = export_dir(name, source, backend)
    if not Path(source).is_dir():
        raise ConfigError(f"cannot export embedding model {name!r} offline for the {backend.key} backend: it is not "
                          f"a local sentence-transformers folder; pass one, or use --embed-backend torch.")
    return build_once(final, is_exported, lambda tmp: _export(name, source, backend, tmp, log=log or (lambda _m: None)))


def _export(name: str, source: str, backend: Backend, out: Path, *, log) -> None:
    set_offline_env()
    started = time.perf_counter()
    log(f"exporting {name} to {backend.key} (once)")
    if backend.precision == "int8":  # quantize the fp32 onnx export (made first if need be)
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        fp32 = ensure_exported(name, source, backends()["onnx"], log=log)
        shutil.copytree(fp32, out, dirs_exist_ok=True)
        (out / PROVENANCE_FILE).unlink()
        before = set((out / "onnx").glob("*.onnx"))
        with _quiet():
            export_dynamic_quantized_onnx_model(_load_st(str(out), "onnx"),
                                                backend.quantization.removeprefix("dynamic-"), str(out))
        made = sorted(set((out / "onnx").glob("*.onnx")) - before)
        (out / "onnx" / "model.onnx").unlink()  # the fp32 graph is the `onnx` backend's, not this one's
        model_file = f"onnx/{made[0].name}" if made else "onnx/(none)"
    else:
        with _quiet():
            _load_st(source, backend.runtime).save_pretrained(str(out))
        model_file = "onnx/model.onnx" if backend.runtime == "onnx" else "openvino/openvino_model.xml"
    crash_point("after_export")
    if not (out / model_file).is_file():
        raise ConfigError(f"exporting {name} to {backend.key} did not produce {model_file}")
    provenance = {
        "model": name, "source": str(source), "backend": backend.key, "runtime": backend.runtime,
        "precision": backend.precision, "quantization": backend.quantization, "model_file": model_file,
        "made_with": {d: _version(d) for d in ("sentence-transformers", "optimum", "optimum-onnx", "optimum-intel",
                                                "onnxruntime", "openvino", "torch")},
        "export_s": round(time.perf_counter() - started, 1),
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


@contextmanager
def _quiet():
    """The exporters' tracer warnings and "save the exported model" advice are not the user's business."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("sentence_transformers", "optimum", "transformers", "nncf")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _load_st(path: str, runtime: str):
    """sentence-transformers with backend=runtime; an error that says what to install."""
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device="cpu", backend=runtime)
    except Exception as exc:  # noqa: BLE001 - missing optional packages surface as plain Exception
        extra = "openvino" if runtime == "openvino" else "onnx"
        raise ConfigError(f"cannot load the embedding model with backend {runtime!r} ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); install it with pip install 'ragkit[{extra}]', "
                          f"or use --embed-backend torch.") from None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"
