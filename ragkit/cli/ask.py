"""CLI commands: ask, costs."""
from __future__ import annotations

import json
import sys

import click

from ragkit.cli.foundation import MODEL_OPTION
from ragkit.cli.index import (INDEX_DIR_OPTION, STORE_OPTION, WHERE_OPTION, embed_backend_option, nprobe_option,
                              rerank_option)
from ragkit.cli.params import FRACTION, SECONDS, USD, Label
from ragkit.costs import usd
from ragkit.retrieve import DEFAULT_TOP_K


CUT_MARK = "[answer cut: the stream ended before the model finished]"


def _print_sources(sources, heading: str) -> None:
    from ragkit.console import safe_path

    click.echo(heading)
    for s in sources:
        title = f" — {s.title}" if s.title else ""
        click.echo(f"  [{s.number}] {safe_path(s.span + title)}")  # names from the folder: one line each


@click.command("ask", short_help="Answer a question from documents, citing them.")
@click.argument("path", type=click.Path(exists=True, dir_okay=True, file_okay=True))
@click.argument("question")
@MODEL_OPTION
@click.option("-u", "--base-url", default=None,
              help="OpenAI/Anthropic-compatible endpoint to use instead of the registry's, "
                   "e.g. http://127.0.0.1:8080/v1 (no key needed for local servers).")
@click.option("--answer-tokens", type=int, default=None, help="Most tokens the answer may use.")
@click.option("-s", "--strategy", type=click.Choice(["stuff", "retrieve"]), default=None,
              help="Force a strategy (default: the planner decides).")
@click.option("-k", "--top-k", type=click.IntRange(1, 10_000), default=DEFAULT_TOP_K, show_default=True,
              help="Chunks retrieval considers before packing the best into the budget.")
@click.option("--order", type=click.Choice(["edges", "document"]), default="edges", show_default=True,
              help="Sources that best match the question first and last (the middle is read least), or file order.")
@click.option("--schema", default=None,
              help="Answer as JSON matching a JSON Schema file, or shorthand like 'name str, year int | null, "
                   "people list[str]'; each field cites its sources. Enforced by the API where it can be.")
@click.option("--dry-run", is_flag=True, help="Print the plan, the exact prompt and its estimated cost; call no model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--stream/--no-stream", default=None, help="Stream the answer as it is written (default: on a terminal).")
@click.option("-t", "--timeout", "timeout_s", type=SECONDS, default=60.0,
              show_default=True, help="Seconds to wait for the model API (above 0).")
@click.option("-r", "--retries", "max_retries", type=click.IntRange(0), default=2, show_default=True,
              help="Retries (with back-off) on 429/5xx/timeouts.")
@INDEX_DIR_OPTION
@click.option("--log-question", is_flag=True,
              help="Store the question text in the cost ledger (by default only its SHA-256).")
@click.option("--no-ledger", is_flag=True, help="Do not record this call in the cost ledger.")
@click.option("--task", "task", type=Label(), default="ask", show_default=True,
              help="Label of this call in the cost ledger (`ragkit costs --by task`).")
@click.option("--max-cost", type=USD, default=None,
              help="Refuse the question if its upper-bound cost (USD) is higher; with -m auto, route under it.")
@click.option("--route-task", default="qa", show_default=True, help="With -m auto: the task type routing uses.")
@click.option("--floor", type=FRACTION, default=None,
              help="With -m auto: minimum measured accuracy (default: [router] floor).")
