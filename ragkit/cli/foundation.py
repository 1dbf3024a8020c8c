"""CLI commands that start fast: models, count, plan, cost (no torch, faiss or SDK imports)."""
from __future__ import annotations

import json

import click

from ragkit import config
from ragkit.cli.index import INDEX_DIR_OPTION

# The one -m option of every command: the default (and $RAGKIT_MODEL) come from ragkit.config.
MODEL_OPTION = click.option("-m", "--model", default=config.default_model,
                            show_default=f"$RAGKIT_MODEL, else {config.DEFAULT_MODEL}",
                            help="Model id or alias (see `ragkit models`).")

# Options the commands that call models in bulk (eval, compare) share, defined once so they stay alike.
BASE_URL_OPTION = click.option("-u", "--base-url", default=None,
                               help="OpenAI/Anthropic-compatible endpoint to call instead.")
RESPONSE_CACHE_OPTION = click.option(
    "--cache", "cache_path", type=click.Path(dir_okay=False), default=None,
    help="Response cache (SQLite). Default ~/.cache/ragkit/eval-cache.sqlite or $RAGKIT_EVAL_CACHE.")
NO_PROGRESS_OPTION = click.option("-q", "--quiet", "--no-progress", "no_progress", is_flag=True,
                                  help="No progress bar.")


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _k(n: int) -> str:
    """128000 -> 128K, 16384 -> 16K, 1000000 -> 1M: the way model cards write sizes."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1000:
        return f"{n / 1000:.0f}K" if n % 1000 == 0 or n % 1024 else f"{n // 1024}K"
    return str(n)


def _console():
    from rich.console import Console

    console = Console()
    # Piped output has no width to fit: don't squeeze tables into rich's 80-column default.
    return console if console.is_terminal else Console(width=120)


@click.command(short_help="List models: limits, prices, latency, tokenizer.")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def models(as_json):
    """List models: context window, practical limit, prices, latency, tokenizer.

    \b
    Examples:
      ragkit models
      ragkit models --json
    A figure marked * is a documented default, not a measurement; override it in ./ragkit.toml.
    """
    from ragkit.models import list_models

    specs = list_models()
    if as_json:
        _echo_json([s.to_dict() for s in specs])
        return
    from rich.table import Table

    table = Table(title="ragkit models", title_justify="left")
    for col, just in [("id", "left"), ("window", "right"), ("practical", "right"), ("max out", "right"),
                      ("$in/1M", "right"), ("$out/1M", "right"), ("TTFT", "right"), ("tok/s", "right"),
                      ("tokens", "left")]:
        table.add_column(col, justify=just, no_wrap=True)
    for s in specs:
        star, latency_star = ("*" if default else "" for default in (s.limit_is_default, s.latency_is_default))
        practical = f"{_k(s.practical_limit_tokens)}{star}"
        if s.practical_low_tokens != s.practical_high_tokens:
            practical += f" ({_k(s.practical_low_tokens)[:-1]}-{_k(s.practical_high_tokens)})"
        if s.limit_is_measured:
            practical += " measured"
        enc = s.encoding.removesuffix("_base")
        tokens = enc if s.exact_tokens else f"~{enc} +{s.token_margin:.0%}"
        table.add_row(s.id, _k(s.context_window_tokens), practical, _k(s.max_output_tokens),
                      f"{s.input_usd_per_mtok:.2f}", f"{s.output_usd_per_mtok:.2f}", f"{s.ttft_s:g}s{latency_star}",
                      f"{s.tokens_per_s:g}{latency_star}", tokens)
    console = _console()
    console.print(table)
    console.print("* a documented default, not a measurement (`ragkit models --json` gives each reason); "
                  "~ counts are estimates, planned with the margin shown.")


@click.command(short_help="Count a file or folder in a model's tokens.")
@click.argument("path", type=click.Path())
@MODEL_OPTION
@click.option("-i", "--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("-x", "--exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option("-f", "--text-field", default="text", show_default=True, help="JSON Lines field holding the text.")
@click.option("--no-cache", is_flag=True, help="Recount every document (ignore the content-hash cache).")
@click.option("--exact", is_flag=True, help="Ask the model's count-tokens API (Anthropic; needs the key): one call per file.")
@click.option("-u", "--base-url", default=None, help="API endpoint for --exact (else the registry's / the SDK's).")
@click.option("--json", "as_json", is_flag=True, help="Print per-file and total counts as JSON.")
def count(path, model, include, exclude, text_field, no_cache, exact, base_url, as_json):
    """Count a file or folder in a model's tokens, per file and in total.

    \b
    Examples:
      ragkit count corpora/nq-wiki --model gpt-4o
      ragkit count docs/ -m claude-3.5-sonnet --json
      ragkit count docs/ -m claude-3.5-sonnet --exact      # Claude's own count, via the API
    Exact for OpenAI models; for the others an estimate, with the margin the planner adds.
    """
    from ragkit.counting import count_path

    result = count_path(path, model, include=include, exclude=exclude, text_field=text_field,
                        use_cache=not no_cache, exact_api=exact, base_url=base_url)
    if as_json:
        _echo_json(result.to_dict())
        return
    from rich.markup import escape
    from rich.table import Table

    from ragkit.console import safe_path

    table = Table(show_footer=True, title=f"{escape(safe_path(result.path))} in {result.model} tokens", title_justify="left")
    table.add_column("file", footer="total")
    table.add_column("documents", justify="right", footer=f"{result.documents:,}")
    table.add_column("tokens", justify="right", footer=f"{result.tokens:,}")
    for f in result.files:
        table.add_row(escape(safe_path(f.source)), f"{f.documents:,}", f"{f.tokens:,}")  # a name is not markup
    console = _console()
    console.print(table)
    if exact:
        console.print(f"Exact: counted by {result.model}'s {result.encoding}.")
    elif result.exact:
        console.print(f"Exact: {result.encoding} is {result.model}'s own tokenizer.")
    else:
        console.print(f"Estimate: {result.model}'s tokenizer is not public; counted with {result.encoding}. "
                      f"The planner adds a {result.margin:.0%} margin: {result.planning_tokens:,} tokens.")


@click.command(short_help="Decide stuff or retrieve, say why and the cost.")
@click.argument("path", type=click.Path(), required=False)
@MODEL_OPTION
@click.option("--question", default="", help="The question (its tokens are reserved).")
@click.option("--answer-tokens", type=int, default=None, help="Tokens reserved for the answer [default: 1024, or the model's max output].")
@click.option("-s", "--strategy", type=click.Choice(["stuff", "retrieve"]), default=None,
              help="Plan a forced strategy, as `ragkit ask -s` would (default: the planner decides).")
@click.option("--corpus-tokens", type=int, default=None, help="Plan for this many tokens instead of reading PATH.")
@click.option("-i", "--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("-x", "--exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option("-f", "--text-field", default=None, help="JSON Lines field holding the text [default: text, or the index's].")
@INDEX_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(path, model, question, answer_tokens, strategy, corpus_tokens, include, exclude, text_field, index_dir,
         as_json):
    """Decide stuff or retrieve for a corpus and model, say why and what a query costs.

    The plan is the one `ragkit ask` follows: the documents are read and counted in their source
    fences exactly as ask sends them.

    \b
    Examples:
      ragkit plan corpora/nq-wiki --model gpt-4o --question "who wrote On the Origin of Species?"
      ragkit plan --corpus-tokens 120000 -m claude-3.5-sonnet --json
    """
    from ragkit.errors import InputError

    if corpus_tokens is not None:
        from ragkit.budget import plan as make_plan

        p = make_plan(model, corpus_tokens=corpus_tokens, question=question, answer_tokens=answer_tokens,
                      strategy=strategy)
    elif path is None:
        raise InputError("give a PATH to a file or folder, or --corpus-tokens N.")
    else:
        from ragkit.answer import Session
        from ragkit.corpus import Corpus

        corpus = Corpus.open(path, index_dir=index_dir, include=include, exclude=exclude, text_field=text_field)
        with Session(path, model=model, corpus=corpus, ledger=False) as session:
            p = session.plan(question, answer_tokens=answer_tokens, strategy=strategy)
    if p.warning:
        from ragkit.console import warn

        warn(p.warning)
    if as_json:
        _echo_json(p.to_dict())
        return
    est = "" if p.exact else f" (estimated, {p.encoding} + margin)"
    click.echo(f"strategy:        {p.strategy}{' (forced)' if p.forced else ''}")
    docs = f" in {p.documents:,} documents, {p.stuffed_tokens:,} in their source fences" if p.documents else ""
    click.echo(f"corpus:          {p.corpus_tokens:,} tokens{docs}{est}")
    click.echo(f"practical limit: {p.practical_limit_tokens:,} tokens ({p.limit_source})")
    click.echo(f"reserve:         {p.reserve_tokens:,} = instructions {p.instructions_tokens:,} + question "
               f"{p.question_tokens:,} + answer {p.answer_tokens:,}")
    click.echo(f"context budget:  {p.budget_tokens:,} tokens")
    click.echo(f"per query:       at most {p.estimated_input_tokens:,} input tokens and ${p.estimated_cost_usd:.4f}")
    click.echo(f"why:             {p.reason}")


def parse_count(text: str) -> int:
    """10M, 2k, 1.5M, 250000 -> a whole number."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*", str(text))
    if not m:
        raise click.BadParameter(f"{text!r}: write a number like 250000, 2k or 10M.")
    return round(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()])


