"""Benchmark of the embedded local model: load time, time to first token, tokens/s, accuracy.

    python benchmarks/bench_local_model.py                 # warm load, 1K/2K prompts, 12 NQ questions
    python benchmarks/bench_local_model.py --cold          # also time a from-scratch conversion (~1 min)
    RAGKIT_THREADS=1 python benchmarks/bench_local_model.py --questions 20

Prompts are real: ragkit's own answer prompt (ragkit.prompt) over NQ-open gold Wikipedia passages
from corpora/nq-wiki, the question's own gold passage placed in the middle of random other
passages, up to the stated size in the model's own tokens. Accuracy is Liu et al.'s best_subspan_em (normalised gold answer inside the first line
of the reply); "cited" counts replies that name the gold passage's number. The machine is shared:
the load average is printed beside the figures, which are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ragkit import local_model  # noqa: E402

def load_nq() -> tuple[list[dict], dict[str, dict]]:
    passages = {}
    for line in (ROOT / "corpora/nq-wiki/passages.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        passages[row["id"]] = row
    questions = [json.loads(line) for line in (ROOT / "corpora/questions/nq-wiki.jsonl").open(encoding="utf-8")]
    return questions, passages


def build_prompt(model, question: dict, passages: dict[str, dict], target_tokens: int, seed: int):
    """ragkit's own answer prompt over numbered sources (gold in the middle of random other passages),
    up to ~target_tokens in the model's own tokens. Returns (system, user, gold source number)."""
    from ragkit.loaders import Document
    from ragkit.prompt import build_prompt as answer_prompt

    def doc(p: dict) -> Document:
        return Document(id=p["id"], source="passages.jsonl", text=p["text"], meta={"title": p["title"]})

    rng = random.Random(seed)
    others = [p for p in rng.sample(list(passages.values()), 80) if p["id"] != question["passage_id"]]
    chosen: list[dict] = []
    for p in others:
        system, user = answer_prompt(question["question"], [doc(c) for c in chosen + [p]])
        if model.count_tokens(system + user) > target_tokens:
            break
        chosen.append(p)
    gold_index = len(chosen) // 2
    chosen.insert(gold_index, passages[question["passage_id"]])
    system, user = answer_prompt(question["question"], [doc(c) for c in chosen])
    return system, user, gold_index + 1


