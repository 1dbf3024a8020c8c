"""--schema extraction on the embedded model, with and without constrained decoding (ragkit/grammar.py).

Each task is one NQ passage from corpora/nq-wiki-sample and its question; the model extracts
{"title": str, "answer": str} with per-field citations. References come from the data: the passage's
own title and the question's gold answers. Reported per mode: schema-valid rate on the first reply (no
repair), field accuracy, and generation speed (output tokens / s), i.e. the constraint's cost.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/structured_local.py --n 100 --out evals/reports/structured_local.md
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path

from ragkit.models import get_model
from ragkit.prompt import build_prompt
from ragkit.providers.local import LocalProvider
from ragkit.structured import SchemaMismatch, make_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "title str: the title of the source, answer str: the short answer to the question"


def tasks(n: int) -> list[tuple[str, list[str], dict]]:
    passages = {}
    for line in (ROOT / "corpora/nq-wiki-sample/passages.jsonl").read_text().splitlines():
        if line.strip():
            p = json.loads(line)
            passages[p["id"]] = p
    out = []
    for line in (ROOT / "corpora/questions/nq-wiki-sample.jsonl").read_text().splitlines():
        q = json.loads(line) if line.strip() else None
        if q and q["passage_id"] in passages:
            out.append((q["question"], q["answers"], passages[q["passage_id"]]))
    return out[:n]


def norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(s).lower()).split())


def run(mode: str, items, max_tokens: int) -> dict:
    spec = replace(get_model("qwen2.5-coder-0.5b-local"), structured_output=mode)
    provider, schema = LocalProvider(spec), make_schema(SCHEMA)
    valid = title_ok = answer_ok = out_tokens = 0
    seconds = 0.0
    for question, answers, passage in items:
        doc = type("Doc", (), {"text": passage["text"][:1500], "source": "passages.jsonl", "id": passage["id"],
                               "meta": {"title": passage["title"]}})()
        system, user = schema.frame(*build_prompt(question, [doc]))
        started = time.perf_counter()
        done = provider.complete(system, user, max_tokens=max_tokens, schema=schema)
        seconds += time.perf_counter() - started
        out_tokens += done.output_tokens
        try:
            value = schema.parse(done.text, n_sources=1).value
        except SchemaMismatch:
            continue
        valid += 1
        title_ok += norm(value["title"]) == norm(passage["title"])
        answer_ok += any(norm(a) in norm(value["answer"]) or norm(value["answer"]) == norm(a) for a in answers
                         if norm(value["answer"]))
    n = len(items)
    return {"mode": mode, "tasks": n, "schema_valid": valid / n, "title_accuracy": title_ok / n,
            "answer_accuracy": answer_ok / n, "output_tokens": out_tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(out_tokens / seconds, 2) if seconds else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    items = tasks(args.n)
    rows = [run(mode, items, args.max_tokens) for mode in ("grammar", "none")]
    lines = ["# --schema extraction on the embedded model: constrained decoding vs validation only", "",
             f"Tasks: {len(items)} NQ passages (corpora/nq-wiki-sample), schema `{SCHEMA}`, greedy, "
             f"max {args.max_tokens} tokens, no repair round-trip. Reproduce: "
             f"`python benchmarks/structured_local.py --n {args.n}`.", "",
             "| mode | tasks | schema-valid | title acc. | answer acc. | output tokens | s | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['tasks']} | {r['schema_valid']:.0%} | {r['title_accuracy']:.0%} | "
                     f"{r['answer_accuracy']:.0%} | {r['output_tokens']} | {r['seconds']} | {r['tokens_per_s']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
