"""Report from a results log: accuracy tables (length x depth, counts, 95% intervals), a heatmap and a
line plot, the measured practical limit and where retrieve overtakes stuff. Never calls a model.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ragkit.errors import InputError
from ragkit.evals.records import EvalRecord, latest_by_call, plural, read, read_meta, results_path

Z95 = 1.96
RELATIVE_FLOOR = 0.9  # default floor: 90% of the accuracy at the shortest length
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Cell:
    n: int                  # scored calls (failed ones are unscored and not counted)
    accuracy: float | None
    low: float | None       # Wilson 95% interval
    high: float | None
    failed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Limit:
    strategy: str
    floor: float                     # the accuracy floor used
    floor_rule: str                  # "90% of the accuracy at the shortest length (0.93)" or "absolute"
    length: int | None               # longest tested length whose accuracy (and every shorter one's) >= floor
    length_unit: str
    prompt_tokens: int | None        # median input tokens the model reported at that length
    all_passed: bool                 # no drop seen: the true limit may be higher
    retrieve_overtakes_at: int | None
    first_below: int | None = None           # the first tested length below the floor
    first_below_accuracy: float | None = None
    first_below_high: float | None = None    # its 95% upper bound: >= floor means the drop is not significant
    first_below_n: int = 0

    @property
    def drop_significant(self) -> bool:
        return self.first_below_high is not None and self.first_below_high < self.floor

    @property
    def practical_limit_tokens(self) -> int | None:
        """The limit in the planner's terms: the prompt as the model counted it at `length` (else `length`)."""
        if self.length is None or self.length_unit != "tokens":
            return None
        return self.prompt_tokens or self.length

    def insignificant_drop(self) -> str | None:
        """Why the first drop below the floor may be noise (None when it is significant or there is none)."""
        if self.first_below is None or self.drop_significant:
            return None
        return (f"at {_fmt_len(self.first_below, self.length_unit)} accuracy is {100 * self.first_below_accuracy:.0f}%, "
                f"but its 95% interval reaches {100 * self.first_below_high:.0f}% (n={self.first_below_n}): "
                "the drop is not significant at this sample size")

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_significant": self.drop_significant,
                "practical_limit_tokens": self.practical_limit_tokens}


