"""A comparison's report from its results log: per model x strategy accuracy (Wilson 95%), citation
accuracy, abstentions, $/task from API-reported usage, tokens, latency p50/p95 (TTFT and total),
$/day and $/month; then the switching verdict: each against the most accurate, on the SAME questions,
a paired bootstrap interval and the article's 5-point rule. Never calls a model.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ragkit.costs import DAYS_PER_MONTH, usd
from ragkit.errors import InputError
from ragkit.evals.records import EvalRecord, atomic_write, latest_by_call, read, read_meta, results_path
from ragkit.evals.report import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired_bootstrap, wilson

SWITCH_POINTS = 5.0          # the article: within 5 percentage points, switching is worth it


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Group:
    """One model x strategy over the golden set."""

    label: str                    # "gpt-4o-mini" or "gpt-4o-mini/stuff" when several strategies ran
    model: str
    strategy: str
    n: int                        # scored answers
    failed: int
    accuracy: float | None        # subspan EM
    low: float | None             # Wilson 95%
    high: float | None
    containment: float | None
    f1: float | None
    abstained: int
    citation_accuracy: float | None   # of the answers that did not abstain: a cited source holds the answer
    cost_per_task_usd: float | None   # API-reported usage x registry prices
    input_tokens_per_task: float | None
    output_tokens_per_task: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    cost_per_day_usd: float | None
    cost_per_month_usd: float | None
    strategies_used: dict         # auto: how often the planner stuffed / retrieved
    # --schema runs (None otherwise): schema-valid on the first reply / after the repair, repairs, field accuracy
    schema_valid_first: float | None = None
    schema_valid: float | None = None
    repairs: int | None = None
    field_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def group(label: str, records: Sequence[EvalRecord], tasks_per_day: int) -> Group:
    ok = [r for r in records if r.ok]
    lo, hi = wilson(sum(r.score for r in ok), len(ok)) if ok else (None, None)
    m = [r.metrics or {} for r in ok]
    answered = [x for x in m if not x.get("abstained")]
    cost = _mean([r.cost_usd for r in ok])
    used: dict[str, int] = {}
    for x in m:
        used[x.get("strategy_used", "?")] = used.get(x.get("strategy_used", "?"), 0) + 1
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    return Group(
        label=label, model=records[0].model, strategy=records[0].strategy, n=len(ok), failed=len(records) - len(ok),
        accuracy=_mean([r.score for r in ok]), low=lo, high=hi,
        containment=_mean([x.get("containment", 0.0) for x in m]), f1=_mean([x.get("f1", 0.0) for x in m]),
        abstained=len(m) - len(answered),
        citation_accuracy=_mean([1.0 if x.get("citation_ok") else 0.0 for x in answered]),
        cost_per_task_usd=cost, input_tokens_per_task=_mean([r.input_tokens for r in ok]),
        output_tokens_per_task=_mean([r.output_tokens for r in ok]),
        latency_p50_s=percentile([r.latency_s for r in ok], 50), latency_p95_s=percentile([r.latency_s for r in ok], 95),
        ttft_p50_s=percentile(ttfts, 50), ttft_p95_s=percentile(ttfts, 95),
        cost_per_day_usd=None if cost is None else cost * tasks_per_day,
        cost_per_month_usd=None if cost is None else cost * tasks_per_day * DAYS_PER_MONTH,
        strategies_used=used, **_structured(m))


def _structured(metrics: Sequence[dict]) -> dict:
    """A --schema group's validity, repairs and field accuracy (nothing for plain answers)."""
    outcomes = [x["schema"] for x in metrics if isinstance(x.get("schema"), dict)]
    if not outcomes:
        return {}
    fields = [x["field_accuracy"] for x in metrics if x.get("field_accuracy") is not None]
    return {"schema_valid_first": _mean([float(o["valid_first"]) for o in outcomes]),
            "schema_valid": _mean([float(o["valid"]) for o in outcomes]),
            "repairs": sum(o["repairs"] for o in outcomes), "field_accuracy": _mean(fields)}


# ---------------------------------------------------------------- the paired verdict

