"""Embedding backends side by side, in one run on the same chunks (prints figures; asserts nothing).

    python benchmarks/bench_embed_backends.py                    # 600 NQ passages, 300 questions (seed 0)
    python benchmarks/bench_embed_backends.py --passages 0 --questions 0   # all 2,599 passages, 2,655 questions
    python benchmarks/bench_embed_backends.py --backends torch,onnx-int8 --thread-texts 0
    python benchmarks/bench_embed_backends.py --backends torch,onnx-int8 --questions 100 --thread-texts 0 --warm-size 100000

For each backend (torch fp32 is the reference every other figure is set against):
  1. `ragkit index` of the first --passages corpora/nq-wiki passages in a new process: chunks/s of the embedding step and the
     process's peak RSS (exports are made beforehand, once, and not timed);
  2. recall@5 of the gold passage: `ragkit search --queries` over a fixed-seed sample of the
     corpora/questions/nq-wiki.jsonl questions whose gold passage is indexed;
  3. cold `ragkit search DIR "q"` and cold `ragkit ask DIR "q" --dry-run` (retrieve path) wall time,
     each a new process, median of --cold-runs;
  4. warm query p50 (Corpus.search in one process, model loaded);
  5. threads: encode --thread-texts chunk texts with 1 and 2 threads, quiet and with a busy-loop
     process competing for a core;
  6. --warm-size N: warm embed + search + pack p50/p95 (Corpus.pack, k=20 into 2,000 gpt-4o tokens, model
     loaded, after 5 warm-up questions) on a synthetic N-chunk index in the backend's own vector space:
     its real chunk vectors from 1. plus mixtures of two of them (benchmarks/_synthetic.py, as bench_index.py).
The load average is printed before and after: the machine is shared, so every figure is relative.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))
from _synthetic import pct, synthetic_index, time_packs, time_parts  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
RAGKIT = [sys.executable, "-m", "ragkit.cli"]
QUERY = "who wrote the book the origin of species"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def child_index(corpus: str, index_dir: str, backend: str) -> dict:
    """`ragkit index` in a new process, reporting its own peak RSS."""
    code = ("import json, sys; from ragkit.corpus import Corpus;"
            f"r = Corpus.open({corpus!r}, index_dir={index_dir!r}, embed_backend={backend!r}, rebuild=True)"
            ".index(rebuild=True).to_dict();"
            # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child would report its parent's.
            "r['peak_rss_mb'] = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024;"
            "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall(corpus: str, index_dir: str, questions: list[dict], k: int = 5) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(q["question"].replace("\n", " ") for q in questions) + "\n")
    t0 = time.perf_counter()
    out = subprocess.run(RAGKIT + ["search", corpus, "--queries", f.name, "-k", str(k), "--index-dir", index_dir],
                         env=ENV, check=True, capture_output=True, text=True).stdout
    took = time.perf_counter() - t0
    os.unlink(f.name)
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    found = sum(any(h["doc_id"].rsplit("#", 1)[-1] == q["passage_id"] for h in row["hits"])
                for q, row in zip(questions, rows))
    return found / len(questions), took


def cold(args: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(RAGKIT + args, env=ENV, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def warm_p50(corpus: str, index_dir: str, questions: list[dict]) -> float:
    from ragkit.corpus import Corpus

    c = Corpus.open(corpus, index_dir=index_dir)
    c.search(QUERY)
    times = []
    for q in questions[:40]:
        t0 = time.perf_counter()
        c.search(q["question"])
        times.append(time.perf_counter() - t0)
    c.close()
    return statistics.median(times) * 1000


def warm_large(corpus: str, index_dir: str, backend: str, size: int, questions: list[dict]) -> dict:
    """Warm Corpus.pack p50/p95 ms on a `size`-chunk synthetic index seeded with this backend's real chunk
    vectors (the index at index_dir), queries embedded by the same backend; the large index is deleted after."""
    from ragkit import store
    from ragkit.corpus import Corpus

    big = Path(f"{index_dir}-warm{size}")
    base = store.open_generation(Path(index_dir))
    try:
        build_s, _ = synthetic_index(big, base, size)
    finally:
        base.close()
    c = Corpus.open(corpus, index_dir=big, embed_backend=backend)  # refuses an index of another backend
    try:
        kind = c.stats()["index_type"]
        asked = [QUERY] + [q["question"] for q in questions]
        wall, _ = time_packs(c, asked, warmup=5)
        parts, _ = time_parts(c, asked[5:])
    finally:
        c.close()
        shutil.rmtree(big, ignore_errors=True)
    return {"warm_big_p50": pct(wall, .5), "warm_big_p95": pct(wall, .95), "warm_big_build_s": build_s,
            "warm_big_kind": kind, "warm_big_n": len(wall), **{f"warm_big_{p}": pct(v, .5) for p, v in parts.items()}}


def thread_matrix(backend: str, texts: list[str]) -> dict:
    """chunks/s with 1 and 2 threads, quiet and against a busy-loop process."""
    from ragkit.embed import Embedder, OnnxEmbedder
    from ragkit.embed_export import get_backend

    cls = OnnxEmbedder if get_backend(backend).runtime == "onnx" else Embedder
    out = {}
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads in (1, 2):
                emb = cls(None, threads=threads, backend=backend)
                emb.encode(texts[:16])
                t0 = time.perf_counter()
                emb.encode(texts)
                out[(busy, threads)] = len(texts) / (time.perf_counter() - t0)
        finally:
            if hog:
                hog.kill()
                hog.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,openvino")
    ap.add_argument("--questions", type=int, default=300, help="questions sampled (seed 0); 0 = all")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--thread-texts", type=int, default=200, help="chunk texts per thread measurement; 0 = skip")
    ap.add_argument("--passages", type=int, default=600,
                    help="index the first N NQ passages (0 = all 2,599); questions whose gold passage is among them")
    ap.add_argument("--warm-size", type=int, default=0,
                    help="also time warm embed + search + pack on a synthetic index of N chunks per backend "
                         "(e.g. 100000; 0 = off)")
    ap.add_argument("--work", default=None, help="folder for the indexes (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-embed-"))
    lines = (ROOT / "corpora" / "nq-wiki" / "passages.jsonl").read_text().splitlines()
    lines = lines[:args.passages] if args.passages else lines
    ids = {json.loads(line)["id"] for line in lines}
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    (work / "corpus" / "passages.jsonl").write_text("\n".join(lines) + "\n")
    corpus = str(work / "corpus")
    qs = [q for q in map(json.loads, open(ROOT / "corpora" / "questions" / "nq-wiki.jsonl")) if q["passage_id"] in ids]
    if args.questions and args.questions < len(qs):
        qs = random.Random(0).sample(qs, args.questions)
    started = time.perf_counter()
    print(f"load average before: {load()}   ({os.cpu_count()} cores; shared machine)")

    from ragkit.embed import resolve_model
    from ragkit.embed_export import ensure_exported, get_backend

    name, source = resolve_model(None)
    wanted = []
    for b in args.backends.split(","):
        try:
            ensure_exported(name, source, get_backend(b))
            wanted.append(b)
        except Exception as exc:  # noqa: BLE001 - an optional backend that is not installed is reported
            print(f"{b}: skipped ({str(exc)[:160]})")

    rows = {}
    for b in wanted:
        idx = str(work / b)
        rep = child_index(corpus, idx, b)
        r, search_s = recall(corpus, idx, qs)
        rows[b] = {"chunks": rep["chunks_embedded"], "chunks_per_s": rep["chunks_embedded"] / rep["embed_s"],
                   "rss": rep["peak_rss_mb"], "recall": r, "batch_search_s": search_s,
                   "cold_search": cold(["search", corpus, QUERY, "--index-dir", idx], args.cold_runs),
                   "cold_ask": cold(["ask", corpus, QUERY, "--dry-run", "--strategy", "retrieve", "--no-ledger",
                                     "--index-dir", idx], args.cold_runs),
                   "warm_ms": warm_p50(corpus, idx, qs)}
        if args.warm_size:
            rows[b].update(warm_large(corpus, idx, b, args.warm_size, qs))
        r = rows[b]
        big = (f"; {args.warm_size}-chunk {r['warm_big_kind']} index built in {r['warm_big_build_s']:.0f} s; warm "
               f"p50 parts: embed {r['warm_big_embed']:.1f} ms, FAISS search {r['warm_big_search']:.2f} ms, "
               f"pack {r['warm_big_pack']:.2f} ms (counting each hit instead of the stored counts: "
               f"{r['warm_big_pack_counting']:.2f} ms)" if args.warm_size else "")
        print(f"  {b}: done (load {load()}{big})", flush=True)

    ref = rows.get("torch")

    def vs(b, key, fmt, ratio=True):
        v = rows[b][key]
        if not ref or b == "torch":
            return fmt.format(v)
        rel = f"{v / ref[key]:.2f}x" if ratio else f"{(v - ref[key]) * 100:+.1f} pt"
        return fmt.format(v) + f" ({rel})"

    size = f"{args.warm_size // 1000}K" if args.warm_size % 1000 == 0 else str(args.warm_size)
    print(f"\nindex of the first {len(lines)} corpora/nq-wiki passages ({next(iter(rows.values()))['chunks'] if rows else 0} chunks), "
          f"recall over {len(qs)} questions (seed 0); (x) = relative to torch")
    if args.warm_size and rows:
        print(f"warm {size}: Corpus.pack (embed + search + pack, k=20 into 2,000 gpt-4o tokens) on a synthetic "
              f"{args.warm_size}-chunk index per backend, over {next(iter(rows.values()))['warm_big_n']} questions "
              f"after 5 warm-up ones")
    head = f"{'backend':10} {'chunks/s':>16} {'peak RSS MB':>16} {'recall@5':>16} {'cold search s':>16} " \
           f"{'cold ask s':>16} {'warm p50 ms':>16}"
    if args.warm_size:
        head += f" {f'warm {size} p50 ms':>18} {f'warm {size} p95 ms':>18}"
    print(head)
    for b in rows:
        print(f"{b:10} {vs(b, 'chunks_per_s', '{:.1f}'):>16} {vs(b, 'rss', '{:.0f}'):>16} "
              f"{vs(b, 'recall', '{:.3f}', ratio=False):>16} {vs(b, 'cold_search', '{:.2f}'):>16} "
              f"{vs(b, 'cold_ask', '{:.2f}'):>16} {vs(b, 'warm_ms', '{:.1f}'):>16}"
              + (f" {vs(b, 'warm_big_p50', '{:.1f}'):>18} {vs(b, 'warm_big_p95', '{:.1f}'):>18}" if args.warm_size else ""))

    if args.thread_texts:
        texts = [json.loads(line)["text"] for line in lines][:args.thread_texts]
        print(f"\nthreads: chunks/s encoding {len(texts)} passages (in process; busy = a busy-loop process running)")
        print(f"{'backend':10} {'quiet 1t':>10} {'quiet 2t':>10} {'busy 1t':>10} {'busy 2t':>10}")
        for b in wanted:
            m = thread_matrix(b, texts)
            print(f"{b:10} {m[(False, 1)]:>10.1f} {m[(False, 2)]:>10.1f} {m[(True, 1)]:>10.1f} {m[(True, 2)]:>10.1f}",
                  flush=True)
    print(f"\nload average after: {load()}   (run took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
