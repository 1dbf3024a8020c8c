"""CLI: `ragkit compare CORPUS --questions Q.jsonl -m A -m B` and `ragkit compare report DIR`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ragkit.cli.foundation import BASE_URL_OPTION, NO_PROGRESS_OPTION, RESPONSE_CACHE_OPTION
from ragkit.cli.params import COUNT, USD, Label
from ragkit.errors import InputError


class _RunByDefault(click.Group):
    """`ragkit compare CORPUS ...` runs a comparison; `ragkit compare report DIR` re-renders one."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("compare", cls=_RunByDefault, short_help="Compare models on your own questions: accuracy, $/task, latency.")
def compare_group():
    """Answer your golden questions through the real `ask` path with each model; report accuracy (95%
    interval), citation accuracy, $/task, latency and whether switching to a cheaper model is safe.

    \b
    Examples:
      ragkit compare docs/ --questions golden.jsonl -m gpt-4o -m gpt-4o-mini --tasks-per-day 5000
      ragkit compare corpora/nq-wiki --questions corpora/questions/nq-wiki.jsonl --sample 100 \\
          -m gpt-4o -m gemini-2.0-flash --strategy stuff,retrieve --save
      ragkit compare docs/ --questions golden.jsonl -m gpt-4o-mini -m local --schema 'title str, year int | null'
      ragkit compare report ragkit-compare/docs
    """