def wilson(successes: float, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(diffs: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile interval of the mean of per-question differences, resampling questions (fixed seed)."""
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def cell(records: Sequence[EvalRecord]) -> Cell:
    scored = [r.score for r in records if r.ok and r.score is not None]
    failed = sum(1 for r in records if not r.ok)
    if not scored:
        return Cell(0, None, None, None, failed)
    lo, hi = wilson(sum(scored), len(scored))
    return Cell(len(scored), sum(scored) / len(scored), lo, hi, failed)


def load_run(out_dir: Path | str) -> tuple[dict, list[EvalRecord]]:
    """The run's metadata and one record per call."""
    out = Path(out_dir)
    if not results_path(out).exists():
        raise InputError(f"{out} has no results.jsonl: run `ragkit eval needle|qa|kv ... --out {out}` first")
    return read_meta(out), list(latest_by_call(read(out)).values())


def _axis(records: Sequence[EvalRecord], name: str) -> list:
    return sorted({getattr(r, name) for r in records})


def summarize(records: Sequence[EvalRecord]) -> dict:
    """{strategy: {"by_length": {L: Cell}, "by_depth": {D: Cell}, "cells": {(L, D): Cell}, "overall": Cell}}"""
    out = {}
    for strategy in sorted({r.strategy for r in records}, key=lambda s: (s != "stuff", s)):
        rs = [r for r in records if r.strategy == strategy]
        out[strategy] = {
            "by_length": {L: cell([r for r in rs if r.length == L]) for L in _axis(rs, "length")},
            "by_depth": {D: cell([r for r in rs if r.depth == D]) for D in _axis(rs, "depth")},
            "cells": {(L, D): cell([r for r in rs if r.length == L and r.depth == D])
                      for L in _axis(rs, "length") for D in _axis(rs, "depth")},
            "overall": cell(rs),
        }
    return out


def measured_limit(records: Sequence[EvalRecord], floor: float | None = None) -> Limit | None:
    """The longest tested length whose accuracy stays at or above the floor (every shorter one too)."""
    summary = summarize(records)
    if not summary:
        return None
    strategy = "stuff" if "stuff" in summary else next(iter(summary))
    by_length = {L: c for L, c in summary[strategy]["by_length"].items() if c.accuracy is not None}
    if not by_length:
        return None
    lengths = sorted(by_length)
    base = by_length[lengths[0]].accuracy
    if floor is None:
        floor_value, rule = RELATIVE_FLOOR * base, f"90% of the accuracy at the shortest length ({base:.2f})"
    else:
        floor_value, rule = floor, "absolute (--floor)"
    limit = None
    for L in lengths:
        if by_length[L].accuracy + 1e-9 < floor_value or (floor is None and base == 0):
            break  # (a model that fails even at the shortest length has no limit to measure)
        limit = L
    unit = records[0].length_unit
    prompt_tokens = None
    if limit is not None:
        tokens = sorted(r.input_tokens for r in records
                        if r.strategy == strategy and r.length == limit and r.ok and r.input_tokens)
        prompt_tokens = tokens[len(tokens) // 2] if tokens else None
    overtakes = None
    if "stuff" in summary and "retrieve" in summary:
        for L in lengths:
            s, r = summary["stuff"]["by_length"].get(L), summary["retrieve"]["by_length"].get(L)
            if s and r and s.accuracy is not None and r.accuracy is not None and r.accuracy > s.accuracy:
                overtakes = L
                break
    below = next((L for L in lengths if limit is None or L > limit), None)
    c = by_length.get(below) if below is not None else None
    return Limit(strategy, round(floor_value, 4), rule, limit, unit, prompt_tokens,
                 limit == lengths[-1], overtakes, below, c.accuracy if c else None, c.high if c else None,
                 c.n if c else 0)


# ---------------------------------------------------------------- rendering

def _pct(c: Cell | None) -> str:
    if c is None or c.accuracy is None:
        return "–"
    return f"{100 * c.accuracy:.0f}% ({100 * c.low:.0f}–{100 * c.high:.0f}) n={c.n}" + (f" ✗{c.failed}" if c.failed else "")


def _fmt_len(L, unit: str) -> str:
    if unit == "docs":
        return f"{L} docs"
    return f"{L / 1000:g}K" if L >= 1000 and L % 100 == 0 else str(L)


def _fmt_depth(D, unit: str) -> str:
    return f"pos {int(D)}" if unit == "position" else f"{D:g}%"


def markdown_tables(records: Sequence[EvalRecord]) -> str:
    summary = summarize(records)
    if not records:
        return "(no results)\n"
    lu, du = records[0].length_unit, records[0].depth_unit
    lines = []
    for strategy, s in summary.items():
        depths = sorted(s["by_depth"])
        lines.append(f"**{strategy}** — accuracy (95% interval, n scored) by length × "
                     f"{'gold position' if du == 'position' else 'depth'}\n")
        lines.append("| length | " + " | ".join(_fmt_depth(D, du) for D in depths) + " | all depths |")
        lines.append("|---" * (len(depths) + 2) + "|")
        for L, c in sorted(s["by_length"].items()):
            row = [_pct(s["cells"].get((L, D))) for D in depths]
            lines.append(f"| {_fmt_len(L, lu)} | " + " | ".join(row) + f" | {_pct(c)} |")
        lines.append("| all lengths | " + " | ".join(_pct(s["by_depth"][D]) for D in depths)
                     + f" | {_pct(s['overall'])} |\n")
    return "\n".join(lines)


def edges_vs_middle(records: Sequence[EvalRecord]) -> list[str]:
    """Lost in the middle, tested (gold placed by document position, stuffed in that order): per length, the gold in
    the first or last document against the positions between, paired by question (each question's mean
    at the edges minus its mean in the middle), with a 95% bootstrap interval over questions."""
    if not records or records[0].depth_unit != "position":
        return []
    rows = []
    for strategy in sorted({r.strategy for r in records}):
        for L in sorted({r.length for r in records if r.strategy == strategy}):
            by_q: dict[int, dict[bool, list[float]]] = {}
            for r in records:
                if r.strategy == strategy and r.length == L and r.ok:
                    by_q.setdefault(r.sample, {True: [], False: []})[int(r.depth) in (0, L - 1)].append(r.score)
            pairs = [q for q in by_q.values() if q[True] and q[False]]
            if not pairs:
                continue
            edge, middle = ([s for q in pairs for s in q[side]] for side in (True, False))
            diffs = [sum(q[True]) / len(q[True]) - sum(q[False]) / len(q[False]) for q in pairs]
            diff, (lo, hi) = sum(diffs) / len(diffs), paired_bootstrap(diffs)
            rows.append(f"| {strategy} | {_fmt_len(L, records[0].length_unit)} | {100 * sum(edge) / len(edge):.0f}% "
                        f"(n={len(edge)}) | {100 * sum(middle) / len(middle):.0f}% (n={len(middle)}) | "
                        f"{100 * diff:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] | {len(pairs)} |")
    if not rows:
        return []
    return ["## Edges vs middle", "",
            "The gold in the first or last document against the positions between, per question (its mean at the "
            f"edges minus its mean in the middle), 95% paired bootstrap over questions ({BOOTSTRAP_RESAMPLES:,} "
            f"resamples, seed {BOOTSTRAP_SEED}). A lost-in-the-middle dip shows where the interval excludes 0.", "",
            "| strategy | length | gold at an edge | gold in the middle | edges − middle (95% CI) | questions |",
            "|---|---|---|---|---|---|", *rows, ""]


def plot_heatmap(records: Sequence[EvalRecord], strategy: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = summarize(records)[strategy]
    lengths, depths = sorted(s["by_length"]), sorted(s["by_depth"])
    lu, du = records[0].length_unit, records[0].depth_unit
    grid = np.full((len(depths), len(lengths)), np.nan)
    for i, D in enumerate(depths):
        for j, L in enumerate(lengths):
            c = s["cells"].get((L, D))
            if c and c.accuracy is not None:
                grid[i, j] = c.accuracy
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), [_fmt_len(L, lu) for L in lengths])
    ax.set_yticks(range(len(depths)), [_fmt_depth(D, du) for D in depths])
    ax.set_xlabel("context length" if lu == "tokens" else "documents")
    ax.set_ylabel("needle depth" if du == "percent" else "gold position")
    ax.set_title(f"{records[0].task} on {records[0].model} — {strategy}: accuracy %")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lines(records: Sequence[EvalRecord], path: Path, limit: Limit | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(records)
    lu = records[0].length_unit
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for strategy, s in summary.items():
        pts = [(L, c) for L, c in sorted(s["by_length"].items()) if c.accuracy is not None]
        if not pts:
            continue
        xs = [L for L, _ in pts]
        ax.plot(xs, [c.accuracy for _, c in pts], marker="o", label=strategy)
        ax.fill_between(xs, [c.low for _, c in pts], [c.high for _, c in pts], alpha=0.15)
    if limit is not None:
        ax.axhline(limit.floor, color="grey", linestyle=":", label=f"floor {limit.floor:.2f}")
        if limit.length is not None:
            ax.axvline(limit.length, color="red", linestyle="--", label=f"measured limit {_fmt_len(limit.length, lu)}")
    if lu == "tokens" and len({r.length for r in records}) > 2:
        ax.set_xscale("log", base=2)
    lengths = sorted({r.length for r in records})
    ax.set_xticks(lengths, [_fmt_len(L, lu) for L in lengths])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("context length (tokens)" if lu == "tokens" else "documents in context")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{records[0].task} on {records[0].model}: accuracy vs length")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_report(out_dir: Path | str, *, floor: float | None = None, plots: bool = True) -> dict:
    """Writes report.md, summary.json and the PNGs into out_dir; returns the summary dict."""
    out = Path(out_dir)
    meta, records = load_run(out)
    if not records:
        raise InputError(f"{out}/results.jsonl is empty: nothing to report")
    order = {s: i for i, s in enumerate(["stuff", "retrieve"])}
    records.sort(key=lambda r: (order.get(r.strategy, 9), r.length, r.depth, r.sample))
    limit = measured_limit(records, floor)
    summary = summarize(records)
    lu = records[0].length_unit
    images = []
    if plots:
        for strategy in summary:
            name = f"heatmap-{strategy}.png"
            plot_heatmap(records, strategy, out / name)
            images.append(name)
        plot_lines(records, out / "accuracy-vs-length.png", limit)
        images.append("accuracy-vs-length.png")

    n_ok = sum(1 for r in records if r.ok)
    n_failed = len(records) - n_ok
    paid = sum(r.cost_usd for r in records if r.ok)
    latency = sorted(r.latency_s for r in records if r.ok)
    grid = meta.get("grid", {})
    lines = [f"# {records[0].task} eval: {records[0].model}", ""]
    if meta:
        # Axes from the results themselves: a folder may hold several runs (lengths or strategies added later).
        depths = ", ".join(f"{d:g}" for d in sorted({r.depth for r in records}))
        lengths = ", ".join(str(x) for x in sorted({r.length for r in records}))
        strategies = ", ".join(sorted({r.strategy for r in records}, key=lambda x: (x != "stuff", x)))
        lines.append(f"Last run {meta.get('created', '?')}; results for lengths {lengths} ({lu}), depths "
                     f"{depths} ({records[0].depth_unit}), strategies {strategies}; the last run asked "
                     f"{grid.get('samples')} samples per cell (the tables give each cell's n), max "
                     f"{grid.get('max_tokens')} output tokens, temperature "
                     f"{grid.get('temperature')}. Scorer: {meta.get('task', {}).get('scorer')}.")
        if grid.get("stuff_order") == "edges":
            lines.append("Stuffed documents were ordered as `ragkit ask --order edges` orders them (BM25 against the "
                         "question, best matches first and last): a position is where the gold was placed before "
                         "that reordering, not where the model read it.")
    lines.append(f"{plural(len(records), 'call')}: {n_ok} scored, {n_failed} failed (failed calls are unscored, not wrong). "
                 f"Cost of the calls ${paid:.4f}; median latency "
                 f"{latency[len(latency) // 2] if latency else float('nan'):.2f} s.")
    lines += ["", "## Measured practical limit", ""]
    if limit is None:
        lines.append("No scored results: no limit measured.")
    elif limit.length is None:
        lines.append(f"Accuracy is below the floor ({limit.floor:.2f}, {limit.floor_rule}) at every tested length "
                     f"with `{limit.strategy}`: no practical limit within the tested range.")
    else:
        tokens = f" (prompts of about {limit.prompt_tokens:,} tokens as the model counted them)" if limit.prompt_tokens else ""
        more = (" No drop was seen at any tested length, so the true limit may be higher: test longer lengths."
                if limit.all_passed else "")
        if doubt := limit.insignificant_drop():
            more += f" {doubt[0].upper()}{doubt[1:]}; run more samples (-n) to confirm it."
        size = _fmt_len(limit.length, lu) + ("" if lu == "docs" else " tokens")
        lines.append(f"**{size}**{tokens}: the longest tested "
                     f"length at which `{limit.strategy}` accuracy stays at or above the floor of {limit.floor:.2f} "
                     f"({limit.floor_rule}).{more}")
    model = meta.get("model") or {}
    if model.get("practical_limit_tokens"):
        lines.append("")
        lines.append(f"The registry's limit for {model.get('id')} at the time of the run: "
                     f"{model['practical_limit_tokens']:,} tokens ({model.get('limit_source', '?')}).")
    if limit is not None and "retrieve" in summary and "stuff" in summary:
        lines.append("")
        lines.append(f"Retrieve overtakes stuff at **{_fmt_len(limit.retrieve_overtakes_at, lu)}**."
                     if limit.retrieve_overtakes_at is not None else
                     "Retrieve does not overtake stuff at any tested length.")
    # only where the placement is where the model read the gold: stuffed in file order
    placed = [r for r in records if r.strategy == "stuff"] if grid.get("stuff_order") != "edges" else []
    lines += ["", "## Accuracy", "", markdown_tables(records)] + edges_vs_middle(placed)
    if images:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + [""]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {
        "task": records[0].task, "model": records[0].model, "length_unit": lu,
        "depth_unit": records[0].depth_unit, "calls": len(records), "failed": n_failed, "cost_usd": paid,
        "limit": limit.to_dict() if limit else None,
        "strategies": {
            st: {"overall": s["overall"].to_dict(),
                 "by_length": {str(L): c.to_dict() for L, c in s["by_length"].items()},
                 "by_depth": {f"{D:g}": c.to_dict() for D, c in s["by_depth"].items()},
                 "cells": [{"length": L, "depth": D, **c.to_dict()} for (L, D), c in s["cells"].items()]}
            for st, s in summary.items()},
    }
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def save_measured_limit(out_dir: Path | str, *, floor: float | None = None, path: Path | None = None,
                        force: bool = False) -> tuple[Path, int, str]:
    """Writes the measured limit into the user's model overrides (so `ragkit plan` uses it).

    Refuses, unless `force`, a limit whose drop the report itself calls not significant."""
    import datetime as _dt

    from ragkit.models import save_limit_override

    meta, records = load_run(out_dir)
    limit = measured_limit(records, floor)
    if limit is None or limit.length is None:
        raise InputError("no measured limit to save: no tested length stayed above the floor")
    if limit.length_unit != "tokens":
        raise InputError("this run's lengths are documents, not tokens: run the eval with --lengths in tokens "
                         "to measure a limit the planner can use")
    tokens = limit.practical_limit_tokens
    if limit.insignificant_drop() and not force:
        raise InputError(f"not saving the limit of {tokens:,} tokens: {limit.insignificant_drop()}; run more "
                         f"samples (-n; the run resumes) or add --force to save it anyway")
    task = records[0].task
    source = (f"measured {_dt.date.today().isoformat()} by ragkit eval {task} ({Path(out_dir).name}): "
              f"accuracy >= {limit.floor:.2f} up to {limit.length:,}-token contexts")
    written = save_limit_override(records[0].model, tokens, source, path)
    return written, tokens, source
