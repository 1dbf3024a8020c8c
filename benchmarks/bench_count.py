"""Token-counting throughput of `ragkit count` next to raw tiktoken on the same text, and cold `ragkit plan`.

Builds a >= 10 MB corpus of Markdown files from the bundled Wikipedia passages (in a temp folder), then:
  raw      tiktoken o200k encode_ordinary over each file's text (the floor: no I/O, no cache)
  cold     `ragkit count` as a library call with an empty count cache (read + decode + hash + count + cache write)
  warm     the same call again (counts come from the content-hash cache)
  cli      `ragkit count DIR --json` and `ragkit plan DIR` as fresh processes (what a user waits for)
Usage: python benchmarks/bench_count.py [--mb 12]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_corpus(folder: Path, mb: float) -> int:
    passages = [json.loads(line) for line in open(ROOT / "corpora/nq-wiki/passages.jsonl", encoding="utf-8")]
    size, i, n_files = 0, 0, 0
    while size < mb * 1_000_000:
        # ~100 KB files of 60 passages, each file a distinct mix (rotation) so the cache can't short-cut.
        chunk = [passages[(i + k * 7) % len(passages)] for k in range(60)]
        text = "\n\n".join(f"## {p['title']} ({i}.{k})\n\n{p['text']}" for k, p in enumerate(chunk))
        path = folder / f"doc{n_files:05d}.md"
        path.write_text(text, encoding="utf-8")
        size += len(text.encode())
        i += 13
        n_files += 1
    return size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=12.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        corpus.mkdir()
        size = build_corpus(corpus, args.mb)
        os.environ["RAGKIT_CACHE_DIR"] = str(tmp / "cache")
        from ragkit.counting import count_path
        from ragkit.tokens import get_encoding

        enc = get_encoding("o200k_base")
        texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir())]
        t = time.perf_counter()
        raw_tokens = sum(len(enc.encode_ordinary(x)) for x in texts)
        raw_s = time.perf_counter() - t

        t = time.perf_counter()
        cold = count_path(corpus, "gpt-4o")
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = count_path(corpus, "gpt-4o")
        warm_s = time.perf_counter() - t
        assert cold.tokens == warm.tokens == raw_tokens, (cold.tokens, raw_tokens)

        env = dict(os.environ, RAGKIT_CACHE_DIR=str(tmp / "cache2"))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragkit.cli", "count", str(corpus), "--json"], check=True,
                       capture_output=True, env=env)
        cli_cold_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragkit.cli", "plan", str(corpus), "-m", "gpt-4o"], check=True,
                       capture_output=True, env=env)
        plan_warm_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragkit.cli", "plan", str(ROOT / "corpora/nq-wiki-sample"), "-m",
                        "gpt-4o"], check=True, capture_output=True, env=dict(env, RAGKIT_CACHE_DIR=str(tmp / "c3")))
        plan_small_s = time.perf_counter() - t

    mb = size / 1e6
    print(f"corpus: {len(texts)} files, {mb:.1f} MB, {raw_tokens:,} o200k tokens")
    print(f"raw tiktoken (encode_ordinary loop):  {raw_s:6.2f} s  {mb / raw_s:5.1f} MB/s  {raw_tokens / raw_s / 1e6:.2f} M tok/s")
    print(f"ragkit count, cold cache (library):   {cold_s:6.2f} s  {mb / cold_s:5.1f} MB/s  = {raw_s / cold_s:.2f}x raw")
    print(f"ragkit count, warm cache (library):   {warm_s:6.2f} s  {mb / warm_s:5.1f} MB/s  = {raw_s / warm_s:.2f}x raw")
    print(f"`ragkit count --json`, new process, cold cache: {cli_cold_s:.2f} s")
    print(f"`ragkit plan` on it, new process, warm cache:   {plan_warm_s:.2f} s")
    print(f"`ragkit plan` on corpora/nq-wiki-sample, new process, cold cache: {plan_small_s:.2f} s")


if __name__ == "__main__":
    main()
