"""How much of the budget should retrieval fill? Gold passage in the packed context, where it
lands, and what the prompt costs, as top_k (chunks considered before packing) grows.

For each model's planner budget on corpora/nq-wiki, over a fixed-seed sample of NQ questions,
through the real Session.prepare (same plan, retrieval, packing and prompt as `ragkit ask`):
  * chunks / tokens   mean chunks sent and prompt tokens
  * $ in / question   the prompt's input cost at the registry price
  * gold in context   the question's gold passage is among the sources sent
  * gold at edges     of those, the share where it sits in the first or last quarter (lost in the middle)

    python benchmarks/bench_pack_amount.py [--sample 200] [--models gpt-4o-mini,qwen2.5-coder-0.5b-local]

No model is called. The machine is shared and noisy; the figures here do not depend on speed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpora" / "nq-wiki"
QUESTIONS = ROOT / "corpora" / "questions" / "nq-wiki.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="gpt-4o-mini,qwen2.5-coder-0.5b-local")
    ap.add_argument("--ks", default="5,10,20,50,100,200")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-unused")   # prepare() calls nothing

    from ragkit.answer import Session
    from ragkit.models import get_model

    qs = random.Random(args.seed).sample([json.loads(line) for line in QUESTIONS.open()], args.sample)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with Session(CORPUS, ledger=False) as s:
        s.ensure_index()
        for model in args.models.split(","):
            spec = get_model(model)
            print(f"\n{spec.id}: practical limit {spec.practical_limit_tokens:,}, {len(qs)} questions (seed {args.seed})")
            print(f"{'top_k':>6} {'chunks':>7} {'tokens':>8} {'$ in/question':>14} {'gold in context':>16} {'gold at edges':>14}")
            for k in (int(x) for x in args.ks.split(",")):
                chunks = tokens = found = edges = 0
                for q in qs:
                    p = s.prepare(q["question"], model=spec.id, strategy="retrieve", top_k=k)
                    ids = [src.doc_id.rsplit("#", 1)[-1] for src in p.context]
                    chunks += len(ids)
                    tokens += p.input_tokens
                    if q["passage_id"] in ids:
                        found += 1
                        i, n = ids.index(q["passage_id"]), len(ids)
                        edges += i < n / 4 or i >= n - n / 4
                n = len(qs)
                cost = tokens / n * spec.input_usd_per_mtok / 1e6
                print(f"{k:>6} {chunks / n:>7.1f} {tokens / n:>8.0f} {cost:>14.6f} {found / n:>16.3f} "
                      f"{(edges / found if found else 0):>14.2f}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
