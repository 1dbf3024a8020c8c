"""What the eval harness itself costs per sample, before any model call: building a needle haystack
at each length (token counting, sentence chunking) and ranking + packing it for `retrieve` with
ragkit's embedder. Prints figures; asserts nothing.

    python benchmarks/bench_eval_overhead.py [--lengths 1000,4000,16000] [--samples 3] [--no-retrieve]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--lengths", default="1000,4000,16000")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--no-retrieve", action="store_true")
    args = ap.parse_args()

    from ragkit.evals.retrieval import retrieve_units
    from ragkit.evals.tasks import NeedleTask
    from ragkit.tokens import counter_for

    counter = counter_for(args.model)
    task = NeedleTask()
    if not args.no_retrieve:  # load the embedder once, outside the timings
        retrieve_units(["warm up"], "warm up", 100, counter)
    print(f"model {args.model} ({counter.encoding_name}); {args.samples} samples per length")
    print(f"{'length':>8} {'build s':>9} {'units':>6} {'rank+pack s':>12} {'units/s':>8}")
    for length in (int(x) for x in args.lengths.split(",")):
        build = rank = 0.0
        units = 0
        for i in range(args.samples):
            t0 = time.perf_counter()
            s = task.make_sample(counter, length, 50, i)
            build += time.perf_counter() - t0
            units += len(s.units)
            if not args.no_retrieve:
                t0 = time.perf_counter()
                retrieve_units(s.units, s.question, length // 4, counter)
                rank += time.perf_counter() - t0
        n = args.samples
        rate = f"{units / rank:8.0f}" if rank else f"{'-':>8}"
        print(f"{length:>8} {build / n:9.3f} {units / n:6.0f} {rank / n:12.3f} {rate}")


if __name__ == "__main__":
    main()
