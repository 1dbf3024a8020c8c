"""CLI: `ragkit route CORPUS "question"`: which model would answer, and why each candidate was kept or dropped."""
from __future__ import annotations

import json

import click

from ragkit.cli.index import INDEX_DIR_OPTION
from ragkit.cli.params import FRACTION, SECONDS


@click.command("route", short_help="Pick the model for a question: policy, quality floor, latency, cost.")
@click.argument("path", type=click.Path(exists=True))
@click.argument("question")
@click.option("--task", default="qa", show_default=True, help="Task type in the routing policy.")
@click.option("--floor", type=FRACTION, default=None, help="Minimum measured accuracy ([router] floor).")
@click.option("--max-ttft", "max_ttft_s", type=SECONDS, default=None, help="Latency bound in seconds ([router] max_ttft_s).")
@click.option("--explain", is_flag=True, help="Print every candidate with why it was kept or dropped.")
@INDEX_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def route(path, question, task, floor, max_ttft_s, explain, index_dir, as_json):
    """Decide which model answers QUESTION on PATH: the task's candidates (the article's selection matrix,
    or [router] in ragkit.toml), minus those measured under the floor (`ragkit compare --save`) or over the
    latency bound, each planned on this corpus; the cheapest wins and the others are its fallbacks.

    \b
    Examples:
      ragkit route docs/ "what is X?" --task qa --floor 0.85 --explain
      ragkit ask docs/ "what is X?" -m auto --floor 0.85
    """
    from ragkit.answer import Session
    from ragkit.route import decide

    with Session(path, index_dir=index_dir) as session:   # its ledger: today's spend, for the daily budget
        decision = decide(session, question, task=task, floor=floor, max_ttft_s=max_ttft_s)
    if as_json:
        click.echo(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
        return
    lines = decision.explain()
    click.echo("\n".join(lines if explain or decision.chosen is None else lines[-1:]))  # none: say why
    if decision.chosen is None:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(route)
