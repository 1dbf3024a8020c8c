"""Large synthetic indexes from a small real one, and the warm query timing both benchmarks report.

Embedding 100K chunks takes hours on 2 cores, so a large index holds the real chunk vectors of a small
index plus mixtures of two of them (+ small noise, re-normalised), with real chunk texts, and is
queried with real questions. The small index's manifest settings (model, backend, precision, ...)
are kept, so the large index is opened, and its queries embedded, by the backend that made its vectors.
Used by bench_index.py (default backend, several sizes) and bench_embed_backends.py (--warm-size, per backend).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path


def pct(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def synthetic_index(index_dir: Path, base, size: int, *, seed: int = 0):
    """Writes a `size`-chunk index at `index_dir` from the generation `base` (ragkit.store.Generation of
    a real index); returns (build seconds, vectors written)."""
    import faiss
    import numpy as np

    from ragkit import store

    ids, base_vecs = store._index_vectors(base.index)
    rows = base.chunks([int(i) for i in ids])
    chunks = [rows[int(i)] for i in ids]
    fields = {f.name for f in dataclasses.fields(store.Settings)}
    settings = store.Settings(**{k: v for k, v in base.settings.items() if k in fields})
    rng = np.random.default_rng(seed)
    # mixtures stay on the low-dimensional manifold real embeddings occupy (isotropic noise would not)
    n_extra = max(0, size - len(base_vecs))
    i1, i2 = rng.integers(0, len(base_vecs), n_extra), rng.integers(0, len(base_vecs), n_extra)
    w = rng.uniform(0.3, 0.7, (n_extra, 1)).astype("float32")
    extra = w * base_vecs[i1] + (1 - w) * base_vecs[i2] + rng.normal(0, 0.01, (n_extra, base_vecs.shape[1]))
    vecs = np.concatenate([base_vecs, extra.astype("float32")])[:size]
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    new_chunks = [store.NewChunk(f"part{i % 20:02d}.jsonl", f"syn#{i}", f"part{i % 20:02d}.jsonl",
                                 0, b.start_char, b.end_char, b.tokens, f"h{i}", b.text, b.title, b.counts)
                  for i, b in ((i, chunks[i % len(chunks)]) for i in range(size))]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build only; searches set their own (ragkit.store)
    try:
        t = time.perf_counter()
        store.write_generation(Path(index_dir), None, settings, remove_rels=[], file_records=[],
                               new_chunks=new_chunks, new_vectors=vecs)
        return time.perf_counter() - t, vecs
    finally:
        faiss.omp_set_num_threads(threads)


def time_packs(corpus, questions: list[str], *, warmup: int = 5, budget: int = 2000, model: str = "gpt-4o",
               k: int = 20) -> tuple[list[float], list[float]]:
    """(wall ms, CPU ms) per question of Corpus.pack (embed + search + pack), as a Q&A app pays per question
    with the model loaded: the first `warmup` questions are asked first and not timed."""
    for q in questions[:warmup]:
        corpus.pack(q, budget, model, k=k)
    wall, cpu = [], []
    for q in questions[warmup:]:
        t0, c0 = time.perf_counter(), time.process_time()
        corpus.pack(q, budget, model, k=k)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def time_parts(corpus, questions: list[str], *, budget: int = 2000, model: str = "gpt-4o", k: int = 20):
    """Where a warm question's time goes: ({"embed", "search", "pack", "pack_counting"}: ms per question, query
    vectors). embed: the corpus's own (its index's backend's) query embedder; search: FAISS alone; pack:
    pack_hits with the token counts the index stored; pack_counting: the same hits counted by the tokenizer
    (what packing cost before the index stored counts, and still costs for an index written before)."""
    import dataclasses

    import numpy as np

    from ragkit import store
    from ragkit.retrieve import pack_hits
    from ragkit.tokens import counter_for

    counter = counter_for(model)
    gen = store.open_generation(corpus.index_dir)
    parts, qvecs = {"embed": [], "search": [], "pack": [], "pack_counting": []}, []
    try:
        for q in questions:
            t0 = time.perf_counter()
            v = corpus.embedder().encode([q])
            t1 = time.perf_counter()
            gen.search(v, k)
            t2 = time.perf_counter()
            hits = corpus.search(q, k)
            t3 = time.perf_counter()
            stored = pack_hits(hits, budget, counter)
            parts["pack"].append((time.perf_counter() - t3) * 1000)
            uncounted = [dataclasses.replace(h, token_counts=None) for h in hits]
            t4 = time.perf_counter()
            assert pack_hits(uncounted, budget, counter) == stored
            parts["pack_counting"].append((time.perf_counter() - t4) * 1000)
            parts["embed"].append((t1 - t0) * 1000)
            parts["search"].append((t2 - t1) * 1000)
            qvecs.append(v[0])
    finally:
        gen.close()
    return parts, np.stack(qvecs)