@dataclass(frozen=True)
class Verdict:
    label: str                    # the candidate
    reference: str                # the most accurate
    n: int                        # questions both answered (scored)
    diff_points: float            # candidate minus reference, percentage points
    low_points: float             # paired 95% interval
    high_points: float
    decision: str                 # "switch" | "keep" | "undecided" | "reference"
    saving_per_month_usd: float | None   # reference's monthly cost minus the candidate's, at tasks_per_day
    questions_needed: int | None  # undecided: about how many questions would decide it
    sentence: str

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(cand: Group, ref: Group, by_q: dict[str, dict[str, float]], tasks_per_day: int,
            points: float = SWITCH_POINTS) -> Verdict:
    """The article's rule on the same questions: switch when the whole 95% interval of the paired
    difference lies above -points; keep when it lies below; otherwise say how many questions would decide."""
    shared = sorted(set(by_q[cand.label]) & set(by_q[ref.label]))
    diffs = [by_q[cand.label][q] - by_q[ref.label][q] for q in shared]
    n = len(diffs)
    saving = (None if cand.cost_per_month_usd is None or ref.cost_per_month_usd is None
              else ref.cost_per_month_usd - cand.cost_per_month_usd)
    if n == 0:
        return Verdict(cand.label, ref.label, 0, math.nan, math.nan, math.nan, "undecided", saving, None,
                       f"{cand.label} and {ref.label} share no scored question: nothing to compare.")
    d = 100 * sum(diffs) / n
    lo, hi = (100 * x for x in paired_bootstrap(diffs))
    lo, hi = round(lo, 1), round(hi, 1)      # the sentence's figures decide, so it never contradicts itself
    shown = f"{d:+.1f}, 95% CI {lo:+.1f}…{hi:+.1f}".replace("+-", "-")
    save_txt = ""
    if saving is not None:
        verb = "saves" if saving >= 0 else "costs"
        save_txt = f"switching {verb} ${abs(saving):,.2f}/month at {tasks_per_day:,} tasks/day"
    needed = None
    if lo >= -points and saving is not None and saving < 0:
        decision = "keep"
        sentence = (f"{cand.label} is no more accurate than {ref.label} ({shown}, n={n}) and costs "
                    f"${-saving:,.2f}/month more at {tasks_per_day:,} tasks/day: keep {ref.label}.")
    elif lo >= -points:
        decision = "switch"
        sentence = f"{cand.label} is within {points:g} points of {ref.label} ({shown}, n={n})"
        sentence += f": {save_txt}." if save_txt else "."
    elif hi < -points:
        decision = "keep"
        sentence = f"{cand.label} is more than {points:g} points below {ref.label} ({shown}, n={n}): keep {ref.label}."
    else:
        decision = "undecided"
        half = max((hi - lo) / 2, 1e-9)
        gap = abs(d + points)
        needed = math.ceil(n * (half / gap) ** 2) if gap > 0.05 else None
        how = f"about {needed:,} questions would decide it" if needed else "it sits on the 5-point line: only many more questions could decide it"
        sentence = f"{cand.label} vs {ref.label}: not decisive at n={n} ({shown}); {how}."
    return Verdict(cand.label, ref.label, n, round(d, 2), lo, hi, decision, saving, needed, sentence)


# ---------------------------------------------------------------- summary, report, plots

def load_compare(out_dir: Path | str) -> tuple[dict, list[EvalRecord]]:
    out = Path(out_dir)
    if not results_path(out).exists():
        raise InputError(f"{out} has no results.jsonl: run `ragkit compare CORPUS --questions Q.jsonl -m A -m B "
                         f"--out {out}` first.")
    meta = read_meta(out)
    if meta.get("format", "").split("/")[0] != "ragkit-compare":
        raise InputError(f"{out} is not a compare run (its run.json says {meta.get('format')!r}); "
                         "use `ragkit eval report` for eval runs.")
    return meta, list(latest_by_call(read(out)).values())


