"""The CLI's surface: one meaning per short flag across every command, help that is not cut mid-phrase
and names real paths, and messages that read as sentences (no reprs, no "1 calls")."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

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


# ---- help examples, listings and wording -------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
# A repository path in an example: corpora/... or evals/... (ragkit-evals/... is an output folder).
_EXAMPLE_PATH = re.compile(r"(?<![\w./-])((?:corpora|evals)/[\w.\-/]+)")


def test_paths_in_help_examples_exist():
    examples = {}
    for path, command in _commands(main):
        for found in _EXAMPLE_PATH.findall(command.help or ""):
            examples[found] = path
    assert "evals/reports/needle-qwen2.5-coder-0.5b-local" in examples  # the committed report
    missing = {p: cmd for p, cmd in examples.items() if not (ROOT / p).exists()}
    assert not missing, f"help examples name paths that do not exist: {missing}"


def test_suite_list_prints_readable_lines_not_python_reprs():
    result = CliRunner().invoke(main, ["eval", "suite", "lost-in-the-middle", "--list"])
    assert result.exit_code == 0, result.output
    runs = result.output.splitlines()[1:]
    assert runs[0].strip() == "needle (needle): 2K, 8K, 16K, 32K tokens; depths 0%, 25%, 50%, 75%, 100%; " \
                              "3 samples; stuff, retrieve"
    assert "qa-by-length (qa):" in result.output and "distractors hard" in result.output
    for repr_mark in ("[", "{", "'", "=", "0.0"):
        assert repr_mark not in "\n".join(runs), result.output
    paper = CliRunner().invoke(main, ["eval", "suite", "litm-paper-qa", "--list", "-n", "1"]).output
    assert "10, 20, 30 documents; gold positions 0, 4, 9, 14, 19, 24, 29; 1 sample;" in paper


def _write_run(folder: Path, acc: dict, n: int = 10) -> Path:
    """A run folder with hand-made results: n calls per length, `acc` of them right (as test_eval_report)."""
    folder.mkdir()
    lines = []
    for length, a in acc.items():
        for i in range(n):
            lines.append({"call_id": f"stuff/L{length}/D50/S{i}", "task": "needle", "model": "gpt-4o-mini",
                          "length": length, "length_unit": "tokens", "depth": 50, "depth_unit": "percent",
                          "strategy": "stuff", "sample": i, "status": "ok", "score": float(i < round(a * n)),
                          "input_tokens": length + 40, "cost_usd": 0.0, "latency_s": 0.1, "prediction": "x"})
    (folder / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_one_call_is_one_call_not_one_calls(tmp_path):
    run = _write_run(tmp_path / "run", {1000: 1.0}, n=1)
    result = CliRunner().invoke(main, ["eval", "report", str(run)])
    assert result.exit_code == 0, result.output
    assert "over 1 scored call\n" in result.output
    assert "1 call: 1 scored" in (run / "report.md").read_text()
    from ragkit.evals.runner import Estimate

    estimate = Estimate(calls=1, done=0, cached=0, to_call=1, input_tokens=10, output_tokens_max=5, cost_usd=0.0)
    assert estimate.describe("gpt-4o").startswith("1 call to gpt-4o:")


def test_costs_with_nothing_recorded_says_so_plainly():
    empty = CliRunner().invoke(main, ["costs"])
    assert empty.exit_code == 0 and "No calls recorded yet." in empty.output
    assert "all recorded calls" not in empty.output
    since = CliRunner().invoke(main, ["costs", "--since", "2025-01-01"])
    assert "No calls recorded since 2025-01-01 00:00 UTC." in since.output


# ---- ragkit models: every default figure is marked ---------------------------------------------------
def _row(output: str, model_id: str) -> list[str]:
    line = next(x for x in output.splitlines() if f" {model_id} " in x)
    return [cell.strip() for cell in line.strip("│ ").split("│")]


def test_models_marks_default_latency_like_default_limits(monkeypatch, tmp_path):
    table = CliRunner().invoke(main, ["models"]).output
    llama, gpt4o, local = _row(table, "llama-3.1-70b"), _row(table, "gpt-4o"), _row(table, "qwen2.5-coder-0.5b-local")
    assert llama[6:8] == ["0.9s*", "60*"]                 # the article gives no latency for Llama
    assert gpt4o[6:8] == ["0.8s", "70"] and gpt4o[2].startswith("40K ")  # the article's figures
    assert local[6:8] == ["8s", "8"]                      # measured by benchmarks/bench_local_model.py
    specs = {m["id"]: m for m in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert all(m["latency_source"].startswith(("article", "measured", "default: ")) for m in specs.values())
    assert specs["llama-3.1-70b"]["latency_source"].startswith("default: the article gives no latency")

    # A figure the user overrides without saying where it comes from is theirs, not the article's.
    config = tmp_path / "models.toml"
    config.write_text('[models."gpt-4o"]\nttft_s = 0.5\npractical_limit_tokens = 45000\n')
    monkeypatch.setenv("RAGKIT_CONFIG", str(config))
    row = _row(CliRunner().invoke(main, ["models"]).output, "gpt-4o")
    assert row[6:8] == ["0.5s*", "70*"] and row[2].startswith("45K* ")
    config.write_text('[models."gpt-4o"]\nttft_s = 0.5\nlatency_source = "measured: our p50, 2026-01"\n')
    assert _row(CliRunner().invoke(main, ["models"]).output, "gpt-4o")[6:8] == ["0.5s", "70"]
    config.write_text('[models."gpt-4o"]\nlatency_source = 3\n')
    bad = CliRunner().invoke(main, ["models"])
    assert bad.exit_code == 1 and "latency_source must be a non-empty string" in bad.output


# ---- --save-limit -------------------------------------------------------------------------------------
def test_save_limit_refuses_a_drop_its_report_calls_not_significant(tmp_path):
    run, overrides = _write_run(tmp_path / "run", {1000: 1.0, 2000: 0.8}), tmp_path / "ragkit.toml"
    args = ["eval", "report", str(run), "--save-limit", "--overrides", str(overrides)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and not overrides.exists()
    assert "not significant" in refused.output and "--force" in refused.output
    assert "Measured practical limit: 1,040 tokens" in refused.output  # the summary still shows what was measured
    assert "not significant at this sample size" in (run / "report.md").read_text()

    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert 'practical_limit_tokens = 1040' in overrides.read_text()


def test_save_limit_prints_the_one_number_it_saves(tmp_path):
    run, overrides = _write_run(tmp_path / "run", {1000: 1.0, 2000: 0.2}), tmp_path / "ragkit.toml"
    result = CliRunner().invoke(main, ["eval", "report", str(run), "--save-limit", "--overrides", str(overrides)])
    assert result.exit_code == 0, result.output
    assert 'practical_limit_tokens = 1040' in overrides.read_text()  # the prompt the model counted at 1K
    output = result.output.replace(str(tmp_path), "TMP")
    limit_lines = [x for x in output.splitlines() if "limit" in x.lower() or "Saved" in x]
    sizes = {int(n.replace(",", "")) for x in limit_lines for n in re.findall(r"\b\d[\d,]{2,}\b", x)}
    assert sizes == {1040}, limit_lines
