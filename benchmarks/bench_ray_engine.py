"""`ragkit index --engine ray` vs the local path on the same NQ passages, measured in one run.

Each configuration builds a fresh index (fresh folder, so an empty embedding cache: every vector is
computed): the local path with 1 and 2 embedding threads, and Ray (a local instance started once,
its start-up timed apart) with 1 and 2 single-threaded actors. Reported per run: chunks/s of the
embedding stage (model work, as `ragkit index` prints it) and end to end (scan to written generation),
the load average around it, and Ray's overhead at 1 worker against the local path on 1 thread.

    PYTHONPATH=. python benchmarks/bench_ray_engine.py [--passages 1000] [--files 8] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _corpus(folder: Path, passages: int, files: int) -> None:
    lines = (ROOT / "corpora" / "nq-wiki" / "passages.jsonl").read_text().splitlines()[:passages]
    per = -(-len(lines) // files)
    for f in range(files):
        (folder / f"part{f:02d}.jsonl").write_text("\n".join(lines[f * per:(f + 1) * per]) + "\n")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _run(name: str, corpus: Path, work: Path, engine=None) -> dict:
    from ragkit.corpus import Corpus

    idx = work / f"idx-{name}"
    shutil.rmtree(idx, ignore_errors=True)
    load_before = _load()
    c = Corpus.open(corpus, index_dir=idx)
    t0 = time.perf_counter()
    r = c.index(engine=engine)
    wall = time.perf_counter() - t0
    c.close()
    row = {"run": name, "chunks": r.chunks_embedded, "embed_s": round(r.embed_s, 1), "wall_s": round(wall, 1),
           "embed_chunks_per_s": round(r.chunks_per_s, 1), "e2e_chunks_per_s": round(r.chunks_embedded / wall, 1),
           "load_before": load_before, "load_after": _load()}
    print(json.dumps(row), flush=True)
    return row


def _local(name: str, threads: int, corpus: Path, work: Path) -> dict:
    import ragkit.embed as embed

    os.environ["RAGKIT_EMBED_THREADS"] = str(threads)
    embed._embedders.clear()   # the process-wide embedder was made with the previous thread count
    return _run(name, corpus, work)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=1000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    corpus = work / "docs"
    corpus.mkdir()
    _corpus(corpus, args.passages, args.files)
    print(f"{args.passages} NQ passages in {args.files} files; cores {os.cpu_count()}; load {_load()}", flush=True)

    rows = {"local-1t": _local("local-1t", 1, corpus, work)}
    import ray

    from ragkit.ray_engine import RayEngine

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(json.dumps({"ray_start_s": round(time.perf_counter() - t0, 1), "load": _load()}), flush=True)
    os.environ["RAGKIT_EMBED_THREADS"] = "1"
    for n in (1, 2):
        rows[f"ray-{n}a"] = _run(f"ray-{n}a", corpus, work, RayEngine(actors=n, batch_size=args.batch_size))
    ray.shutdown()
    rows["local-2t"] = _local("local-2t", 2, corpus, work)

    base, one, two = rows["local-1t"], rows["ray-1a"], rows["ray-2a"]
    print(json.dumps({
        "ray_overhead_1_worker_embed_stage": f"{base['embed_chunks_per_s'] / one['embed_chunks_per_s'] - 1:+.0%}",
        "ray_overhead_1_worker_end_to_end": f"{base['e2e_chunks_per_s'] / one['e2e_chunks_per_s'] - 1:+.0%}",
        "ray_scaling_2_vs_1_actor": round(two["embed_chunks_per_s"] / one["embed_chunks_per_s"], 2),
        "local_scaling_2_vs_1_thread": round(rows["local-2t"]["embed_chunks_per_s"] / base["embed_chunks_per_s"], 2),
        "load_end": _load()}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