def summarize(meta: dict, records: Sequence[EvalRecord], tasks_per_day: int | None = None) -> dict:
    tasks_per_day = meta.get("tasks_per_day", 1000) if tasks_per_day is None else tasks_per_day
    several = len(meta.get("strategies") or []) > 1
    by_label: dict[str, list[EvalRecord]] = {}
    for r in records:
        by_label.setdefault(f"{r.model}/{r.strategy}" if several else r.model, []).append(r)
    groups = [group(label, rs, tasks_per_day) for label, rs in by_label.items()]
    by_q = {label: {(r.metrics or {}).get("qid", r.question): r.score for r in rs if r.ok}
            for label, rs in by_label.items()}
    ranked = sorted((g for g in groups if g.accuracy is not None),
                    key=lambda g: (-g.accuracy, g.cost_per_task_usd or 0.0))
    verdicts = []
    if ranked:
        ref = ranked[0]
        verdicts = [verdict(g, ref, by_q, tasks_per_day) for g in ranked[1:]]
    return {"format": meta.get("format"), "golden": meta.get("golden"), "golden_sha256": meta.get("golden_sha256"),
            "task": meta.get("task", "qa"), "created": meta.get("created"), "tasks_per_day": tasks_per_day,
            "questions": meta.get("questions"), "most_accurate": ranked[0].label if ranked else None,
            "groups": [g.to_dict() for g in groups], "verdicts": [v.to_dict() for v in verdicts],
            "pareto": pareto([g for g in groups if g.accuracy is not None]),
            "judge": meta.get("judge"),   # None: deterministic scoring
            "model_specs": meta.get("model_specs"),   # None: a run from before they were recorded
            "judge_calls": sum(1 for r in records if r.ok and (r.metrics or {}).get("judge_cached") is False),
            "judge_cost_usd": round(sum((r.metrics or {}).get("judge_cost_usd") or 0.0 for r in records), 6)}


def _models_as_run(specs: dict | None) -> list[str]:
    """Each model's limits and prices as the run saw them (overrides included), when run.json kept them."""
    if not specs:
        return []
    lines = ["", "Models as configured for this run (the plan packs each prompt into the practical limit):", "",
             "| model | practical limit | max answer tokens | $ in / out per 1M | limit source |", "|---|---|---|---|---|"]
    for model, s in specs.items():
        lines.append(f"| {model} | {s['practical_limit_tokens']:,} | {s['max_output_tokens']:,} | "
                     f"{s['input_usd_per_mtok']:g} / {s['output_usd_per_mtok']:g} | {s['limit_source']} |")
    return lines


def pareto(groups: Sequence[Group]) -> list[str]:
    """Labels on the cost-accuracy front: no other group is at least as cheap and more accurate."""
    front = []
    for g in groups:
        cost = g.cost_per_task_usd or 0.0
        if not any((h.cost_per_task_usd or 0.0) <= cost and h.accuracy > g.accuracy
                   or (h.cost_per_task_usd or 0.0) < cost and h.accuracy >= g.accuracy for h in groups):
            front.append(g.label)
    return sorted(front, key=lambda lab: next(g.cost_per_task_usd or 0.0 for g in groups if g.label == lab))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f}s"


