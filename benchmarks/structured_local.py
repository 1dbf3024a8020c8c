"""--schema extraction on the embedded model, with and without constrained decoding (ragkit/grammar.py).

A thin wrapper over `ragkit eval schema` (ragkit/evals/extraction.py: the tasks, the run through the
ask path's prompt, complete_structured and the ledger, the report), with the settings of the committed
report evals/reports/schema-qwen2.5-coder-0.5b-local. Same as:

    RAGKIT_THREADS=1 ragkit eval schema -m local -n 100 --enforcement native,validated \
        --max-chars 1200 --max-tokens 80 -o evals/reports/schema-qwen2.5-coder-0.5b-local

Re-running resumes from the folder's results.jsonl and the eval response cache.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ragkit.evals.extraction import DEFAULT_MAX_CHARS, DEFAULT_MAX_TOKENS, run_schema_eval

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS)
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    ap.add_argument("--out", default=str(ROOT / "evals/reports/schema-qwen2.5-coder-0.5b-local"))
    args = ap.parse_args()
    result = run_schema_eval(["local"], args.out, n=args.n, enforcement=("native", "validated"),
                             max_chars=args.max_chars, max_tokens=args.max_tokens)
    print(Path(result.out_dir, "report.md").read_text())


if __name__ == "__main__":
    main()
