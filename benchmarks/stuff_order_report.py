"""Stuffed documents in file order vs in the order `ragkit ask` gives them (edges), on the same questions.

Reads two `ragkit eval qa` run folders made on the same grid (one with the default --stuff-order
document, one with --stuff-order edges), pairs their calls by (position, question), and writes a
markdown comparison: accuracy per gold position for both orders (Wilson 95% intervals), the paired
difference with a 95% paired-bootstrap interval (ragkit.evals.report.paired_bootstrap,
resampling questions), and where the gold passage ended up in the reordered prompt. Each prompt is
rebuilt from the task and checked against the key logged with its answer, so the positions reported
are those of the prompts the model really read.

    python benchmarks/stuff_order_report.py evals/reports/qa-qwen2.5-coder-0.5b-local-file-order \\
        evals/reports/qa-qwen2.5-coder-0.5b-local-edges -o evals/reports/qa-stuff-order.md
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from ragkit.evals.cache import call_key
from ragkit.evals.records import latest_by_call, read, read_meta
from ragkit.evals.report import paired_bootstrap, wilson
from ragkit.evals.retrieval import stuff_units
from ragkit.evals.tasks import make_task
from ragkit.models import get_model
from ragkit.tokens import counter_for


def stuffed(run_dir: Path, length: int) -> dict[tuple[float, int], object]:
    """The run's scored stuff calls at `length` documents, by (gold position, sample)."""
    records = latest_by_call(read(run_dir)).values()
    return {(r.depth, r.sample): r for r in records if r.strategy == "stuff" and r.length == length and r.ok}


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def interval(lo: float, hi: float) -> str:
    return f"{100 * lo:.0f}–{100 * hi:.0f}%"