def render_markdown(summary: dict) -> str:
    lines = [f"# Model comparison: {summary.get('golden')}", "",
             f"{summary.get('questions')} questions (golden set sha256 {str(summary.get('golden_sha256'))[:12]}), "
             f"task `{summary.get('task')}`, projected at {summary['tasks_per_day']:,} tasks/day. "
             + (f"Accuracy is the judge's verdict ({judge['model']}, prompt below); F1 and contains stay deterministic"
                if (judge := summary.get("judge")) else "Accuracy is best-subspan exact match")
             + "; citation accuracy counts the answers that did not abstain.", "",
             "| model | n | accuracy (95% CI) | F1 | contains | citations | abstained | failed | $/task | "
             "in/out tokens | latency p50/p95 | TTFT p50/p95 | $/day | $/month |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        ci = "" if g["low"] is None else f" ({_pct(g['low'])}–{_pct(g['high'])})"
        tokens = ("-" if g["input_tokens_per_task"] is None
                  else f"{g['input_tokens_per_task']:,.0f}/{g['output_tokens_per_task']:,.0f}")
        lines.append(f"| {g['label']} | {g['n']} | {_pct(g['accuracy'])}{ci} | {_pct(g['f1'])} | "
                     f"{_pct(g['containment'])} | {_pct(g['citation_accuracy'])} | {g['abstained']} | {g['failed']} | "
                     f"{usd(g['cost_per_task_usd'])} | {tokens} | {_s(g['latency_p50_s'])}/{_s(g['latency_p95_s'])} | "
                     f"{_s(g['ttft_p50_s'])}/{_s(g['ttft_p95_s'])} | {usd(g['cost_per_day_usd'])} | "
                     f"{usd(g['cost_per_month_usd'])} |")
    lines += _models_as_run(summary.get("model_specs"))
    structured = [g for g in summary["groups"] if g.get("schema_valid_first") is not None]
    if structured:
        lines += ["", "Structured answers (--schema; accuracy above is over the object's text, 0 when it never "
                  "validated; field accuracy against the golden lines' \"reference\"):", "",
                  "| model | schema-valid, first reply | after one repair | repairs | field accuracy |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g['label']} | {_pct(g['schema_valid_first'])} | {_pct(g['schema_valid'])} | {g['repairs']} | "
                  f"{_pct(g['field_accuracy'])} |" for g in structured]
    lines += ["", "## Switching verdict", ""]
    if summary["most_accurate"]:
        lines.append(f"Most accurate: **{summary['most_accurate']}**. Each other model on the same questions "
                     f"(paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); the rule: "
                     f"switch when the whole interval is within {SWITCH_POINTS:g} points.")
        lines.append("")
        lines += [f"- {v['sentence']}" for v in summary["verdicts"]] or ["- only one model was scored."]
    else:
        lines.append("No answer was scored.")
    lines += ["", f"Cost-accuracy front: {', '.join(summary['pareto']) or '-'}.", "",
              "![cost vs accuracy](cost_accuracy.png)", "", "![latency](latency.png)", ""]
    if judge:
        lines += ["## Judge", "",
                  f"{judge['model']} graded every answer: {summary['judge_calls']} grades paid, "
                  f"{usd(summary['judge_cost_usd'])} in all (ledger task `compare:judge`; not in any model's $/task). "
                  "Its instructions and prompt:", "", "```text", judge["system"], "", judge["prompt"], "```", ""]
    return "\n".join(lines)


def plot_cost_accuracy(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in summary["groups"] if g["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for g in groups:
        x = g["cost_per_task_usd"] or 0.0
        ax.errorbar([x], [g["accuracy"]], yerr=[[g["accuracy"] - g["low"]], [g["high"] - g["accuracy"]]],
                    fmt="o", capsize=4)
        ax.annotate(g["label"], (x, g["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = [next(g for g in groups if g["label"] == lab) for lab in summary["pareto"]]
    if len(front) > 1:
        ax.plot([g["cost_per_task_usd"] or 0.0 for g in front], [g["accuracy"] for g in front], "--", color="grey",
                label="cost-accuracy front")
        ax.legend(fontsize=8)
    ax.set_xlabel("$ per task (API-reported usage)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Cost vs accuracy on your questions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in summary["groups"] if g["latency_p50_s"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(groups) + 1.8))
    ys = range(len(groups))
    ax.barh([y + 0.2 for y in ys], [g["latency_p95_s"] for g in groups], height=0.4, color="#c7d7ee", label="total p95")
    ax.barh([y + 0.2 for y in ys], [g["latency_p50_s"] for g in groups], height=0.4, color="#4a78b5", label="total p50")
    ax.barh([y - 0.2 for y in ys], [g["ttft_p95_s"] or 0 for g in groups], height=0.4, color="#f3d3b5", label="TTFT p95")
    ax.barh([y - 0.2 for y in ys], [g["ttft_p50_s"] or 0 for g in groups], height=0.4, color="#d9822b", label="TTFT p50")
    ax.set_yticks(list(ys), [g["label"] for g in groups])
    ax.set_xlabel("seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_compare(out_dir: Path | str, tasks_per_day: int | None = None) -> dict:
    """report.md, summary.json and the two plots from the folder's records; returns the summary."""
    out = Path(out_dir)
    meta, records = load_compare(out)
    summary = summarize(meta, records, tasks_per_day)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out / "report.md", render_markdown(summary))
    if any(g["accuracy"] is not None for g in summary["groups"]):
        plot_cost_accuracy(summary, out / "cost_accuracy.png")
        plot_latency(summary, out / "latency.png")
    return summary
