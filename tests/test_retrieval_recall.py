"""Recall of the whole pipeline on the bundled NQ Wikipedia corpus (slow: embeds 2,599 passages)."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.corpus import Corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gold_passage_in_top5_for_95_percent_of_300_questions(tmp_path):
    corpus = Corpus.open(ROOT / "corpora" / "nq-wiki", index_dir=tmp_path / "idx")
    report = corpus.index()
    assert report.chunks_total >= 2599
    qs = [json.loads(line) for line in open(ROOT / "corpora" / "questions" / "nq-wiki.jsonl")]
    qs = random.Random(0).sample(qs, 300)
    results = corpus.search_many([q["question"] for q in qs], k=5)
    found = sum(any(h.doc_id == f"passages.jsonl#{q['passage_id']}" for h in hits) for q, hits in zip(qs, results))
    assert found / len(qs) >= 0.95, found