def _strategies(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@compare_group.command("run", short_help="Run (or resume) a comparison.")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("--questions", "golden", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Golden set, JSON Lines: question, answers, optional gold (source paths or ids) or passage_id.")
@click.option("-m", "--model", "models", multiple=True, required=True, help="A model to compare (repeat -m).")
@click.option("-s", "--strategy", default="auto", show_default=True,
              help="auto (the planner decides, as ask does), stuff, retrieve, or a list: stuff,retrieve.")
@click.option("--sample", type=COUNT, default=None, help="Answer N questions drawn with a fixed seed.")
@click.option("--tasks-per-day", type=click.IntRange(0), default=1000, show_default=True, help="Volume for $/day and $/month.")
@click.option("--task", "task_label", type=Label(), default="qa", show_default=True, help="Task label --save files the accuracy under.")
@click.option("--max-cost", type=USD, default=5.0, show_default=True,
              help="Refuse to start if the estimated cost (USD, every answer at full length) is higher.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default ragkit-compare/CORPUS-NAME). Re-running into it resumes.")
@click.option("--concurrency", type=COUNT, default=None, help="Parallel calls per model (default: local 1, anthropic 4, openai 8).")
@BASE_URL_OPTION
@RESPONSE_CACHE_OPTION
@click.option("-d", "--index-dir", type=click.Path(file_okay=False), default=None, help="Index folder (retrieve).")
@click.option("--judge", default=None, metavar="MODEL",
              help="Grade answers with this model (LLM-as-judge, for free-form references) instead of exact match; "
                   "cached, its cost counted apart (task compare:judge).")
@click.option("--save", is_flag=True, help="Write each model's measured accuracy into your overrides (routing reads it).")
@click.option("--overrides", type=click.Path(dir_okay=False), default=None,
              help="Overrides file for --save (default: your user models.toml).")
@click.option("--schema", default=None,
              help="Structured answers: a JSON Schema file or shorthand ('title str, year int | null'); the report "
                   "adds schema-valid rates, repairs and field accuracy against each line's \"reference\".")
@NO_PROGRESS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run_cmd(corpus, golden, models, strategy, sample, tasks_per_day, task_label, max_cost, out, concurrency, base_url,
            cache_path, index_dir, judge, schema, save, overrides, no_progress, as_json):
    """Compare models on your questions (see `ragkit compare --help`)."""
    from ragkit.evals.cache import ResponseCache
    from ragkit.compare import run_compare

    out_dir = Path(out) if out else Path("ragkit-compare") / Path(corpus).resolve().name
    result = run_compare(corpus, golden, models, out_dir, strategies=_strategies(strategy), sample=sample,
                         tasks_per_day=tasks_per_day, task_label=task_label, max_cost_usd=max_cost,
                         concurrency=concurrency, base_url=base_url, cache=ResponseCache(cache_path),
                         index_dir=index_dir, progress=not no_progress and not as_json,
                         echo=lambda m: click.echo(m, err=True), judge=judge, schema=schema)
    summary = _finish(out_dir, result.to_dict(), save=save, overrides=overrides, as_json=as_json)
    dead = [g for g in summary["groups"] if g["failed"] and not g["n"]]
    if dead:  # a comparison with a model that never answered is not a comparison: a script must see it
        from ragkit.console import warn
        from ragkit.evals.records import plural

        for g in dead:
            warn(f"{g['label']} failed on every question ({plural(g['failed'], 'failure')}); its errors are in "
                 f"{out_dir / 'results.jsonl'}. Fix the cause and run the same command again to retry them.")
        raise SystemExit(1)


@compare_group.command("report", short_help="Re-render a comparison's report; calls no model.")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--tasks-per-day", type=click.IntRange(0), default=None, help="Re-project $/day and $/month at this volume.")
@click.option("--save", is_flag=True, help="Write each model's measured accuracy into your overrides.")
@click.option("--overrides", type=click.Path(dir_okay=False), default=None, help="Overrides file for --save.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report_cmd(out_dir, tasks_per_day, save, overrides, as_json):
    """Re-renders report.md, summary.json and the plots from the folder's results.jsonl."""
    _finish(Path(out_dir), None, save=save, overrides=overrides, as_json=as_json, tasks_per_day=tasks_per_day)


def _finish(out_dir: Path, run: dict | None, *, save: bool, overrides, as_json: bool, tasks_per_day=None) -> dict:
    from ragkit.evals.compare_report import render_compare
    from ragkit.evals.records import plural

    if tasks_per_day is not None and tasks_per_day < 0:
        raise InputError("--tasks-per-day cannot be negative.")
    summary = render_compare(out_dir, tasks_per_day)
    saved = save_accuracies(summary, Path(overrides) if overrides else None) if save else None
    if as_json:
        click.echo(json.dumps({"out_dir": str(out_dir), "run": run, "summary": summary, "saved": saved},
                              indent=2, ensure_ascii=False))
        return summary
    if run:
        click.echo(f"{plural(run['calls_made'], 'call')} made, {run['failed']} failed, ${run['cost_usd']:.4f} paid, "
                   f"{run['wall_s']:.1f} s.")
    for g in summary["groups"]:
        acc = "-" if g["accuracy"] is None else f"{100 * g['accuracy']:.1f}% ({100 * g['low']:.1f}–{100 * g['high']:.1f})"
        cost = "-" if g["cost_per_task_usd"] is None else f"${g['cost_per_task_usd']:.6f}/task, ${g['cost_per_month_usd']:,.2f}/month"
        click.echo(f"{g['label']}: accuracy {acc} over {plural(g['n'], 'question')}, {cost}")
    for v in summary["verdicts"]:
        click.echo(v["sentence"])
    click.echo(f"Report: {out_dir / 'report.md'}")
    for s in saved or []:
        click.echo(f"Saved {s['model']}'s accuracy on {s['task']} ({100 * s['accuracy']:.1f}%, n={s['n']}) to {s['path']}.")
    return summary


def save_accuracies(summary: dict, path: Path | None) -> list[dict]:
    """Each model's measured accuracy (auto strategy when it ran, else the first) into the overrides."""
    import datetime as _dt

    from ragkit.models import save_accuracy_override

    chosen: dict[str, dict] = {}
    for g in summary["groups"]:
        if g["accuracy"] is None:
            continue
        if g["model"] not in chosen or (g["strategy"] == "auto" and chosen[g["model"]]["strategy"] != "auto"):
            chosen[g["model"]] = g
    saved = []
    for model, g in chosen.items():
        measured = {"accuracy": round(g["accuracy"], 4), "n": g["n"], "low": round(g["low"], 4),
                    "high": round(g["high"], 4), "date": _dt.date.today().isoformat(),
                    "golden": f"sha256:{summary['golden_sha256']}", "strategy": g["strategy"],
                    "source": "measured: ragkit compare"}
        written = save_accuracy_override(model, summary["task"], measured, path)
        saved.append({"model": model, "task": summary["task"], "path": str(written), **measured})
    return saved


def register(group: click.Group) -> None:
    group.add_command(compare_group)