@click.command(short_help="Cost per day and month of a token volume.")
@click.option("-m", "--model", default=None,
              help="Model id or alias (default: $RAGKIT_MODEL, else every registry model, cheapest first).")
@click.option("--tokens-per-day", default=None, help="Total tokens per day (input + output), e.g. 10M or 250k.")
@click.option("--tasks-per-day", default=None,
              help="Tasks per day, priced at the tokens per task measured in your ledger (e.g. 5k).")
@click.option("--task", "task_label", default=None, help="With --tasks-per-day: only ledger rows of this task label.")
@click.option("--input-share", type=float, default=0.75, show_default=True, help="Fraction of tokens that are input.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cost(model, tokens_per_day, tasks_per_day, task_label, input_share, as_json):
    """Cost per day and per 30-day month of a daily token volume, or of a number of tasks.

    \b
    Examples:
      ragkit cost --tokens-per-day 10M                               # every model, cheapest first
      ragkit cost -m gpt-4o --tokens-per-day 10000000                # $43.75/day at 75% input
      ragkit cost -m gemini-2.0-flash --tokens-per-day 2M --input-share 0.6
      ragkit cost --tasks-per-day 5k --task ask                      # tokens per task from your ledger
    """
    from ragkit.costs import task_cost, volume_cost
    from ragkit.errors import InputError
    from ragkit.models import list_models

    if (tokens_per_day is None) == (tasks_per_day is None):
        raise InputError("give --tokens-per-day (e.g. 10M) or --tasks-per-day (e.g. 5k), one of them.")
    model = model or config.env_model()   # $RAGKIT_MODEL still sets the model of every command
    models = [model] if model else [m.id for m in list_models()]
    if tokens_per_day is not None:
        rows = [volume_cost(m, parse_count(tokens_per_day), input_share) for m in models]
    else:
        from ragkit.ledger import Ledger

        calls = [e for e in Ledger().entries() if task_label is None or e.task == task_label]
        if not calls:
            raise InputError(f"the cost ledger has no calls{f' labelled {task_label!r}' if task_label else ''} to "
                             "measure tokens per task; use --tokens-per-day, or run some questions first.")
        rows = [task_cost(m, parse_count(tasks_per_day), calls) for m in models]
    rows.sort(key=lambda v: v.cost_per_day_usd)
    if as_json:
        _echo_json(rows[0].to_dict() if model else [v.to_dict() for v in rows])
        return
    for v in rows:
        click.echo(f"{v.model}: {v.tokens_per_day:,} tokens/day ({v.input_tokens_per_day:,} in, "
                   f"{v.output_tokens_per_day:,} out) = ${v.cost_per_day_usd:,.2f}/day, ${v.cost_per_month_usd:,.2f}/month")


def register(group: click.Group) -> None:
    """Adds this module's commands to the top-level group."""
    for command in (models, count, plan, cost):
        group.add_command(command)
