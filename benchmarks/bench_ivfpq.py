"""IVF-PQ at 1M vectors vs exact search, and HNSW for comparison (prints figures; asserts nothing).

    python benchmarks/bench_ivfpq.py --real-index corpora/nq-wiki/.ragkit          # 1M IVF-PQ, 200K HNSW
    python benchmarks/bench_ivfpq.py --size 100000 --hnsw-size 0                   # IVF-PQ only

IVF-PQ searches are measured twice at each nprobe, side by side: PQ order alone (rerank=0) and what
ragkit returns, the top store.rerank_pool(10) PQ candidates re-ranked exactly with their vectors read
from the index folder's embedding cache (filled by the child as a real build leaves it, not timed
with the build), plus the cost of those cache reads alone. `--pools 300,1000` adds columns re-ranking
larger pools (`ragkit search --rerank N`).

How 1M vectors are made (as bench_index.py does for 100K): the ~2.6K real MiniLM chunk vectors of
corpora/nq-wiki, plus mixtures of two of them (weights 0.3-0.7) with N(0, 0.01) noise, re-normalised,
so they stay on the manifold real embeddings occupy. Queries: real NQ questions embedded by the model
(recall@10 against exact search over the same 1M vectors). Each index is built in a child process;
its peak RSS is VmHWM from /proc (ru_maxrss would include the parent's, inherited across fork+exec),
reset just before the build so the figure is the build's own peak, vectors in RAM included.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def vectors(real_index: Path, size: int):
    import numpy as np

    from ragkit import store

    gen = store.open_generation(real_index)
    _, base = store._index_vectors(gen.index)
    rng = np.random.default_rng(0)
    n_extra = max(0, size - len(base))
    out = np.empty((size, base.shape[1]), dtype="float32")
    out[:min(size, len(base))] = base[:size]
    for s in range(0, n_extra, 100_000):  # in blocks: the float64 temporaries of 1M rows would be 3 GB
        m = min(100_000, n_extra - s)
        i1, i2 = rng.integers(0, len(base), m), rng.integers(0, len(base), m)
        w = rng.uniform(0.3, 0.7, (m, 1)).astype("float32")
        block = w * base[i1] + (1 - w) * base[i2] + rng.normal(0, 0.01, (m, base.shape[1])).astype("float32")
        out[len(base) + s:len(base) + s + m] = block
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, len(base)


def vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(args) -> None:
    """Child process: build one index folder with ragkit's store and print its figures as JSON."""
    import numpy as np

    from ragkit import store

    vecs, _ = vectors(Path(args.real_index), args.size)
    chunks = [store.NewChunk(f"part{i % 100:02d}", f"c{i}", f"part{i % 100:02d}", 0, 0, 1, 1, f"h{i}", "")
              for i in range(args.size)]
    rss0 = vm_hwm_mb()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    t = time.perf_counter()
    m = store.write_generation(Path(args.out), None, store.Settings("all-MiniLM-L6-v2", vecs.shape[1], {}),
                               remove_rels=[], file_records=[], new_chunks=chunks, new_vectors=vecs,
                               ivfpq_threshold=args.ivfpq_threshold, hnsw_threshold=0)
    build_s, peak = time.perf_counter() - t, vm_hwm_mb()
    t = time.perf_counter()  # the embedding cache a real build leaves (written while embedding, not here)
    cache = store.EmbeddingCache(Path(args.out) / "embcache.sqlite", "all-MiniLM-L6-v2", vecs.shape[1])
    for i in range(0, args.size, 50_000) if m["index_type"] == "ivfpq" else ():
        cache.put_many([c.text_hash for c in chunks[i:i + 50_000]], vecs[i:i + 50_000])
    cache.close()
    print(json.dumps({"build_s": build_s, "rss_before_mb": rss0, "peak_rss_mb": peak,
                      "cache_fill_s": time.perf_counter() - t, "manifest": m}))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real-index", default=str(ROOT / "corpora" / "nq-wiki" / ".ragkit"))
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--hnsw-size", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobes", default="8,32")
    ap.add_argument("--pools", default="", help="IVF-PQ: more re-rank pool sizes to measure, e.g. 300,1000")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--ivfpq-threshold", type=int)
    args = ap.parse_args()
    if args.child:
        return build(args)

    import faiss
    import numpy as np

    from ragkit import store
    from ragkit.embed import get_embedder

    print(f"machine: {os.cpu_count()} cores, load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"RAM {store._ram_bytes() / 2**30:.1f} GiB; faiss {faiss.__version__}")
    questions = [json.loads(line)["question"] for line in open(ROOT / "corpora" / "questions" / "nq-wiki.jsonl")]
    qs = random.Random(1).sample(questions, min(args.queries, len(questions)))
    qv = get_embedder().encode(qs)
    work = Path(tempfile.mkdtemp(prefix="ragkit-ivfpq-"))
    for kind, size in (("ivfpq", args.size), ("hnsw", args.hnsw_size)):
        if not size:
            continue
        out = work / kind
        t = time.perf_counter()
        res = subprocess.run([sys.executable, __file__, "--child", "--real-index", args.real_index, "--size",
                              str(size), "--out", str(out), "--ivfpq-threshold",
                              str(1 if kind == "ivfpq" else size + 1)], capture_output=True, text=True)
        if res.returncode:
            print(f"{kind} build failed: {res.stderr[-2000:]}")
            continue
        fig = json.loads(res.stdout.strip().splitlines()[-1])
        vecs, n_real = vectors(Path(args.real_index), size)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        _, truth = faiss.knn(qv, vecs, 10, faiss.METRIC_INNER_PRODUCT)
        exact_ms = (time.perf_counter() - t0) * 1000 / len(qv)
        del vecs
        gen = store.open_generation(out)
        faiss.omp_set_num_threads(1)

        def measure(nprobe=None, rerank=None):
            lat, got = [], []
            for v in qv:
                t1 = time.perf_counter()
                got.append([i for i, _ in gen.search(v[None, :], 10, nprobe=nprobe, rerank=rerank)[0]])
                lat.append((time.perf_counter() - t1) * 1000)
            rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
            return rec, sorted(lat)[len(lat) // 2], sorted(lat)[int(len(lat) * 0.95)]

        def cache_read_ms(nprobe):
            """p50 / p95 of reading one query's pool of vectors back (chunk table + embedding cache)."""
            pools = gen.search(qv, store.rerank_pool(10), nprobe=nprobe, rerank=0)
            lat = []
            for row in pools:
                t1 = time.perf_counter()
                found = gen.exact_vectors([i for i, _ in row])
                lat.append((time.perf_counter() - t1) * 1000)
                assert len(found) == len(row), "vectors missing from the embedding cache"
            return sorted(lat)[len(lat) // 2], sorted(lat)[int(len(lat) * 0.95)]

        m = fig["manifest"]
        print(f"\n== {kind}: {size:,} vectors ({n_real} real MiniLM chunk vectors + mixtures), built in "
              f"{fig['build_s']:.0f} s (load avg {load:.1f}); peak RSS of the build process "
              f"{fig['peak_rss_mb']:.0f} MB (peak before the build, making the vectors and chunk rows: "
              f"{fig['rss_before_mb']:.0f} MB); on disk {du(gen.path) / 1e6:.0f} MB (index.faiss "
              f"{(gen.path / 'index.faiss').stat().st_size / 1e6:.0f} MB)")
        print(f"   exact search (faiss.knn, 2 threads): {exact_ms:.1f} ms/query")
        if kind == "ivfpq":
            ivf = m["ivfpq"]
            pool = ivf["rerank_pool"]
            print(f"   nlist {ivf['nlist']}, PQ {ivf['m']}x{ivf['nbits']}, trained on {ivf['train_sample']:,} in "
                  f"{ivf['train_s']:.0f} s, on-disk lists {ivf['ondisk']}; embedding cache filled in "
                  f"{fig['cache_fill_s']:.0f} s ({(out / 'embcache.sqlite').stat().st_size / 1e6:.0f} MB)")
            print(f"   build-time recall@10 (sampled stored vectors as queries) by nprobe, top {pool} re-ranked: "
                  f"{ivf['recall_at_10']} -> default nprobe {ivf['nprobe']}; PQ order alone: {ivf['pq_recall_at_10']}")
            print(f"   {len(qv)} real NQ questions, recall@10 vs exact, search latency one thread "
                  f"(load avg {os.getloadavg()[0]:.1f}):")
            more = [int(x) for x in args.pools.split(",") if x]
            print(f"   {'nprobe':>6} | {'PQ order alone':^34} | {f'top {pool} re-ranked exactly':^34} | "
                  f"{'cache reads (top ' + str(pool) + ')':^24}" + "".join(f" | {f'top {n} re-ranked':^34}" for n in more))
            for nprobe in dict.fromkeys([int(x) for x in args.nprobes.split(",")] + [ivf["nprobe"]]):
                cols = [measure(nprobe, rerank=0), measure(nprobe)]
                c50, c95 = cache_read_ms(nprobe)
                cols += [measure(nprobe, rerank=n) for n in more]
                cells = [f"recall {r:.3f} p50 {a:5.2f} p95 {b:5.2f} ms" for r, a, b in cols]
                print(f"   {nprobe:>6} | " + " | ".join(cells[:2] + [f"p50 {c50:.2f} p95 {c95:.2f} ms"] + cells[2:]))
        else:
            rec, p50, p95 = measure()
            print(f"   HNSW M={store.HNSW_M} efSearch {store.HNSW_EF_SEARCH}: recall@10 vs exact {rec:.3f}; "
                  f"search p50 {p50:.2f} ms, p95 {p95:.2f} ms (1 thread)")
        gen.close()
        print(f"   elapsed {time.perf_counter() - t:.0f} s; load avg now {os.getloadavg()[0]:.1f}", flush=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