@embed_backend_option
@STORE_OPTION
@WHERE_OPTION
@nprobe_option
@rerank_option
def ask_command(path, question, model, base_url, answer_tokens, strategy, top_k, order, schema, dry_run, as_json,
                stream, timeout_s, max_retries, index_dir, log_question, no_ledger, task, max_cost, route_task, floor,
                embed_backend, store, where, nprobe, rerank):
    """Answer QUESTION from the documents under PATH, citing them.

    The planner stuffs the whole documents when they fit the model's practical limit and
    retrieves the relevant chunks otherwise; the answer cites sources like [2].

    \b
    Examples:
      ragkit ask corpora/nq-wiki-sample "who wrote the origin of species" -m gpt-4o-mini
      ragkit ask docs/ "how do I rotate keys?" -m claude-3.5-haiku --json
      ragkit ask docs/ "what is X?" -m llama-3.1-70b -u http://127.0.0.1:8080/v1
      ragkit ask docs/ "what is X?" -m qwen2.5-coder-0.5b-local     # embedded, no key, no network
      ragkit ask docs/ "what is X?" --dry-run                       # plan + exact prompt + cost
      ragkit ask docs/ "what is X?" --task support-bot              # its label in `ragkit costs --by task`
      ragkit ask docs/ "the book's title and year" --schema 'title str, year int | null'
      ragkit ask docs/ "what is X?" -m auto --floor 0.85            # cheapest model that clears the floor
    """
    from ragkit.answer import Session

    session = Session(path, model=model, base_url=base_url, timeout_s=timeout_s, max_retries=max_retries,
                      index_dir=index_dir, ledger=not no_ledger, log_question=log_question, task=task,
                      progress=sys.stderr.isatty(), embed_backend=embed_backend, store=store, where=where,
                      nprobe=nprobe, rerank=rerank)
    try:
        if dry_run:
            prepared = session.prepare(question, answer_tokens=answer_tokens, strategy=strategy, top_k=top_k,
                                       order=order, schema=schema)
            _warn_if_stale(prepared.index)
            _warn(prepared.plan)
            if as_json:
                click.echo(json.dumps(prepared.to_dict(), indent=2, ensure_ascii=False))
            else:
                _print_dry_run(prepared)
            return
        if stream is None:
            stream = sys.stdout.isatty()
        streamed = bool(stream and not as_json and schema is None)  # no partial JSON that looks like a result

        printed = []

        def echo_delta(text: str) -> None:
            printed.append(text)
            click.echo(text, nl=False)
            sys.stdout.flush()

        try:
            answer = session.ask(question, answer_tokens=answer_tokens, strategy=strategy, top_k=top_k, order=order,
                                 on_text=echo_delta if streamed else None, schema=schema, max_cost_usd=max_cost,
                                 task=route_task, floor=floor)
        except BaseException:
            if printed:  # the reader already saw part of an answer: say it is not one
                click.echo()
                click.echo(CUT_MARK, err=True)
            raise
    finally:
        session.close()
    _warn_if_stale(answer.index)
    _warn(answer.plan)
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    if answer.citations is not None:
        _print_structured(answer)
    elif streamed:
        click.echo("\n")
    else:
        click.echo(answer.answer + "\n")
    if answer.citations is not None:
        pass  # each field's sources were printed with the object
    elif answer.sources:
        _print_sources(answer.sources, "Sources:")
    else:
        click.echo(f"Sources: none cited ({len(answer.context)} sent)")
    p = answer.plan
    click.echo(f"Strategy: {answer.strategy} — {p.reason}")
    estimated = "" if answer.usage.reported else " (estimated: the endpoint reported no usage)"
    click.echo(f"Tokens: {answer.usage.input_tokens:,} in, {answer.usage.output_tokens:,} out{estimated}")
    click.echo(f"Cost: {usd(answer.cost_usd)} ({answer.model}, API model {answer.api_model})")
    if answer.route:
        click.echo(f"Routed: {answer.route['answered_by']} — {answer.route['why']}")
    click.echo(f"Latency: {answer.latency_s:.2f} s (first token {answer.ttft_s:.2f} s; "
               f"planning and retrieval {answer.prepare_s:.2f} s)")


def _print_structured(answer) -> None:
    """The validated object, then each field's sources, then how the schema was enforced."""
    click.echo(json.dumps(answer.to_dict()["answer"], indent=2, ensure_ascii=False))
    click.echo()
    click.echo("Sources per field:")
    for name, refs in answer.citations.items():
        cited = "; ".join(f"[{s.number}] {s.span}" for s in refs) or "none cited"
        click.echo(f"  {name}: {cited}")
    for name, numbers in (answer.dropped_citations or {}).items():
        click.echo(f"ragkit: warning: dropped citations of {name} to sources that were not sent: "
                   f"{', '.join(map(str, numbers))}", err=True)
    repairs = f", {answer.repairs} repair round-trip" if answer.repairs else ""
    click.echo(f"Schema: valid (enforcement: {answer.enforcement}{repairs}; {answer.calls} call"
               f"{'' if answer.calls == 1 else 's'})")


