"""What one machine serves: concurrent `ask` throughput on an indexed folder, 1/4/8 processes.

A folder of N NQ passages (one file each; ~45K o200k tokens at 300, so gpt-4o-mini must retrieve)
is indexed once; answers come from tests/llm_server.py on 127.0.0.1 (a real OpenAI-compatible
server that answers at once), so the figures are ragkit's own cost: freshness check, query
embedding, search, packing, prompt, the SDK round trip, the ledger row.

  * workers: P processes, each a Session (what a Q&A app's workers are), asking Q questions each
    after one warm-up question; answers/s over the steady phase, all of them checked
  * cli:     P `ragkit ask --json` processes started at once, one question each (cold: imports and
    model load included); answers/s = P / wall time

    python benchmarks/bench_concurrent_ask.py [--files 300] [--questions 20] [--procs 1,4,8]

The machine is shared and noisy: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PASSAGES = ROOT / "corpora" / "nq-wiki" / "passages.jsonl"
QUESTIONS = ROOT / "corpora" / "questions" / "nq-wiki.jsonl"
MODEL = "gpt-4o-mini"


def make_folder(dest: Path, n: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with PASSAGES.open() as f:
        for i, line in zip(range(n), f):
            p = json.loads(line)
            (dest / f"{i:04d}.txt").write_text(f"# {p['title']}\n\n{p['text']}\n")


def worker(folder: str, base_url: str, questions: list[str], ready, go, out) -> None:
    from ragkit.answer import Session

    ok = failed = 0
    with Session(folder, model=MODEL, base_url=base_url, ledger=True) as s:
        s.ask(questions[0], answer_tokens=50)   # warm-up: embedder and index loaded
        ready.release()
        go.wait()
        t0 = time.perf_counter()
        for q in questions:
            try:
                a = s.ask(q, answer_tokens=50)
                ok += a.strategy == "retrieve" and bool(a.answer)
            except Exception as exc:  # counted, never hidden
                failed += 1
                print(f"worker failed: {exc}", file=sys.stderr)
        out.put((ok, failed, t0, time.perf_counter()))


def run_workers(folder: Path, base_url: str, questions: list[str], procs: int, per_proc: int) -> dict:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=worker, args=(str(folder), base_url, questions[i * per_proc:(i + 1) * per_proc],
                                           ready, go, out)) for i in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        ready.acquire()
    go.set()
    results = [out.get() for _ in ps]
    for p in ps:
        p.join()
    ok, failed = sum(r[0] for r in results), sum(r[1] for r in results)
    wall = max(r[3] for r in results) - min(r[2] for r in results)
    return {"procs": procs, "answers": ok, "failed": failed, "wall_s": wall, "per_s": ok / wall}


def run_cli(folder: Path, base_url: str, questions: list[str], procs: int, env: dict) -> dict:
    exe = Path(sys.executable).with_name("ragkit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ragkit.cli"]
    t0 = time.perf_counter()
    ps = [subprocess.Popen(cmd + ["ask", str(folder), q, "-m", MODEL, "-u", base_url, "--json", "--answer-tokens", "50"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
          for q in questions[:procs]]
    outs = [(p.wait(), p.stdout.read(), p.stderr.read()) for p in ps]
    wall = time.perf_counter() - t0
    ok = sum(code == 0 and json.loads(out)["strategy"] == "retrieve" for code, out, _ in outs)
    for code, _, err in outs:
        if code:
            print(f"cli failed: {err.strip()}", file=sys.stderr)
    return {"procs": procs, "answers": ok, "failed": procs - ok, "wall_s": wall, "per_s": ok / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--questions", type=int, default=20, help="questions per worker process")
    ap.add_argument("--procs", default="1,4,8")
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "ragkit-bench-concurrent"))
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]

    from llm_server import LLMServer

    folder = Path(args.dir) / f"docs-{args.files}"
    home = Path(tempfile.mkdtemp(prefix="ragkit-bench-home-"))
    os.environ.update(OPENAI_API_KEY="sk-bench-not-a-real-key", RAGKIT_HOME=str(home), HF_HUB_OFFLINE="1")
    if not folder.exists():
        make_folder(folder, args.files)
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()[:max(procs) * args.questions]]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} cores)")
    from ragkit.corpus import Corpus

    t0 = time.perf_counter()
    report = Corpus.open(folder).index()
    print(f"folder: {args.files} files, {report.chunks_total} chunks, indexed in {time.perf_counter() - t0:.1f} s; "
          f"model {MODEL} (retrieve path), answers from a local stand-in server")
    with LLMServer(responder=lambda req: "Stand-in answer [1].") as srv:
        print(f"\n{'mode':<8} {'procs':>5} {'answers':>8} {'failed':>7} {'wall s':>8} {'answers/s':>10}")
        for p in procs:
            r = run_workers(folder, srv.openai_base_url, questions, p, args.questions)
            print(f"{'workers':<8} {r['procs']:>5} {r['answers']:>8} {r['failed']:>7} {r['wall_s']:>8.2f} {r['per_s']:>10.1f}")
        for p in procs:
            r = run_cli(folder, srv.openai_base_url, questions, p, dict(os.environ))
            print(f"{'cli':<8} {r['procs']:>5} {r['answers']:>8} {r['failed']:>7} {r['wall_s']:>8.2f} {r['per_s']:>10.2f}")
    from ragkit.ledger import Ledger

    rows = len(Ledger().entries())
    want = sum(p * (args.questions + 1) for p in procs) + sum(procs)
    print(f"\nledger rows: {rows} (expected {want}: one per answered call, warm-ups included)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
