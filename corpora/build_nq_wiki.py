"""Rebuilds corpora/nq-wiki and corpora/nq-wiki-sample from the lost-in-the-middle NQ-open oracle file,
and the copy of nq-wiki that ships in the package for `ragkit eval` (ragkit/data/evals/).

Usage: python corpora/build_nq_wiki.py [PATH/TO/nq-open-oracle.jsonl.gz]
Deterministic: the same input gives byte-identical output.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_DATA = HERE.parent / "ragkit" / "data" / "evals"
DEFAULT_SRC = HERE.parent.parent / "shared" / "data" / "lost-in-the-middle" / "nq-open-oracle.jsonl.gz"
# Questions whose passages make the small slice: easy to check by eye, answers unambiguous,
# and short enough (~800 tokens in all) to be stuffed even into the local model's 2K budget.
SAMPLE_QUESTIONS = [
    "who wrote the book the origin of species",
    "how many steps does the cn tower have",
    "who got the first nobel prize in physics",
    "how many countries are a part of opec",
    "who sings the pokemon theme song season 1",
    "how many episodes are there in dragon ball z",
    "who wrote the song city of new orleans",
]


def passage_id(title: str, text: str) -> str:
    # Content-derived, so the id survives reordering of the source file.
    return "p" + hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:10]


def main(src: Path) -> None:
    passages: dict[str, dict] = {}
    questions: list[dict] = []
    with gzip.open(src, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ctx = row["ctxs"][0]
            title, text = ctx["title"], ctx["text"].strip()
            pid = passage_id(title, text)
            passages.setdefault(pid, {"id": pid, "title": title, "text": text})
            questions.append({"question": row["question"], "answers": row["answers"], "passage_id": pid})

    write_set("nq-wiki", list(passages.values()), questions)
    write_set("nq-wiki", list(passages.values()), questions, PACKAGE_DATA)
    by_q = {q["question"]: q for q in questions}
    sample_q = [by_q[q] for q in SAMPLE_QUESTIONS]
    sample_p = [passages[q["passage_id"]] for q in sample_q]
    write_set("nq-wiki-sample", sample_p, sample_q)
    print(f"{len(passages)} passages, {len(questions)} questions; sample {len(sample_p)} passages")


def write_set(name: str, passages: list[dict], questions: list[dict], base: Path = HERE) -> None:
    # The corpus folder holds documents only, so `ragkit ask corpora/NAME` reads nothing else;
    # questions (for evals and checks) live in corpora/questions/NAME.jsonl.
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "passages.jsonl", passages)
    (base / "questions").mkdir(exist_ok=True)
    write_jsonl(base / "questions" / f"{name}.jsonl", questions)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC)
