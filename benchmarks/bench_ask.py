"""How long `ragkit ask --dry-run` takes: the whole answering path except the model call.

Prints, for the bundled corpora:
  * index build   : the first `ask` on the full corpus (embeds every chunk), once
  * cold          : a fresh `ragkit ask --dry-run` process with the index on disk (imports, embedder
                    load, index freshness check, search, pack, prompt), median of N runs
  * warm          : Session.prepare() in one process after the first question (what a Q&A app
                    pays per question), median and p95 over the sample questions

    python benchmarks/bench_ask.py [--runs 3] [--index-dir /tmp/ragkit-bench-idx] [--threads 1]

The machine is shared and noisy: read the figures as rough.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "corpora" / "nq-wiki"
SAMPLE = ROOT / "corpora" / "nq-wiki-sample"
QUESTIONS = ROOT / "corpora" / "questions" / "nq-wiki.jsonl"


def ragkit_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("ragkit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ragkit.cli"]


def run_cli(corpus: Path, question: str, model: str, index_dir: Path, env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run(ragkit_cmd() + ["ask", str(corpus), question, "-m", model, "--dry-run", "--json",
                                         "--index-dir", str(index_dir)],
                         capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"ragkit ask failed:\n{out.stderr}")
    return elapsed, json.loads(out.stdout)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="cold runs per case")
    ap.add_argument("--warm-questions", type=int, default=20)
    ap.add_argument("--index-dir", default=str(Path(tempfile.gettempdir()) / "ragkit-bench-ask"))
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads")
    args = ap.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads),
               RAGKIT_HOME=os.environ.get("RAGKIT_HOME", str(Path(tempfile.gettempdir()) / "ragkit-bench-home")))
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "RAGKIT_HOME")})
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()[: args.warm_questions + 1]]
    first_q = questions[0]
    base = Path(args.index_dir)
    print(f"ragkit ask --dry-run benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s); shared machine: rough figures)")

    cases = [("nq-wiki (full)", FULL, "gpt-4o-mini"), ("nq-wiki (full)", FULL, "qwen2.5-coder-0.5b-local"),
             ("nq-wiki-sample", SAMPLE, "gpt-4o-mini")]
    for label, corpus, model in cases:
        idx = base / corpus.name
        if not idx.exists():
            t, data = run_cli(corpus, first_q, model, idx, env)
            if data["strategy"] == "retrieve":
                print(f"\n{label}: first ask built the index in {t:.1f} s (one time; later asks reuse it)")
        cold = []
        for _ in range(args.runs):
            t, data = run_cli(corpus, first_q, model, idx, env)
            cold.append(t)
        print(f"\n{label}, {model}: strategy {data['strategy']}, {len(data['context'])} sources, "
              f"{data['input_tokens']:,} prompt tokens, est. cost ${data['estimated_cost_usd']:.6f}")
        print(f"  cold (new process, index on disk): median {statistics.median(cold):.2f} s "
              f"(runs: {', '.join(f'{x:.2f}' for x in cold)})")

        from ragkit.answer import Session

        with Session(corpus, model=model, index_dir=idx, ledger=False) as session:
            t0 = time.perf_counter()
            session.prepare(first_q)
            first = time.perf_counter() - t0
            warm = []
            for q in questions[1:]:
                t0 = time.perf_counter()
                session.prepare(q)
                warm.append(time.perf_counter() - t0)
        print(f"  in-process first question (loads documents, counts, embedder, index): {first:.2f} s")
        print(f"  warm (Session.prepare, {len(warm)} questions): median {statistics.median(warm) * 1000:.1f} ms, "
              f"p95 {pct(warm, 0.95) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
