"""Derives the counting margin for models whose tokenizer is not public, from tokenizers that are.

Claude 3's tokenizer is not public; the closest public one is the Claude 2 tokenizer that the
`anthropic` SDK shipped until 0.38 (anthropic/tokenizer.json). This script compares its counts, and
cl100k/o200k counts, per document of a corpus and prints the ratio distribution: the margin we plan
with must cover the high percentiles so a stuffed prompt never overshoots.

Usage: python benchmarks/bench_token_margin.py [--claude-tokenizer PATH/tokenizer.json] [CORPUS_JSONL]
(get the file with: pip download --no-deps anthropic==0.34.2 && unzip -j anthropic-0.34.2-*.whl anthropic/tokenizer.json)
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ragkit.tokens import get_encoding

ROOT = Path(__file__).resolve().parent.parent


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", nargs="?", default=ROOT / "corpora/nq-wiki/passages.jsonl")
    ap.add_argument("--claude-tokenizer", type=Path)
    args = ap.parse_args()
    texts = [json.loads(line)["text"] for line in open(args.corpus, encoding="utf-8")]
    cl, o2 = get_encoding("cl100k_base"), get_encoding("o200k_base")
    n_cl = [len(cl.encode_ordinary(t)) for t in texts]
    n_o2 = [len(o2.encode_ordinary(t)) for t in texts]
    print(f"corpus: {args.corpus} ({len(texts)} documents)")
    print(f"cl100k total {sum(n_cl):,}  o200k total {sum(n_o2):,}  o200k/cl100k {sum(n_o2)/sum(n_cl):.3f}")
    if args.claude_tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(args.claude_tokenizer))
        n_c2 = [len(tok.encode(t).ids) for t in texts]
        ratios = [c / max(1, k) for c, k in zip(n_c2, n_cl)]
        print(f"claude-2 total {sum(n_c2):,}  claude-2/cl100k overall {sum(n_c2)/sum(n_cl):.3f}")
        print("per document claude-2/cl100k: median {:.3f}  p95 {:.3f}  p99 {:.3f}  max {:.3f}".format(
            statistics.median(ratios), percentile(ratios, 0.95), percentile(ratios, 0.99), max(ratios)))


if __name__ == "__main__":
    main()
