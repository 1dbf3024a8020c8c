"""CLI commands: `ragkit eval needle|qa|kv|report|suite` (the lost-in-the-middle harness) and
`ragkit eval schema` (structured answers: the malformed rate per model and enforcement)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ragkit.cli.foundation import BASE_URL_OPTION, MODEL_OPTION, NO_PROGRESS_OPTION, RESPONSE_CACHE_OPTION
from ragkit.cli.params import COUNT, FRACTION, PERCENTS, POSITIONS, USD, Sizes
from ragkit.errors import InputError


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


DEFAULT_DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)


def _strategies(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


_FORCE_OPTION = click.option("--force", is_flag=True,
                             help="With --save-limit: save even when the drop below the floor is not significant.")


def common_options(fn):
    """Options every task command shares."""
    options = [
        MODEL_OPTION,
        click.option("--depths", type=PERCENTS, default=None,  # no short flag: -d is --index-dir everywhere
                     help="Depths in percent (0 = start, 100 = end), e.g. 0,25,50,75,100."),
        click.option("-n", "--samples", default=3, show_default=True, type=COUNT, help="Samples per grid cell."),
        click.option("-s", "--strategy", "strategy", default="stuff", show_default=True,
                     help="stuff, retrieve, or both: stuff,retrieve."),
        click.option("--max-cost", default=5.0, show_default=True, type=USD,
                     help="Refuse to start if the estimated cost (USD) is higher."),
        click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder (results.jsonl, report.md, plots). Default ragkit-evals/TASK-MODEL. "
                          "Re-running into it resumes."),
        click.option("--max-tokens", default=64, show_default=True, type=COUNT, help="Answer tokens per call."),
        click.option("--concurrency", type=COUNT, default=None,
                     help="Parallel calls (default: local 1, anthropic 4, openai 8)."),
        BASE_URL_OPTION,
        RESPONSE_CACHE_OPTION,
        click.option("--retrieve-budget", type=COUNT, default=None,
                     help="Tokens to pack for `retrieve` (default: the planner's budget for the model)."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated samples."),
        click.option("--floor", type=FRACTION, default=None,
                     help="Absolute accuracy floor for the limit (default: 90% of the shortest length's)."),
        click.option("--save-limit", is_flag=True,
                     help="Write the measured limit into your model overrides (used by `ragkit plan`)."),
        _FORCE_OPTION,
        click.option("--overrides", type=click.Path(dir_okay=False), default=None,
                     help="Overrides file for --save-limit (default: your user models.toml)."),
        NO_PROGRESS_OPTION,
        click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run(task_name: str, task_options: dict, *, model, lengths, depths, samples, strategy, max_cost, out,
         max_tokens, concurrency, base_url, cache_path, retrieve_budget, seed, floor, save_limit, force, overrides,
         no_progress, as_json, stuff_order="document"):
    from ragkit.evals.cache import ResponseCache
    from ragkit.evals.report import render_report
    from ragkit.evals.runner import GridSpec, run_grid
    from ragkit.evals.tasks import make_task
    from ragkit.models import get_model

    spec = get_model(model)
    task = make_task(task_name, seed=seed, **task_options)
    grid = GridSpec(task=task_name, model=spec.id, lengths=lengths, depths=depths, samples=samples,
                    strategies=_strategies(strategy), max_tokens=max_tokens, retrieve_budget_tokens=retrieve_budget,
                    stuff_order=stuff_order,
                    task_options={k: str(v) if isinstance(v, Path) else v for k, v in task_options.items()})
    out_dir = Path(out) if out else Path("ragkit-evals") / f"{task_name}-{spec.id}"
    echo = (lambda m: click.echo(m, err=True))
    result = run_grid(task, grid, out_dir, base_url=base_url, cache=ResponseCache(cache_path),
                      max_cost_usd=max_cost, concurrency=concurrency, progress=not no_progress and not as_json,
                      echo=echo, render=False)
    summary = render_report(out_dir, floor=floor)
    _finish(out_dir, summary, result.to_dict(), floor=floor, save_limit=save_limit, force=force,
            overrides=overrides, as_json=as_json)


def _finish(out_dir: Path, summary: dict, run: dict | None, *, floor, save_limit, force=False, overrides,
            as_json) -> None:
    def save() -> dict | None:
        if not save_limit:
            return None
        from ragkit.evals.report import save_measured_limit

        path, tokens, source = save_measured_limit(out_dir, floor=floor, force=force,
                                                   path=Path(overrides) if overrides else None)
        return {"path": str(path), "practical_limit_tokens": tokens, "limit_source": source}

    if as_json:
        _echo_json({"out_dir": str(out_dir), "run": run, "summary": summary, "saved_limit": save()})
        return
    from ragkit.evals.records import plural

    limit = summary.get("limit") or {}
    if run:
        click.echo(f"{plural(run['calls_made'], 'call')} made, {run['failed']} failed, ${run['cost_usd']:.4f} paid, "
                   f"{run['wall_s']:.1f} s.")
    for strategy, s in summary["strategies"].items():
        acc = s["overall"]["accuracy"]
        click.echo(f"{strategy}: accuracy {'-' if acc is None else f'{acc:.2f}'} over "
                   f"{plural(s['overall']['n'], 'scored call')}")
    if limit.get("length") is not None:
        # One number: the planner's (the prompt as the model counted it); documents for paper-style QA runs.
        size = (f"{limit['practical_limit_tokens']:,} tokens" if limit.get("practical_limit_tokens")
                else plural(limit["length"], "document"))
        click.echo(f"Measured practical limit: {size} (floor {limit['floor']:.2f}, {limit['floor_rule']}).")
    elif limit:
        click.echo(f"No tested length stays above the floor {limit['floor']:.2f}.")
    if limit.get("retrieve_overtakes_at") is not None:
        click.echo(f"Retrieve overtakes stuff at {limit['retrieve_overtakes_at']:,} {limit['length_unit']}.")
    click.echo(f"Report: {out_dir / 'report.md'}")
    saved = save()  # after the summary: a refusal still shows what was measured
    if saved:
        click.echo(f"Saved it to {saved['path']}; `ragkit models` marks it measured.")


def _needles(needle, question, answer):
    from ragkit.evals.tasks import Needle

    if not needle:
        if question or answer:
            raise InputError("--question/--answer go with --needle: give all three")
        return ()
    if not (len(needle) == len(question) == len(answer)):
        raise InputError("give one --question and one --answer for each --needle")
    return tuple(Needle(n, q, (a,)) for n, q, a in zip(needle, question, answer))


@click.group("eval", short_help="Measure accuracy by context length and position.")
def eval_group():
    """Measure accuracy by context length and position (lost in the middle) on your model and data.

    \b
    Examples:
      ragkit eval needle -m gpt-4o-mini --lengths 2k,8k,32k --depths 0,25,50,75,100
      ragkit eval qa -m gpt-4o-mini --docs 10,20,30 --positions 0,4,9,14,19,24,29
      ragkit eval kv -m gpt-4o-mini --lengths 2k,8k --strategy stuff,retrieve
      ragkit eval report ragkit-evals/needle-gpt-4o-mini
      ragkit eval suite lost-in-the-middle -m gpt-4o-mini
      ragkit eval schema -m local -n 100 --enforcement native,validated
    """


@eval_group.command("needle", short_help="Needle in a haystack at token lengths and depths.")
@common_options
@click.option("-l", "--lengths", type=Sizes(), default="2k,8k,32k", show_default=True, help="Context lengths in tokens.")
@click.option("--corpus", type=click.Path(exists=True), default=None,
              help="Haystack text: a folder or JSONL of your documents (default: the bundled corpus).")
@click.option("--needles", "n_needles", default=1, show_default=True, type=COUNT,
              help="How many default needles to hide (several: scored as the fraction found).")
@click.option("--needle", multiple=True, help="Your own needle sentence (repeatable; with --question, --answer).")
@click.option("--question", multiple=True, help="The question the matching --needle answers.")
@click.option("--answer", multiple=True, help="The answer to the matching --question.")
def needle_cmd(lengths, depths, corpus, n_needles, needle, question, answer, **kw):
    """Needle in a haystack: hide facts at depths in corpus text cut to exact token lengths.

    \b
    Examples:
      ragkit eval needle -m gpt-4o-mini -l 2k,8k,32k --depths 0,25,50,75,100 -n 3
      ragkit eval needle -m local -l 500,1k,2k --depths 0,50,100 -n 2 -s stuff,retrieve
      ragkit eval needle -m gpt-4o --corpus docs/ --needle "The build server is named Orca." \\
          --question "What is the build server named?" --answer Orca --save-limit
    """
    options = {"corpus": corpus, "n_needles": n_needles, "needles": _needles(needle, question, answer)}
    _run("needle", options, lengths=lengths, depths=depths or DEFAULT_DEPTHS, **kw)


@eval_group.command("qa", short_help="Multi-document QA: gold passage among distractors.")
@common_options
@click.option("--docs", type=Sizes(), default="10,20,30", show_default=True,
              help="Documents per prompt (the paper's setting); --depths are then ignored for --positions.")
@click.option("--positions", type=POSITIONS, default="0,4,9,14,19,24,29", show_default=True,
              help="0-based gold positions (those >= the number of documents are skipped).")
@click.option("-l", "--lengths", type=Sizes(), default=None,
              help="Token lengths instead of --docs: pad with distractors to reach each; gold at --depths percent.")
@click.option("--distractors", type=click.Choice(["hard", "random"]), default="hard", show_default=True,
              help="hard: ragkit's nearest passages without an answer (the paper's way); random.")
@click.option("--corpus", type=click.Path(exists=True), default=None, help="Passages (default: bundled nq-wiki).")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Questions JSONL: question, answers, passage_id (default: bundled nq-wiki questions).")
@click.option("--stuff-order", type=click.Choice(["document", "edges"]), default="document", show_default=True,
              help="Stuffed documents as placed (the gold at --positions), or ordered as `ragkit ask --order edges` "
                   "orders them: best matches for the question first and last (--positions is then where the gold "
                   "was before reordering).")
def qa_cmd(docs, positions, lengths, depths, distractors, corpus, questions, stuff_order, **kw):
    """Multi-document QA: the gold passage at a position among distractors (Liu et al. 2023).

    \b
    Examples:
      ragkit eval qa -m gpt-4o-mini --docs 10,20,30 --positions 0,4,9,14,19,24,29 -n 5
      ragkit eval qa -m gpt-4o-mini -l 2k,8k,16k --depths 0,50,100 -s stuff,retrieve --distractors random
    """
    options = {"corpus": corpus, "questions": questions, "distractors": distractors, "by_tokens": bool(lengths)}
    if lengths:
        sizes, where = lengths, depths or DEFAULT_DEPTHS
    else:
        sizes, where = docs, positions
    _run("qa", options, lengths=sizes, depths=where, stuff_order=stuff_order, **kw)


@eval_group.command("kv", short_help="Key-value retrieval: one UUID key in a JSON object.")
@common_options
@click.option("-l", "--lengths", type=Sizes(), default="2k,4k,8k", show_default=True, help="Context lengths in tokens.")
@click.option("--source", type=click.Choice(["bundled", "generated"]), default="bundled", show_default=True,
              help="bundled: the paper's UUID records (more generated to reach long lengths); generated: only seeded UUIDs.")
def kv_cmd(lengths, depths, source, **kw):
    """Key-value retrieval: find one UUID key's value in a JSON object (Liu et al. 2023).

    \b
    Examples:
      ragkit eval kv -m gpt-4o-mini -l 2k,4k,8k --depths 0,25,50,75,100
    """
    _run("kv", {"source": source}, lengths=lengths, depths=depths or DEFAULT_DEPTHS, **kw)


@eval_group.command("schema", short_help="Structured answers: schema-valid rate and field accuracy.")
@click.option("-m", "--model", "models", multiple=True, help="Model id or alias (repeatable; default: $RAGKIT_MODEL).")
@click.option("--enforcement", default="native,validated", show_default=True,
              help="native (the registry's structured_output: local grammar, OpenAI strict/json_mode, Anthropic "
                   "tool), validated (no enforcement: the reply is only validated), or both, comma-separated.")
@click.option("-n", "--samples", "n_tasks", default=100, show_default=True, type=COUNT,
              help="Extraction tasks: NQ passages, each with its question.")
@click.option("--max-chars", default=1200, show_default=True, type=int, help="Each passage cut to this many characters.")
@click.option("--max-tokens", default=80, show_default=True, type=int, help="Output tokens per reply.")
@click.option("--corpus", type=click.Path(exists=True), default=None, help="Passages (default: bundled nq-wiki).")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Questions JSONL: question, answers, passage_id (default: bundled nq-wiki questions).")
@click.option("--max-cost", default=5.0, show_default=True, type=USD,
              help="Refuse to start if the estimated cost (USD) is higher.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (results.jsonl, report.md). Default ragkit-evals/schema-MODEL. Re-running into it resumes.")
@click.option("--concurrency", type=COUNT, default=None, help="Parallel tasks (default: local 1, anthropic 4, openai 8).")
@BASE_URL_OPTION
@RESPONSE_CACHE_OPTION
@NO_PROGRESS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def schema_cmd(models, enforcement, n_tasks, max_chars, max_tokens, corpus, questions, max_cost, out, concurrency,
               base_url, cache_path, no_progress, as_json):
    """Structured answers: how often each model's reply matches a schema, with and without enforcement.

    Extraction tasks from NQ passages ({title, answer, year} with per-field citations), answered through
    the ask path with one repair round-trip; per model and enforcement: schema-valid rate on the first
    reply and after the repair, field accuracy against references from the data, repairs, tokens/s.

    \b
    Examples:
      ragkit eval schema -m local -n 100 --enforcement native,validated
      ragkit eval schema -m gpt-4o-mini -m claude-3.5-haiku -n 50 --enforcement native
    """
    from ragkit import config
    from ragkit.evals.cache import ResponseCache
    from ragkit.evals.extraction import run_schema_eval
    from ragkit.models import get_model

    import shlex

    models = models or (config.default_model(),)
    out_dir = Path(out) if out else Path("ragkit-evals") / f"schema-{'+'.join(get_model(m).id for m in models)}"
    command = shlex.join(["ragkit", "eval", "schema", *(a for m in models for a in ("-m", m)), "-n", str(n_tasks),
                          "--enforcement", enforcement, "--max-chars", str(max_chars), "--max-tokens", str(max_tokens),
                          *(["--cache", cache_path] if cache_path else []), *(["-u", base_url] if base_url else []),
                          "-o", str(out_dir)])
    result = run_schema_eval(models, out_dir, n=n_tasks, enforcement=tuple(e for e in enforcement.split(",") if e.strip()),
                             max_chars=max_chars, max_tokens=max_tokens, corpus=corpus, questions=questions,
                             cache=ResponseCache(cache_path), base_url=base_url, max_cost_usd=max_cost,
                             concurrency=concurrency, progress=not no_progress and not as_json,
                             echo=lambda m: click.echo(m, err=True), render=False, command=command)
    _finish_schema(out_dir, result.to_dict(), as_json)


def _finish_schema(out_dir: Path, run: dict | None, as_json: bool) -> None:
    from ragkit.evals.extraction import render_schema_report

    summary = render_schema_report(out_dir)
    if as_json:
        _echo_json({"out_dir": str(out_dir), "run": run, "summary": summary})
        return
    if run:
        click.echo(f"{run['made']} tasks run now ({run['done']} already done), {run['failed']} failed, "
                   f"${run['cost_usd']:.4f} paid, {run['wall_s']:.1f} s.")
    for label, g in summary["groups"].items():
        rate = lambda r: "-" if r["rate"] is None else f"{100 * r['rate']:.0f}%"  # noqa: E731
        click.echo(f"{label}: schema-valid {rate(g['valid_first'])} on the first reply, "
                   f"{rate(g['valid_after_repair'])} after a repair; field accuracy {rate(g['field_accuracy'])} "
                   f"over {g['n']} tasks; {g['repairs']} repairs.")
    click.echo(f"Report: {out_dir / 'report.md'}")


@eval_group.command("report", short_help="Re-render a run's report; calls no model.")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--floor", type=FRACTION, default=None,
              help="Absolute accuracy floor for the limit (default: 90% of the shortest length's).")
@click.option("--save-limit", is_flag=True, help="Write the measured limit into your model overrides.")
@_FORCE_OPTION
@click.option("--overrides", type=click.Path(dir_okay=False), default=None,
              help="Overrides file for --save-limit (default: your user models.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report_cmd(out_dir, floor, save_limit, force, overrides, as_json):
    """Re-render a run's report (tables, plots, limit) from its results.jsonl; calls no model.

    \b
    Examples:
      ragkit eval report ragkit-evals/needle-gpt-4o-mini
      ragkit eval report evals/reports/needle-qwen2.5-coder-0.5b-local --floor 0.5 --json
    """
    from ragkit.evals.extraction import is_schema_run
    from ragkit.evals.report import render_report

    out = Path(out_dir)
    if is_schema_run(out):
        _finish_schema(out, None, as_json)
        return
    summary = render_report(out, floor=floor)
    _finish(out, summary, None, floor=floor, save_limit=save_limit, force=force, overrides=overrides,
            as_json=as_json)


@eval_group.command("suite", short_help="Run an eval suite (TOML file or bundled name).")
@click.argument("suite")
@MODEL_OPTION
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (one sub-folder per run). Default ragkit-evals/SUITE-MODEL.")
@click.option("--max-cost", default=5.0, show_default=True, type=USD, help="USD cap for the whole suite.")
@click.option("-n", "--samples", type=COUNT, default=None, help="Override the suite's samples per cell.")
@click.option("--concurrency", type=COUNT, default=None, help="Parallel calls (default by provider).")
@BASE_URL_OPTION
@RESPONSE_CACHE_OPTION
@click.option("--list", "list_only", is_flag=True, help="Show the suite's runs and exit.")
@NO_PROGRESS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
def suite_cmd(suite, model, out, max_cost, samples, concurrency, base_url, cache_path, list_only, no_progress,
              as_json):
    """Run an eval suite: a TOML file, or a name from ./evals/ or ragkit's suites.

    \b
    Examples:
      ragkit eval suite lost-in-the-middle -m gpt-4o-mini
      ragkit eval suite litm-paper-qa -m gpt-4o --max-cost 20
      ragkit eval suite my-suite.toml -m local --list
    """
    from ragkit.evals.cache import ResponseCache
    from ragkit.evals.report import render_report
    from ragkit.evals.runner import GridSpec, run_grid
    from ragkit.evals.suites import load_suite
    from ragkit.evals.tasks import make_task
    from ragkit.models import get_model

    s = load_suite(suite)
    if list_only:
        if as_json:
            _echo_json(s.to_dict())
            return
        click.echo(f"{s.name}: {s.description}")
        for r in s.runs:
            click.echo(f"  {r.describe(samples)}")
        return
    spec = get_model(model)
    root = Path(out) if out else Path("ragkit-evals") / f"{s.name}-{spec.id}"
    cache = ResponseCache(cache_path)
    remaining = max_cost
    results = {}
    for r in s.runs:
        click.echo(f"== {s.name}/{r.name}", err=True)
        task = make_task(r.task, **r.options)
        grid = GridSpec(task=r.task, model=spec.id, lengths=r.lengths, depths=r.depths, samples=samples or r.samples,
                        strategies=r.strategies, max_tokens=r.max_tokens, temperature=r.temperature,
                        retrieve_budget_tokens=r.retrieve_budget_tokens, order=r.order, stuff_order=r.stuff_order,
                        task_options=r.options)
        result = run_grid(task, grid, root / r.name, base_url=base_url, cache=cache, max_cost_usd=remaining,
                          concurrency=concurrency, progress=not no_progress and not as_json,
                          echo=lambda m: click.echo(m, err=True), render=False)
        remaining -= result.estimate.cost_usd
        summary = render_report(root / r.name)
        results[r.name] = {"run": result.to_dict(), "summary": summary}
        if not as_json:
            _finish(root / r.name, summary, result.to_dict(), floor=None, save_limit=False, overrides=None,
                    as_json=False)
    if as_json:
        _echo_json({"suite": s.name, "out_dir": str(root), "runs": results})


def register(group: click.Group) -> None:
    """Adds this module's commands to the top-level group."""
    group.add_command(eval_group)
