"""IVF-PQ at 1M vectors vs exact search, and HNSW for comparison (prints figures; asserts nothing).

    python benchmarks/bench_ivfpq.py --real-index corpora/nq-wiki/.ragkit          # 1M IVF-PQ, 200K HNSW
    python benchmarks/bench_ivfpq.py --size 100000 --hnsw-size 0                   # IVF-PQ only
    python benchmarks/bench_ivfpq.py --size 1000000 --hnsw-size 0 --milvus-lite    # + the same 1M in Milvus Lite

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

`--milvus-lite` writes the same vectors into Milvus Lite through ragkit's Milvus store (MilvusStore.write,
what `ragkit index --store milvus-lite:PATH` calls to fill a new collection; the index type is ragkit's
choice for that many chunks) and searches them through MilvusStore.search (what `ragkit search --store`
calls), one query at a time, against the same exact ground truth. Milvus Lite runs inside the process
that opens the .db (gRPC server threads), so the child's VmHWM is the whole cost. Its build time is the
write (insert + flush + alias), the close (Milvus Lite finishes its background compaction and
per-segment index builds) and a reopen + load as a reader would do it. A child that fails or takes longer
than --milvus-timeout is stopped and reported with how far it got, and the next --milvus-fallback size
is tried.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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


def vm_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")


class Handed(list):
    """The chunk list, noting how far the store has sliced it into insert batches: the progress of a
    write that may not finish."""

    handed = 0

    def __getitem__(self, key):
        if isinstance(key, slice):
            self.handed = max(self.handed, min(len(self), len(self) if key.stop is None else key.stop))
        return super().__getitem__(key)


def bench_chunks(size: int) -> Handed:
    """One chunk row per vector; doc_id c<i> names vector i (Milvus assigns its own ids)."""
    from ragkit import store

    return Handed(store.NewChunk(f"part{i % 100:02d}", f"c{i}", f"part{i % 100:02d}", 0, 0, 1, 1, f"h{i}", "")
                  for i in range(size))


def build(args) -> None:
    """Child process: build one index folder with ragkit's store and print its figures as JSON."""
    from ragkit import store

    with open("/proc/self/oom_score_adj", "w") as f:  # a shared machine: out of RAM, the kernel kills this first
        f.write("1000")
    if args.store:
        return build_milvus(args)
    vecs, _ = vectors(Path(args.real_index), args.size)
    chunks = bench_chunks(args.size)
    rss0 = vm_hwm_mb()
    reset_peak_rss()
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


def build_milvus(args) -> None:
    """Child process: the vectors written into Milvus Lite through ragkit's Milvus store, then closed and
    reopened + loaded as a reader would; figures as JSON on stdout, progress every 30 s on stderr."""
    import threading

    from ragkit import store, stores

    vecs, _ = vectors(Path(args.real_index), args.size)
    chunks = bench_chunks(args.size)
    rss0 = vm_hwm_mb()
    reset_peak_rss()
    db, t0, phase = Path(stores.parse_store(args.store).uri), time.perf_counter(), ["write"]

    def progress():
        while True:
            time.sleep(30)
            print(f"progress: {time.perf_counter() - t0:.0f} s in, at the {phase[0]}; {chunks.handed:,} of "
                  f"{len(chunks):,} rows handed to Milvus, RSS {vm_rss_mb():.0f} MB (peak {vm_hwm_mb():.0f}), "
                  f".db {du(db) / 1e6:.0f} MB", file=sys.stderr, flush=True)

    threading.Thread(target=progress, daemon=True).start()
    ms = stores.open_store(args.store, Path(args.out), Path(args.out))
    ms.prepare()
    t = time.perf_counter()
    m = ms.write(None, store.Settings("all-MiniLM-L6-v2", vecs.shape[1], {}), remove_rels=[], file_records=[],
                 new_chunks=chunks, new_vectors=vecs)
    write_s = time.perf_counter() - t
    del vecs
    t, phase[0] = time.perf_counter(), "close"
    ms.close()  # frees the .db: Milvus Lite drains its background compaction and index builds first
    close_s = time.perf_counter() - t
    t, phase[0] = time.perf_counter(), "reopen and load"
    ms = stores.open_store(args.store, Path(args.out), Path(args.out))
    view = ms.open_current()
    load_s = time.perf_counter() - t
    live = view.live_chunks
    ms.close()
    print(json.dumps({"write_s": write_s, "close_s": close_s, "load_s": load_s, "live": live, "rss_before_mb": rss0,
                      "peak_rss_mb": vm_hwm_mb(), "manifest": m}))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pct(lat: list[float], q: float) -> float:
    return sorted(lat)[min(len(lat) - 1, int(len(lat) * q))]


def recall_at_10(truth, got) -> float:
    import numpy as np

    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))


