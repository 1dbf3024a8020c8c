"""Milvus Lite vs the FAISS folder on the same NQ vectors: build time, size on disk, query latency
(embed + search + pack, one question at a time) and recall@5 of the gold passage.

    python benchmarks/bench_milvus.py [--sample 300] [--seed 1]

Both stores index corpora/nq-wiki with the same settings. The vectors are embedded once (a warm-up
build) and both builds then take them from the content-hash embedding cache, so build time is the
store's own work (load, chunk, write) and both hold exactly the same vectors. Questions: a seeded
sample of corpora/questions/nq-wiki.jsonl (none of them was used to tune anything here).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpora" / "nq-wiki"
QUESTIONS = ROOT / "corpora" / "questions" / "nq-wiki.jsonl"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(name: str, corpus, questions: list[dict], build_s: float, size: int, budget: int) -> dict:
    corpus.search("warm-up", 5)  # model and index loaded before timing
    lat, found = [], 0
    for q in questions:
        t0 = time.perf_counter()
        packed = corpus.pack(q["question"], budget_tokens=budget, model="gpt-4o-mini", k=5)
        lat.append(time.perf_counter() - t0)
        found += q["passage_id"] in {c.doc_id.rsplit("#", 1)[-1] for c in packed.chunks}
    chunks = corpus._generation().live_chunks
    return {"store": name, "chunks": chunks, "build_s": round(build_s, 2), "bytes": size,
            "bytes_per_chunk": round(size / chunks), "p50_ms": round(1000 * _pct(lat, 0.5), 1),
            "p95_ms": round(1000 * _pct(lat, 0.95), 1), "recall@5": round(found / len(questions), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=int, default=100_000, help="pack budget (tokens): large, so recall@5 is "
                                                                "the search's, not the packing's")
    args = ap.parse_args()
    from ragkit.corpus import Corpus

    qs = random.Random(args.seed).sample([json.loads(line) for line in QUESTIONS.open()], args.sample)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    try:
        warm = Corpus.open(CORPUS, index_dir=tmp / "warm")
        t0 = time.perf_counter()
        report = warm.index()
        print(f"embedded once: {report.chunks_embedded} chunks in {time.perf_counter() - t0:.1f} s "
              f"({report.chunks_per_s:.0f} chunks/s)")
        cache = tmp / "warm" / "embcache.sqlite"

        folder_dir = tmp / "faiss"
        folder_dir.mkdir()
        shutil.copy(cache, folder_dir / "embcache.sqlite")
        faiss_corpus = Corpus.open(CORPUS, index_dir=folder_dir)
        t0 = time.perf_counter()
        r = faiss_corpus.index()
        faiss_build = time.perf_counter() - t0
        assert r.chunks_embedded == 0
        gen = faiss_corpus._generation()
        faiss_size = _size(gen.path / "index.faiss") + _size(gen.path / "chunks.sqlite")

        url = f"milvus-lite:{tmp / 'milvus.db'}"
        milvus_corpus = Corpus.open(CORPUS, index_dir=tmp / "unused", store=url)
        milvus_corpus.store.prepare()
        shutil.copy(cache, milvus_corpus.store.cache_path)
        t0 = time.perf_counter()
        r = milvus_corpus.index()
        milvus_build = time.perf_counter() - t0
        assert r.chunks_embedded == 0
        milvus_size = _size(tmp / "milvus.db")

        rows = [measure("faiss-folder (flat)", faiss_corpus, qs, faiss_build, faiss_size, args.budget),
                measure("milvus-lite (FLAT)", milvus_corpus, qs, milvus_build, milvus_size, args.budget)]
        print(f"\n{len(qs)} NQ questions (seed {args.seed}); latency = embed + search + pack, one question at a time")
        print(f"{'store':<22}{'chunks':>7}{'build s':>9}{'on disk':>11}{'B/chunk':>9}{'p50 ms':>8}{'p95 ms':>8}"
              f"{'recall@5':>10}")
        for x in rows:
            print(f"{x['store']:<22}{x['chunks']:>7}{x['build_s']:>9}{x['bytes'] / 1e6:>9.1f}MB{x['bytes_per_chunk']:>9}"
                  f"{x['p50_ms']:>8}{x['p95_ms']:>8}{x['recall@5']:>10.4f}")
        diff = 100 * (rows[1]["recall@5"] - rows[0]["recall@5"])
        print(f"recall@5 difference (Milvus - FAISS): {diff:+.2f} points")
        milvus_corpus.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