def _warn_if_stale(index) -> None:
    """An answer from an index another process is still updating says so (also in --json's "index")."""
    if index is not None and index.note:
        from ragkit.console import warn

        warn(index.note)


def _warn(plan) -> None:
    """Stuffing forced past the practical limit says so (also in --json's "plan")."""
    if plan.warning:
        from ragkit.console import warn

        warn(plan.warning)


def _print_dry_run(prepared) -> None:
    p = prepared.plan
    click.echo(f"Model: {prepared.model}")
    click.echo(f"Strategy: {p.strategy} — {p.reason}")
    click.echo(f"Sources sent: {len(prepared.context)} "
               f"(budget {p.budget_tokens:,} tokens of the practical limit {p.practical_limit_tokens:,})")
    approx = "" if p.exact else f" (estimated with {p.encoding}; {prepared.estimated_input_tokens:,} with margin)"
    click.echo(f"Prompt tokens: {prepared.input_tokens:,}{approx}; answer up to {p.answer_tokens:,}")
    click.echo(f"Estimated cost: at most {usd(prepared.estimated_cost_usd)} per question")
    click.echo(f"Prepared in {prepared.prepare_s:.2f} s")
    click.echo("\n===== system =====")
    click.echo(prepared.system)
    click.echo("===== user =====")
    click.echo(prepared.user)
    click.echo("===== end =====")


@click.command("costs", short_help="Summarise recorded calls: tokens, cost, latency.")
@click.option("--since", default=None, help="Window: 7d, 24h, 2w, 30m or a date like 2026-11-01 (default: all).")
@click.option("--by", "by", type=click.Choice(["model", "day", "task"]), default="model", show_default=True,
              help="Group rows by model, day (UTC) or task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def costs_command(since, by, as_json):
    """Summarise recorded model calls (ask, eval, ...): calls, tokens, cost, USD per call and median
    latency per model, day or task, and the monthly projection.

    \b
    Examples:
      ragkit costs
      ragkit costs --since 7d --by day
      ragkit costs --by task --json
    """
    from ragkit.ledger import Ledger

    summary = Ledger().summary(since=since, by=by)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    window = f"since {summary.since[:16].replace('T', ' ')} UTC" if summary.since else "all recorded calls"
    click.echo(f"Ledger: {summary.path}")
    if not summary.calls:
        click.echo(f"No calls recorded {window}." if summary.since else "No calls recorded yet.")
        return
    click.echo(f"{summary.calls:,} call{'' if summary.calls == 1 else 's'}, {window}: {summary.input_tokens:,} tokens in, "
               f"{summary.output_tokens:,} out, {usd(summary.cost_usd)}")
    from ragkit.console import safe_path

    keys = [safe_path(g.key) for g in summary.groups]   # a label from an older ledger may hold a newline
    width = max(len(by), *map(len, keys))
    click.echo(f"\n{by:<{width}}  {'calls':>7}  {'tokens in':>12}  {'tokens out':>11}  {'cost USD':>12}  "
               f"{'USD/call':>10}  {'p50 s':>7}")
    for key, g in zip(keys, summary.groups):
        click.echo(f"{key:<{width}}  {g.calls:>7,}  {g.input_tokens:>12,}  {g.output_tokens:>11,}  "
                   f"{g.cost_usd:>12.6f}  {g.mean_cost_usd:>10.6f}  {g.p50_latency_s:>7.2f}")
    click.echo(f"\nProjected monthly cost at this rate: {usd(summary.projected_monthly_usd)} "
               f"({usd(summary.cost_usd)} over {summary.rate_days:.1f} days x 30)")


def register(group: click.Group) -> None:
    """Adds this module's commands to the top-level group."""
    group.add_command(ask_command)
    group.add_command(costs_command)