class GroundTruth:
    """Exact top-10 of the queries over the vectors of a size (faiss.knn, all threads), made once per size
    and shared by every index measured at it."""

    def __init__(self, real_index: Path, qv):
        self.real_index, self.qv, self._by_size = real_index, qv, {}

    def __call__(self, size: int):
        if size not in self._by_size:
            import faiss

            vecs, n_real = vectors(self.real_index, size)
            t0 = time.perf_counter()
            _, truth = faiss.knn(self.qv, vecs, 10, faiss.METRIC_INNER_PRODUCT)
            self._by_size[size] = (truth, n_real, (time.perf_counter() - t0) * 1000 / len(self.qv))
        return self._by_size[size]


def run_child(args, size: int, out: Path, extra: list[str], timeout: float | None = None):
    """One build in a child process: (figures, None) or (None, what went wrong)."""
    cmd = [sys.executable, __file__, "--child", "--real-index", args.real_index, "--size", str(size), "--out", str(out)]
    try:
        res = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # run() kills the child and keeps what it printed
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return None, (f"stopped after {timeout:.0f} s (--milvus-timeout, the child from its start); last progress: "
                      f"{last_progress(err)}")
    if res.returncode:
        return None, (f"exit {res.returncode}" + (" (killed by a signal: out of memory?)" if res.returncode < 0 else "")
                      + f"; last progress: {last_progress(res.stderr)}; stderr tail: {res.stderr[-1500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1]), None


def last_progress(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("progress: ")]
    return lines[-1].removeprefix("progress: ") if lines else "none printed (less than 30 s in)"


def measure_milvus(args, qv, truth_of, work: Path, summary: list) -> None:
    """The same vectors in Milvus Lite, written and searched through ragkit's Milvus store; the first size
    of --size, then --milvus-fallback that holds is measured."""
    from ragkit import stores

    sizes = [args.size] + [int(x) for x in args.milvus_fallback.split(",") if x and int(x) < args.size]
    for size in dict.fromkeys(sizes):
        url = f"milvus-lite:{work / f'milvus-{size}.db'}"
        t = time.perf_counter()
        fig, failed = run_child(args, size, work / f"milvus-{size}-state", ["--store", url], args.milvus_timeout)
        db = Path(stores.parse_store(url).uri)
        if failed:
            print(f"\n== milvus-lite: {size:,} vectors did not hold: {failed}; .db {du(db) / 1e6:.0f} MB when it "
                  f"stopped", flush=True)
            shutil.rmtree(db, ignore_errors=True)
            continue
        truth, n_real, _ = truth_of(size)
        m = fig["manifest"]
        ms = stores.open_store(url, work / f"milvus-{size}-state", work)
        rss0, t0 = vm_rss_mb(), time.perf_counter()
        view = ms.open_current()
        serve_load_s, serve_mb = time.perf_counter() - t0, vm_rss_mb() - rss0
        ms.search(view, qv[:1], 10)  # warm-up
        lat, got = [], []
        for v in qv:
            t1 = time.perf_counter()
            rows = ms.search(view, v[None, :], 10)[0]
            lat.append((time.perf_counter() - t1) * 1000)
            got.append([int(row.doc_id[1:]) for row, _ in rows])
        rec, p50, p95 = recall_at_10(truth, got), pct(lat, 0.5), pct(lat, 0.95)
        ms.close()
        build_s = fig["write_s"] + fig["close_s"] + fig["load_s"]
        params = (f"M {m['hnsw']['M']}, efConstruction {m['hnsw']['efConstruction']}; search ef {m['hnsw']['ef']}"
                  if m["hnsw"] else "exact")
        print(f"\n== milvus-lite: {size:,} vectors ({n_real} real MiniLM chunk vectors + mixtures), {fig['live']:,} "
              f"rows after reopening; ragkit's index there: {m['index_type']} ({params}), metric {m['metric']}")
        print(f"   built in {build_s:.0f} s = write {fig['write_s']:.0f} s (insert in batches of "
              f"{milvus_insert_batch()} + flush + alias) + close {fig['close_s']:.0f} s (Milvus Lite drains its "
              f"compaction and per-segment index builds) + reopen and load {fig['load_s']:.0f} s; peak RSS of the "
              f"build process {fig['peak_rss_mb']:.0f} MB (before: {fig['rss_before_mb']:.0f} MB making the vectors "
              f"and chunk rows); on disk {du(db) / 1e6:.0f} MB ({index_files(db)})")
        print(f"   searching process: load {serve_load_s:.0f} s, RSS +{serve_mb:.0f} MB; {len(qv)} real NQ questions "
              f"through MilvusStore.search, one at a time, k=10: recall@10 vs exact {rec:.3f}, p50 {p50:.2f} ms, "
              f"p95 {p95:.2f} ms (load avg {os.getloadavg()[0]:.1f})")
        print(f"   elapsed {time.perf_counter() - t:.0f} s; load avg now {os.getloadavg()[0]:.1f}", flush=True)
        summary.append((f"Milvus Lite {m['index_type'].removeprefix('milvus-')} ({params})", size, build_s,
                        fig["peak_rss_mb"], du(db), rec, p50, p95))
        shutil.rmtree(db, ignore_errors=True)
        return


def milvus_insert_batch() -> int:
    from ragkit import milvus_store

    return milvus_store.INSERT_BATCH


def index_files(db: Path) -> str:
    """What Milvus Lite keeps: parquet data segments and, per segment, a vector-index sidecar
    (<segment>.vector.<type>.*, one FAISS index each)."""
    files = [p for p in db.rglob("*") if p.is_file()]
    data = [p for p in files if p.suffix == ".parquet" and p.name.startswith("data_")]
    vec = [p for p in files if p.parent.name == "indexes" and ".vector." in p.name]

    def mb(ps) -> str:
        return f"{sum(p.stat().st_size for p in ps) / 1e6:.0f} MB"

    kinds = sorted({p.name.split(".vector.", 1)[1].split(".")[0].upper() for p in vec})
    return f"{len(data)} data segments {mb(data)}, {len(vec)} per-segment {'/'.join(kinds)} vector indexes {mb(vec)}"


def print_summary(summary: list, qn: int) -> None:
    print(f"\n== summary ({qn} real NQ questions, k=10, one query at a time; recall@10 vs exact over the same vectors)")
    print(f"   {'index':<58} {'vectors':>9} {'build s':>8} {'peak RSS':>9} {'on disk':>9} {'recall@10':>9} "
          f"{'p50 ms':>7} {'p95 ms':>7}")
    for name, size, build_s, rss, disk, rec, p50, p95 in summary:
        print(f"   {name:<58} {size:>9,} {build_s:>8.0f} {rss / 1e3:>7.2f}GB {disk / 1e6:>7.0f}MB {rec:>9.3f} "
              f"{p50:>7.2f} {p95:>7.2f}")


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
    ap.add_argument("--milvus-lite", action="store_true", help="also the same vectors in Milvus Lite (ragkit's store)")
    ap.add_argument("--milvus-timeout", type=float, default=1200, help="seconds a Milvus Lite build may take")
    ap.add_argument("--milvus-fallback", default="500000,200000",
                    help="smaller sizes to try in Milvus Lite when --size does not hold")
    ap.add_argument("--store", help=argparse.SUPPRESS)  # child: a milvus-lite: URL to write into
    args = ap.parse_args()
    if args.child:
        return build(args)

    import faiss

    from ragkit import store
    from ragkit.embed import get_embedder

    print(f"machine: {os.cpu_count()} cores, load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"RAM {store._ram_bytes() / 2**30:.1f} GiB; faiss {faiss.__version__}")
    questions = [json.loads(line)["question"] for line in open(ROOT / "corpora" / "questions" / "nq-wiki.jsonl")]
    qs = random.Random(1).sample(questions, min(args.queries, len(questions)))
    qv = get_embedder().encode(qs)
    work = Path(tempfile.mkdtemp(prefix="ragkit-ivfpq-"))
    truth_of, summary = GroundTruth(Path(args.real_index), qv), []
    for kind, size in (("ivfpq", args.size), ("hnsw", args.hnsw_size)):
        if not size:
            continue
        out = work / kind
        t = time.perf_counter()
        fig, failed = run_child(args, size, out, ["--ivfpq-threshold", str(1 if kind == "ivfpq" else size + 1)])
        if failed:
            print(f"{kind} build failed: {failed}")
            continue
        load = os.getloadavg()[0]
        truth, n_real, exact_ms = truth_of(size)
        gen = store.open_generation(out)
        faiss.omp_set_num_threads(1)

        def measure(nprobe=None, rerank=None):
            lat, got = [], []
            for v in qv:
                t1 = time.perf_counter()
                got.append([i for i, _ in gen.search(v[None, :], 10, nprobe=nprobe, rerank=rerank)[0]])
                lat.append((time.perf_counter() - t1) * 1000)
            return recall_at_10(truth, got), pct(lat, 0.5), pct(lat, 0.95)

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
                summary.append((f"FAISS IVF-PQ nprobe {nprobe}, top {pool} re-ranked", size, fig["build_s"],
                                fig["peak_rss_mb"], du(gen.path), *cols[1]))
        else:
            rec, p50, p95 = measure()
            summary.append((f"FAISS HNSW M {store.HNSW_M}, efSearch {store.HNSW_EF_SEARCH}", size, fig["build_s"],
                            fig["peak_rss_mb"], du(gen.path), rec, p50, p95))
            print(f"   HNSW M={store.HNSW_M} efSearch {store.HNSW_EF_SEARCH}: recall@10 vs exact {rec:.3f}; "
                  f"search p50 {p50:.2f} ms, p95 {p95:.2f} ms (1 thread)")
        gen.close()
        print(f"   elapsed {time.perf_counter() - t:.0f} s; load avg now {os.getloadavg()[0]:.1f}", flush=True)
    if args.milvus_lite:
        measure_milvus(args, qv, truth_of, work, summary)
    print_summary(summary, len(qv))
    print(f"load avg at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
