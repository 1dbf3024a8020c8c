"""benchmarks/_synthetic.py: the large synthetic index the warm-query benchmarks time stays in the vector space
of the backend that made its real vectors (bench_index.py used to record every large index as torch's)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _synthetic import synthetic_index, time_packs  # noqa: E402

from ragkit import store  # noqa: E402
from ragkit.corpus import Corpus  # noqa: E402

needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="pip install 'ragkit[onnx]'")


@needs_onnxruntime
def test_synthetic_index_keeps_the_base_backend_and_its_queries_use_it(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "corpora" / "nq-wiki-sample" / "passages.jsonl", docs / "passages.jsonl")
    small = Corpus.open(docs, index_dir=tmp_path / "small", embed_backend="onnx-int8")
    small.index()
    base = store.open_generation(tmp_path / "small")
    real = base.manifest["chunks"]

    _, vecs = synthetic_index(tmp_path / "big", base, 600)
    manifest = json.loads(next((tmp_path / "big").glob("g*/manifest.json")).read_text())
    assert manifest["chunks"] == 600 and vecs.shape == (600, base.settings["dim"])
    assert manifest["settings"] == base.settings          # backend, precision, quantization included
    assert manifest["settings"]["embed_backend"] == "onnx-int8"

    big = Corpus.open(docs, index_dir=tmp_path / "big")   # no backend asked: the index's own
    assert big.backend.key == "onnx-int8"
    # a real chunk's own text finds itself at cosine ~1: the query is embedded in the index's vector space
    row = base.chunks([0])[0]
    top = big.search(f"{row.title}\n{row.text}" if row.title else row.text, k=1)[0]
    assert top.text == row.text and top.score > 0.999
    assert real < 600

    wall, cpu = time_packs(big, ["who wrote the origin of species"] * 4, warmup=1)
    assert len(wall) == len(cpu) == 3 and all(ms > 0 for ms in wall)
    big.close()
    small.close()
    base.close()


@needs_onnxruntime
def test_the_synthetic_index_keeps_each_chunks_stored_token_counts(tmp_path):
    """A large index made from a real one is packed as the real one is: from the counts its chunks stored."""
    from _synthetic import time_parts

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "corpora" / "nq-wiki-sample" / "passages.jsonl", docs / "passages.jsonl")
    Corpus.open(docs, index_dir=tmp_path / "small").index()
    base = store.open_generation(tmp_path / "small")
    synthetic_index(tmp_path / "big", base, 300)
    big = Corpus.open(docs, index_dir=tmp_path / "big")
    hits = big.search("who wrote the book the origin of species", k=20)
    assert len(hits) == 20 and all(h.token_counts and "o200k_base" in h.token_counts for h in hits)
    parts, _ = time_parts(big, ["who wrote the book the origin of species"])  # packs both ways, same result
    assert set(parts) == {"embed", "search", "pack", "pack_counting"}
    big.close()
    base.close()
