"""Helpers several test files share (fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "corpora" / "nq-wiki-sample"      # the bundled sample corpus (7 NQ passages)


def run(args) -> tuple[int, str, str]:
    """`ragkit ARGS` in this process: (exit code, stdout, stderr)."""
    from ragkit.cli import main

    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr
