"""Embedding backends: each backend's vectors against PyTorch's, ragkit's ONNX Runtime runner against
sentence-transformers' own onnx backend, the index's backend enforced, a torch-free cold query, and an
atomic, idempotent export. The exports are made once in the shared cache (the first run takes ~2 min)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.embed import Embedder, OnnxEmbedder, get_embedder, resolve_model  # noqa: E402
from ragkit.embed_export import (PROVENANCE_FILE, ensure_exported, export_dir, get_backend,  # noqa: E402
                                 is_exported, read_provenance)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The cat sat on the mat.", "A feline rested on a rug.", "Stock markets fell sharply on Monday.",
         "who wrote the book the origin of species",
         "On the Origin of Species, published on 24 November 1859, is a work of scientific literature by Charles "
         "Darwin which is considered to be the foundation of evolutionary biology.",
         "Photosynthesis converts light into chemical energy. " * 40]   # > 256 pieces: truncated
# Least cosine to the PyTorch vector, per text: fp32 exports are the same function; int8 weights move a little.
MIN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.97, "openvino": 0.9999}


def _installed(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


needs_onnx = pytest.mark.skipif(not (_installed("onnxruntime") and _installed("optimum")),
                                reason="pip install 'ragkit[onnx]'")


@pytest.fixture(scope="module")
def torch_vectors():
    return get_embedder(None, "torch").encode(TEXTS)


@needs_onnx
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8", "openvino"])
def test_backend_vectors_are_close_to_torch(backend, torch_vectors):
    if backend == "openvino" and not _installed("openvino"):
        pytest.skip("pip install 'ragkit[openvino]'")
    vecs = get_embedder(None, backend).encode(TEXTS)
    assert vecs.shape == torch_vectors.shape and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cos = (vecs * torch_vectors).sum(axis=1)
    assert cos.min() >= MIN_COSINE[backend], cos


@needs_onnx
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_runner_matches_sentence_transformers_onnx_backend(backend):
    """ragkit's torch-free runner (tokenizers + ONNX Runtime) against sentence-transformers' onnx
    backend on the same model file: same truncation at 256, pooling and normalisation."""
    ours = get_embedder(None, backend)
    assert isinstance(ours, OnnxEmbedder) and ours.max_tokens == 256
    theirs = Embedder(None, backend=backend)  # sentence-transformers backend="onnx" on the exported file
    a, b = ours.encode(TEXTS), theirs.encode(TEXTS, batch_size=1)  # ragkit runs one text per run on the CPU
    assert np.abs(a - b).max() < 1e-5
    # the long text really is truncated: a different tail past 256 pieces changes nothing
    long = TEXTS[-1]
    x, y = ours.encode([long + " volcanoes erupt", long + " oceans are deep"])
    assert np.allclose(x, y, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_vectors_are_the_same_on_any_number_of_threads_and_for_concurrent_callers(backend):
    """Runs go side by side on single-threaded sessions: neither the thread count nor other callers'
    texts may change a text's vector (the embedding cache and query-vs-index depend on it)."""
    from concurrent.futures import ThreadPoolExecutor

    texts = TEXTS * 3
    one = OnnxEmbedder(None, backend=backend, threads=1).encode(texts)
    two = OnnxEmbedder(None, backend=backend, threads=2)
    assert two.threads == 2 and np.array_equal(two.encode(texts), one)
    with ThreadPoolExecutor(8) as pool:  # 8 app threads asking at once, some with several texts
        got = list(pool.map(lambda i: two.encode(texts[i:i + 1 + i % 3]), range(len(texts) - 2)))
    for i, vecs in enumerate(got):
        assert np.array_equal(vecs, one[i:i + 1 + i % 3])


def _ragkit(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def int8_index(tmp_path_factory):
    docs = tmp_path_factory.mktemp("docs")
    shutil.copy(ROOT / "corpora" / "nq-wiki-sample" / "passages.jsonl", docs / "passages.jsonl")
    _ragkit("index", str(docs), "-q", "--embed-backend", "onnx-int8")
    return docs


@needs_onnx
def test_manifest_records_backend_and_other_backends_are_refused(int8_index):
    manifest = json.loads(next((int8_index / ".ragkit").glob("g*/manifest.json")).read_text())
    assert manifest["settings"]["embed_backend"] == "onnx-int8"
    assert manifest["settings"]["embed_precision"] == "int8"
    assert manifest["settings"]["embed_quantization"] == get_backend("onnx-int8").quantization
    for how in (["--embed-backend", "torch"], []):
        env = {} if how else {"RAGKIT_EMBED_BACKEND": "onnx"}
        proc = _ragkit("search", str(int8_index), "origin of species", *how, env=env, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "ragkit index <PATH> --rebuild" in proc.stderr and "'onnx-int8'" in proc.stderr, proc.stderr


@needs_onnx
def test_cold_query_on_an_onnx_index_imports_neither_torch_nor_sentence_transformers(int8_index):
    code = ("import sys; from click.testing import CliRunner; from ragkit.cli import main;"
            f"r = CliRunner().invoke(main, ['search', {str(int8_index)!r}, 'who wrote the origin of species', '--json'],"
            " catch_exceptions=False); assert r.exit_code == 0, r.output;"
            "import json; print(json.loads(r.output)['hits'][0]['text'][:30]);"
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    first_hit, loaded = out.stdout.strip().splitlines()[-2:]
    assert "Origin of Species" in first_hit
    assert loaded == "[]"


@needs_onnx
def test_index_without_backend_field_is_torch(tmp_path):
    """Indexes written before backends existed have no embed_backend: they are torch indexes."""
    shutil.copy(ROOT / "corpora" / "nq-wiki-sample" / "passages.jsonl", tmp_path / "p.jsonl")
    _ragkit("index", str(tmp_path), "-q", "--embed-backend", "torch")
    mf = next((tmp_path / ".ragkit").glob("g*/manifest.json"))
    m = json.loads(mf.read_text())
    for key in ("embed_backend", "embed_precision", "embed_quantization"):
        del m["settings"][key]
    mf.write_text(json.dumps(m))
    assert "Origin of Species" in _ragkit("search", str(tmp_path), "origin of species", "-k", "1").stdout
    proc = _ragkit("search", str(tmp_path), "origin of species", "--embed-backend", "onnx-int8", check=False)
    assert proc.returncode == 1 and "index has 'torch'" in proc.stderr and "--rebuild" in proc.stderr


def test_embedding_cache_key_separates_backends():
    from ragkit.embed_export import backends

    keys = {b.cache_key("all-MiniLM-L6-v2") for b in backends().values()}
    assert len(keys) == len(backends())
    assert get_backend("torch").cache_key("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"  # old caches stay valid


def test_unknown_backend_is_a_clear_error(monkeypatch):
    from ragkit.errors import ConfigError

    monkeypatch.setenv("RAGKIT_EMBED_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="unknown embedding backend 'tensorrt'; choose one of torch, onnx"):
        get_backend(None)


@needs_onnx
def test_export_is_idempotent():
    name, source = resolve_model(None)
    backend = get_backend("onnx-int8")
    folder = ensure_exported(name, source, backend)
    stamp = (folder / PROVENANCE_FILE).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert ensure_exported(name, source, backend) == folder
    assert time.perf_counter() - t0 < 0.5 and (folder / PROVENANCE_FILE).stat().st_mtime_ns == stamp
    prov = read_provenance(folder)
    assert prov["backend"] == "onnx-int8" and prov["precision"] == "int8" and (folder / prov["model_file"]).is_file()
    assert not (folder / "onnx" / "model.onnx").exists()  # only the int8 graph in the int8 export


@needs_onnx
@pytest.mark.slow
def test_export_is_atomic_under_kill_9(tmp_path):
    """Killed after the files are written but before the rename: nothing counts as exported, the next
    call exports cleanly, and the temp folder does not stay behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAGKIT_CACHE_DIR": str(tmp_path), "RAGKIT_CRASH_AT": "after_export"}
    code = ("from ragkit.embed import resolve_model; from ragkit.embed_export import ensure_exported, get_backend;"
            "n, s = resolve_model(None); print(ensure_exported(n, s, get_backend('onnx')))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    name, source = resolve_model(None)
    os.environ["RAGKIT_CACHE_DIR"] = str(tmp_path)
    try:
        final = export_dir(name, source, get_backend("onnx"))
        assert not final.exists() and not is_exported(final)
        del env["RAGKIT_CRASH_AT"]
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert is_exported(final) and Path(proc.stdout.strip()) == final
        assert [p.name for p in final.parent.iterdir() if p.name.startswith(".tmp-")] == []  # the killed one's is gone
    finally:
        del os.environ["RAGKIT_CACHE_DIR"]
