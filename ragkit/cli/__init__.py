"""The `ragkit` command line: a thin layer over the library, split by command group."""
from __future__ import annotations

import sys

import click

from ragkit.console import safe_path
from ragkit.errors import RagkitError
from ragkit.redact import redact


# What a shell reports for a command stopped by Ctrl-C (128 + SIGINT), so scripts can tell it from a failure.
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Prints a RagkitError as one clear line and exits 1, never a traceback; Ctrl-C exits 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RagkitError as exc:
            click.echo(f"Error: {safe_path(redact(str(exc)))}", err=True)   # one line, even with a file name in it
            sys.exit(1)
        except KeyboardInterrupt:
            # eval and compare append each answer as it comes: the same command resumes where this stopped
            click.echo("ragkit: interrupted; an eval or compare run resumes when run again.", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group)
@click.version_option(package_name="ragkit")
def main():
    """ragkit: stuff documents when they fit a model's practical context limit, retrieve when they don't."""


from ragkit.cli import foundation, index, ask, evals, compare, route  # noqa: E402  (each registers its commands)

for _module in (foundation, index, ask, evals, compare, route):
    _module.register(main)
