"""Cold `ragkit ask CORPUS "q" --dry-run`: this tree against a base commit, in one run.

    python benchmarks/bench_cold_dry_run.py [--corpus corpora/nq-wiki] [--runs 7] [--base 64d647f]

The base is extracted with `git archive` into a temporary folder. Each tree gets its own copy of the
corpus without its index folder, indexed by that tree with its default embedding backend (an index left
in the working copy by an older build — e.g. a PyTorch one — would otherwise set both trees' figures).
Each tree is warmed once (index built, count cache filled), then the trees alternate, each run a new process. Printed per tree: the command's wall
time (median, min) and, measured inside a new process, the step that counts every source's fenced tokens
(Session._counts with the encoding already loaded), and loading the model's tiktoken encoding, which the
dry run needs anyway to count the finished prompt. The load average is printed before and after.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "who wrote the origin of species"

COUNT_STEP = """
import sys, time
from ragkit.answer import Session
from ragkit.tokens import counter_for
s = Session(sys.argv[1], model=sys.argv[2], ledger=False)
counter = counter_for(sys.argv[2])
t = time.perf_counter(); counter.count("x"); encoding_s = time.perf_counter() - t
sources = s._sources()
t = time.perf_counter(); s._counts(counter, sources); print(time.perf_counter() - t, encoding_s)
"""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# cwd=tree: `python -m` and `-c` put the working directory first on sys.path, ahead of PYTHONPATH.
def timed(tree: Path, args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=_env(tree), check=True, stdout=subprocess.DEVNULL, cwd=tree)
    return time.perf_counter() - t0


def count_step(tree: Path, corpus: str, model: str) -> tuple[float, float]:
    """(seconds counting the sources, seconds loading the encoding) in a new process."""
    out = subprocess.run([sys.executable, "-c", COUNT_STEP, corpus, model], env=_env(tree), check=True,
                         capture_output=True, text=True, cwd=tree).stdout
    counting, encoding = out.strip().splitlines()[-1].split()
    return float(counting), float(encoding)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="corpora/nq-wiki")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--base", default="64d647f")
    a = ap.parse_args()
    source = (ROOT / a.corpus).resolve()
    with tempfile.TemporaryDirectory(prefix="ragkit-base-") as tmp:
        base = Path(tmp) / "tree"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees = {f"base {a.base}": base, "this tree": ROOT}
        corpora = {name: Path(tmp) / f"corpus-{i}" for i, name in enumerate(trees)}
        for corpus in corpora.values():
            shutil.copytree(source, corpus, ignore=shutil.ignore_patterns(".ragkit"))
        ask = lambda name: ["-m", "ragkit.cli", "ask", str(corpora[name]), QUESTION, "--dry-run", "-m", a.model]  # noqa: E731
        print(f"load average before: {load()}")
        for name, tree in trees.items():   # warm: index built, count cache filled, files in the page cache
            timed(tree, ask(name))
        wall = {name: [] for name in trees}
        step = {name: [] for name in trees}
        enc = {name: [] for name in trees}
        for _ in range(a.runs):
            for name, tree in trees.items():
                wall[name].append(timed(tree, ask(name)))
                counting, encoding = count_step(tree, str(corpora[name]), a.model)
                step[name].append(counting)
                enc[name].append(encoding)
        print(f"cold `ragkit ask {a.corpus} \"{QUESTION}\" --dry-run -m {a.model}` (a fresh index per tree), "
              f"{a.runs} runs each, alternating:")
        for name in trees:
            print(f"  {name:>16}: wall median {statistics.median(wall[name]):.2f} s (min {min(wall[name]):.2f}); "
                  f"counting the sources median {statistics.median(step[name]) * 1000:.0f} ms "
                  f"(min {min(step[name]) * 1000:.0f}); loading the encoding median "
                  f"{statistics.median(enc[name]) * 1000:.0f} ms")
        print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
