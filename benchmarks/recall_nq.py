"""Recall@k of `ragkit search` on the bundled NQ Wikipedia corpus (gold passage in the top k).

    python benchmarks/recall_nq.py                       # 300 random questions (seed 0), k = 5
    python benchmarks/recall_nq.py --sample 0            # all 2,655 questions

Indexes corpora/nq-wiki with `ragkit index` (into --index-dir, default a temp-free
`.ragkit/` under the corpus: incremental, so a second run only searches), then runs
`ragkit search corpora/nq-wiki --queries FILE -k K` once and scores its JSON Lines output.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT / "corpora" / "nq-wiki"))
    ap.add_argument("--questions", default=str(ROOT / "corpora" / "questions" / "nq-wiki.jsonl"))
    ap.add_argument("--index-dir", default=None)
    ap.add_argument("--sample", type=int, default=300, help="questions to sample (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--hnsw", action="store_true", help="also compare ragkit's HNSW settings with exact search")
    args = ap.parse_args()

    qs = [json.loads(line) for line in open(args.questions)]
    if args.sample:
        qs = random.Random(args.seed).sample(qs, args.sample)
    ragkit = [sys.executable, "-m", "ragkit.cli"]
    idx = ["--index-dir", args.index_dir] if args.index_dir else []
    t0 = time.perf_counter()
    subprocess.run(ragkit + ["index", args.corpus, "-q"] + idx, check=True)
    t_index = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(q["question"].replace("\n", " ") for q in qs) + "\n")
        qfile = f.name
    t0 = time.perf_counter()
    out = subprocess.run(ragkit + ["search", args.corpus, "--queries", qfile, "-k", str(args.k)] + idx,
                         check=True, capture_output=True, text=True).stdout
    t_search = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == len(qs), (len(rows), len(qs))
    found = 0
    for q, row in zip(qs, rows):
        gold = q["passage_id"]
        if any(h["doc_id"].rsplit("#", 1)[-1] == gold for h in row["hits"]):
            found += 1
    print(f"questions: {len(qs)} (seed {args.seed}); gold passage in top {args.k}: {found}/{len(qs)} = "
          f"{found / len(qs):.3f}")
    print(f"index: {t_index:.1f} s (incremental: ~0 when already built); batch search incl. model load: {t_search:.1f} s")
    if args.hnsw:
        hnsw_check(args, qs)


def hnsw_check(args, qs) -> None:
    """The same real vectors and questions through ragkit's HNSW settings vs exact search."""
    import faiss
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from ragkit import store
    from ragkit.corpus import default_index_dir
    from ragkit.embed import get_embedder

    gen = store.open_generation(Path(args.index_dir) if args.index_dir else default_index_dir(Path(args.corpus)))
    ids, vecs = store._index_vectors(gen.index)
    q = get_embedder().encode([x["question"] for x in qs])
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    hnsw = store.new_faiss_index("hnsw", vecs.shape[1])
    hnsw.add_with_ids(vecs, ids)
    _, truth = exact.search(q, 10)
    _, got = hnsw.search(q, 10)
    truth = ids[truth]
    r10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    rows = gen.chunks([int(i) for i in set(got[:, :5].ravel())])
    gold = np.mean([any(rows[int(i)].doc_id.endswith("#" + x["passage_id"]) for i in row[:5])
                    for x, row in zip(qs, got)])
    print(f"HNSW (M={store.HNSW_M}, efConstruction={store.HNSW_EF_CONSTRUCTION}, efSearch={store.HNSW_EF_SEARCH}) on "
          f"the same {len(ids)} real vectors: recall@10 vs exact {r10:.3f}; gold passage in top 5 {gold:.3f}")


if __name__ == "__main__":
    main()