def points(diffs: list[float]) -> str:
    lo, hi = paired_bootstrap(diffs)
    d = sum(diffs) / len(diffs)
    return f"{100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file_run", type=Path)
    ap.add_argument("edges_run", type=Path)
    ap.add_argument("--length", type=int, default=10, help="documents per prompt to compare")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()

    meta = {name: read_meta(d) for name, d in (("document", args.file_run), ("edges", args.edges_run))}
    for name, m in meta.items():
        assert m["grid"].get("stuff_order", "document") == name, f"{name} run has {m['grid'].get('stuff_order')}"
    grid = meta["edges"]["grid"]
    runs = {"document": stuffed(args.file_run, args.length), "edges": stuffed(args.edges_run, args.length)}
    pairs = sorted(set(runs["document"]) & set(runs["edges"]))
    spec = get_model(grid["model"])
    counter = counter_for(spec)
    task = make_task("qa", seed=meta["edges"]["task"].get("seed", 0), **grid["task_options"])

    gold_at: dict[tuple[float, int], int] = {}   # where the gold sat in the edges prompt (0-based)
    verified = Counter()
    edges_prompts = set()
    for depth, i in pairs:
        sample = task.make_sample(counter, args.length, depth, i)
        for order in ("document", "edges"):
            chosen = stuff_units(task.ranking_texts(sample), sample.question, order=order)
            prompt = task.render(sample, [sample.units[k] for k in chosen], retrieved=False)
            key = call_key(spec.id, spec.api_model, task.system, prompt, grid["max_tokens"], grid["temperature"])
            verified[order] += key == runs[order][(depth, i)].key
            if order == "edges":
                gold_at[(depth, i)] = chosen.index(sample.gold_units[0])
                edges_prompts.add(key)
    n = len(pairs)

    lines = [f"# Stuffed documents: file order vs ask's order (edges), {spec.name}", "",
             f"The paper's multi-document QA setting (Liu et al. 2023; NQ-open questions, gold passage among "
             f"{args.length - 1} hard distractors from ragkit's retriever), {args.length} documents, gold placed at "
             f"positions {', '.join(f'{d:g}' for d in sorted({d for d, _ in pairs}))}, "
             f"{len({i for _, i in pairs})} questions, {grid['max_tokens']} answer tokens, temperature 0. "
             "Both runs send every document (stuff); only their order differs:", "",
             "- **document**: as placed (the paper's setting; `ragkit eval qa`'s default);",
             "- **edges**: ordered as `ragkit ask --order edges` orders stuffed documents (BM25 against the question, "
             "best matches first and last, weakest in the middle; one function, `retrieve.stuffed_order`, "
             "serves both).", "",
             f"{n} paired calls (same question, same documents, same placement). Rebuilt prompts match the logged "
             f"keys for {verified['document']}/{n} file-order and {verified['edges']}/{n} edges calls.", "",
             "## Accuracy by gold position (where the gold was placed)", "",
             "| position | n | document | 95% CI | edges | 95% CI | edges − document (paired, 95% CI) | "
             "only document right | only edges right |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_q: dict[int, list[float]] = defaultdict(list)
    swing: dict[int, tuple[int, int, list[float]]] = {}   # position -> (edges gains, edges losses, diffs)
    for depth in sorted({d for d, _ in pairs}):
        cell = [p for p in pairs if p[0] == depth]
        a = [runs["document"][p].score for p in cell]
        b = [runs["edges"][p].score for p in cell]
        for p, x, y in zip(cell, a, b):
            by_q[p[1]].append(y - x)
        swing[int(depth)] = (sum(y > x for x, y in zip(a, b)), sum(x > y for x, y in zip(a, b)),
                             [y - x for x, y in zip(a, b)])
        lines.append(f"| {depth:g} | {len(cell)} | {pct(sum(a) / len(a))} | {interval(*wilson(sum(a), len(a)))} | "
                     f"{pct(sum(b) / len(b))} | {interval(*wilson(sum(b), len(b)))} | "
                     f"{points([y - x for x, y in zip(a, b)])} | {sum(x > y for x, y in zip(a, b))} | "
                     f"{sum(y > x for x, y in zip(a, b))} |")
    a = [runs["document"][p].score for p in pairs]
    b = [runs["edges"][p].score for p in pairs]
    per_question = [sum(d) / len(d) for d in by_q.values()]
    lo, hi = paired_bootstrap(per_question)
    lines.append(f"| all | {n} | {pct(sum(a) / n)} | {interval(*wilson(sum(a), n))} | {pct(sum(b) / n)} | "
                 f"{interval(*wilson(sum(b), n))} | {points(per_question)} (by question) | "
                 f"{sum(x > y for x, y in zip(a, b))} | {sum(y > x for x, y in zip(a, b))} |")
    verdict = ("helps" if lo > 0 else "hurts" if hi < 0
               else f"no detectable difference at n={len(per_question)} questions")

    where = Counter(gold_at.values())
    edge_slots = {0, args.length - 1}
    at_edge = sum(where[k] for k in edge_slots)
    lines += ["", "The overall interval resamples the questions (each question's mean difference over its "
              "positions), since one question's three calls are not independent.", "",
              "## Where the gold ended up in the edges prompt", "",
              "| prompt slot (0 = first) | " + " | ".join(str(k) for k in range(args.length)) + " |",
              "|---|" + "---|" * args.length,
              "| calls | " + " | ".join(str(where[k]) for k in range(args.length)) + " |", "",
              f"Edges ranks the same {args.length} documents the same wherever the gold was placed, so the "
              f"placement stops mattering: the {n} edges calls are {len(edges_prompts)} distinct prompts "
              f"(one per question unless BM25 ties). The gold landed in the first or last slot in {at_edge} of "
              f"{n} calls ({pct(at_edge / n)}); file order puts it there in "
              f"{sum(1 for d, _ in pairs if int(d) in edge_slots)} of {n} by construction.", "",
              "Accuracy by the gold's slot in the prompt the model read:", "",
              "| gold slot | document: calls | accuracy | edges: calls | accuracy |", "|---|---|---|---|---|"]
    for slot in sorted({int(d) for d, _ in pairs} | set(where)):
        fa = [runs["document"][p].score for p in pairs if int(p[0]) == slot]
        ea = [runs["edges"][p].score for p in pairs if gold_at[p] == slot]
        lines.append(f"| {slot} | {len(fa)} | {pct(sum(fa) / len(fa)) if fa else '–'} | {len(ea)} | "
                     f"{pct(sum(ea) / len(ea)) if ea else '–'} |")
    tokens = [runs["edges"][p].input_tokens for p in pairs]
    firsts = {i for (d, i), slot in gold_at.items() if slot == 0}
    paid = {o: [runs[o][p] for p in pairs if not runs[o][p].cached] for o in runs}
    lines += ["", f"BM25 ranked the gold first for {len(firsts)} of {len({i for _, i in pairs})} questions (the hard "
              "distractors are the embedding retriever's near-misses, so a term ranker still tells them apart). "
              "The mechanism is the gold's slot: " + "; ".join(
                  f"placed at {d} ({'an edge already' if d in edge_slots else 'the middle'}), the reorder gained "
                  f"{gained} questions and lost {lost}, {points(diffs)}"
                  for d, (gained, lost, diffs) in sorted(swing.items())) +
              f". {'Some' if any(lo > 0 or hi < 0 for lo, hi in (paired_bootstrap(d) for *_, d in swing.values())) else 'No'}"
              " per-position interval excludes 0."]
    lines += ["", "## Verdict", "",
              f"**{verdict[0].upper() + verdict[1:]}** (edges − document {points(per_question)}, by question).", "",
              f"Prompts average {sum(tokens) / len(tokens):,.0f} input tokens, "
              f"{'within' if sum(tokens) / len(tokens) <= spec.practical_limit_tokens else 'above'} the "
              f"{spec.practical_limit_tokens:,}-token practical limit the registry gives {spec.name} (a CPU-time "
              "default, not an accuracy measurement; the eval stuffs past it on purpose). "
              f"File-order accuracy is {pct(sum(a) / n)} over these calls: the model misses most questions "
              "wherever the gold sits, and 20 questions per position can only show a large effect.", "",
              "## How it was run", "",
              "```",
              f"RAGKIT_THREADS=1 ragkit eval qa -m local --docs {args.length} --positions "
              f"{','.join(f'{d:g}' for d in sorted({d for d, _ in pairs}))} -n {len({i for _, i in pairs})} "
              f"--max-tokens {grid['max_tokens']} --stuff-order edges -o {args.edges_run}",
              f"python benchmarks/stuff_order_report.py {args.file_run} {args.edges_run} "
              f"{'' if args.length == 10 else f'--length {args.length} '}-o {args.out}",
              "```", "",
              f"The file-order calls come from {args.file_run} (the same command without --stuff-order, the part of "
              f"its grid at {args.length} documents). Model time: {len(paid['edges'])} edges calls "
              f"({sum(r.latency_s for r in paid['edges']):,.0f} s; identical prompts are sent once) against the "
              f"{len(paid['document'])} file-order calls paired here "
              f"({sum(r.latency_s for r in paid['document']):,.0f} s), on a shared 2-core machine.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
