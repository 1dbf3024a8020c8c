"""The CLI's surface: one meaning per short flag across every command, and help that is not cut mid-phrase."""
from __future__ import annotations

from collections import defaultdict

import click
import pytest
from click.testing import CliRunner

from ragkit.cli import main


def _commands(command: click.Command, path: str = "ragkit"):
    """Every command under `ragkit`, nested groups included, as (path, command)."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def _flag_pairs():
    """(command path, short flag or None, long names) for every option of every command."""
    for path, command in _commands(main):
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            names = param.opts + param.secondary_opts
            longs = tuple(sorted(n for n in names if n.startswith("--")))
            shorts = [n for n in names if not n.startswith("--")]
            assert len(shorts) <= 1, f"{path}: {names} has several short flags"
            yield path, (shorts[0] if shorts else None), longs


def test_every_short_flag_means_one_long_option_everywhere():
    meanings = defaultdict(lambda: defaultdict(list))  # short -> long names -> commands
    for path, short, longs in _flag_pairs():
        if short:
            meanings[short][longs].append(path)
    clashes = {short: dict(by_long) for short, by_long in meanings.items() if len(by_long) > 1}
    assert not clashes, f"short flags with more than one meaning: {clashes}"


def test_a_long_option_has_the_same_short_flag_wherever_it_appears():
    shorts = defaultdict(lambda: defaultdict(list))  # long names -> short (or None) -> commands
    for path, short, longs in _flag_pairs():
        for long in longs:
            shorts[long][short].append(path)
    uneven = {long: dict(by_short) for long, by_short in shorts.items() if len(by_short) > 1}
    assert not uneven, f"long options whose short flag differs between commands: {uneven}"


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("group", [[], ["eval"]])
def test_command_summaries_are_whole_sentences(group, width):
    result = CliRunner().invoke(main, [*group, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:", 1)[1]
    summaries = " ".join(line.strip() for line in commands.splitlines())
    assert "..." not in summaries, result.output
    for path, command in _commands(main):
        if path.count(" ") >= 1:  # listed by its group: its summary must be written, not cut
            assert command.get_short_help_str(limit=30).endswith("."), path
