"""The `ragkit` command line: a thin layer over the library, split by command group."""
from __future__ import annotations

import sys

import click

from ragkit.console import safe_path
from ragkit.errors import RagkitError
from ragkit.redact import redact


class _Group(click.Group):
    """Prints a RagkitError as one clear line and exits 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RagkitError as exc:
            click.echo(f"Error: {safe_path(redact(str(exc)))}", err=True)   # one line, even with a file name in it
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="ragkit")
def main():
    """ragkit: stuff documents when they fit a model's practical context limit, retrieve when they don't."""


from ragkit.cli import foundation, index, ask, evals  # noqa: E402  (each registers its commands)

for _module in (foundation, index, ask, evals):
    _module.register(main)