def normalise(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def best_subspan_em(prediction: str, answers: list[str]) -> bool:
    first_line = normalise(prediction.strip().split("\n")[0])
    return any(normalise(a) in first_line for a in answers)


def load_avg() -> str:
    return "load avg %.1f" % os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="also time a conversion from the weight parts")
    parser.add_argument("--questions", type=int, default=12, help="NQ questions for the accuracy check")
    parser.add_argument("--context", type=int, default=1500, help="prompt tokens per accuracy question")
    parser.add_argument("--ask", type=int, default=0, metavar="N",
                        help="also run `ragkit ask` (library) on the 7 sample questions (stuff) and N nq-wiki "
                             "questions (retrieve), then stop")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    print(f"model: {local_model.DEFAULT.name}; gguf sha256 {local_model.DEFAULT.sha256[:12]}…; "
          f"threads {local_model.thread_count()} of {os.cpu_count()} cores; {load_avg()}")

    if args.cold:
        saved = os.environ.get("RAGKIT_CACHE_DIR")
        scratch = tempfile.mkdtemp(prefix="ragkit-bench-cache-")
        os.environ["RAGKIT_CACHE_DIR"] = scratch
        try:
            started = time.perf_counter()
            local_model.ensure_converted()
            print(f"cold set-up (join + sha256 + dequantise + save): {time.perf_counter() - started:.1f} s; "
                  f"cache {sum(f.stat().st_size for f in local_model.cache_dir().iterdir()) / 1e6:.0f} MB; "
                  f"{load_avg()}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if saved is None:
                os.environ.pop("RAGKIT_CACHE_DIR")
            else:
                os.environ["RAGKIT_CACHE_DIR"] = saved

    started = time.perf_counter()
    model = local_model.get_local_model()  # the process-wide model `ragkit ask` uses too
    print(f"warm load (cache -> ready model): {time.perf_counter() - started:.1f} s; compute dtype {model.dtype}; "
          f"{load_avg()}")

    questions, passages = load_nq()
    if args.ask:
        sample_questions = [json.loads(line) for line in
                            (ROOT / "corpora/questions/nq-wiki-sample.jsonl").open(encoding="utf-8")]
        bench_ask("corpora/nq-wiki-sample", sample_questions)
        bench_ask("corpora/nq-wiki", random.Random(11).sample(questions, args.ask))
        return
    model.generate("You are terse.", "Say hi.", max_tokens=2)  # first call pays one-off allocations
    for target in (1000, 2000):
        system, user, _ = build_prompt(model, questions[0], passages, target, seed=target)
        result = model.generate(system, user + " Then list the titles of all the sources.", max_tokens=64)
        decode_s = result.latency_s - result.ttft_s
        print(f"~{target // 1000}K prompt: {result.input_tokens} tokens in, ttft {result.ttft_s:.1f} s "
              f"(prompt read at {result.input_tokens / result.ttft_s:.0f} tok/s), "
              f"{result.output_tokens} tokens out at {(result.output_tokens - 1) / decode_s:.1f} tok/s; {load_avg()}")

    correct = cited = 0
    ttfts = []
    rng = random.Random(7)
    sample = rng.sample(questions, args.questions)
    for n, question in enumerate(sample, start=1):
        system, user, gold = build_prompt(model, question, passages, args.context, seed=n)
        result = model.generate(system, user, max_tokens=48)
        ok = best_subspan_em(result.text, question["answers"])
        correct += ok
        cited += f"[{gold}]" in result.text
        ttfts.append(result.ttft_s)
        print(f"  {'OK ' if ok else 'MISS'} [{gold}] {question['question']}? gold {question['answers'][0]!r} "
              f"-> {result.text.splitlines()[0][:90] if result.text else ''!r}")
    print(f"accuracy (best_subspan_em, gold passage among ~{args.context}-token context): {correct}/{len(sample)}; "
          f"cited the gold source: {cited}/{len(sample)}; median ttft {sorted(ttfts)[len(ttfts) // 2]:.1f} s; "
          f"{load_avg()}")


def bench_ask(corpus: str, questions: list[dict]) -> None:
    """`ragkit ask` through the library with the local model: the real prompt, planner and retrieval."""
    from ragkit.answer import Session

    hits = correct = cited = 0
    ttfts = []
    with Session(ROOT / corpus, model="qwen2.5-coder-0.5b-local", ledger=None) as session:
        for question in questions:
            answer = session.ask(question["question"])
            in_context = any(s.doc_id.endswith(question["passage_id"]) for s in answer.context)
            ok = best_subspan_em(answer.answer, question["answers"])
            cites_gold = any(s.doc_id.endswith(question["passage_id"]) for s in answer.sources)
            hits += in_context
            correct += ok
            cited += cites_gold
            ttfts.append(answer.ttft_s)
            print(f"  {'OK ' if ok else 'MISS'} {'cited' if cites_gold else '     '} "
                  f"{'gold-in' if in_context else 'gold-OUT'} {answer.usage.input_tokens} tok, ttft {answer.ttft_s:.0f} s: "
                  f"{question['question']}? gold {question['answers'][0]!r} -> {answer.answer.splitlines()[0][:80]!r}")
            strategy = answer.strategy
    n = len(questions)
    print(f"ragkit ask {corpus} ({strategy}): correct {correct}/{n}, cited the gold passage {cited}/{n}, "
          f"gold passage in the context {hits}/{n}; median ttft {sorted(ttfts)[n // 2]:.1f} s; {load_avg()}")


if __name__ == "__main__":
    main()
