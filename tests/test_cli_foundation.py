"""The light CLI commands as a user runs them: real processes, real files, JSON checked against tiktoken."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit.budget import plan
from ragkit.tokens import get_encoding

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "sentence_transformers", "faiss", "transformers", "openai", "anthropic", "ray", "pymilvus", "onnxruntime")


def run(*args, cwd=None, check=True):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"ragkit {' '.join(args)} failed: {proc.stderr}")
    return proc


def test_count_json_equals_tiktoken_o200k_for_gpt4o(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nSome *markdown* text, with numbers 12345 and émojis 🎉.\n")
    (tmp_path / "b.txt").write_text("plain text " * 50)
    out = json.loads(run("count", str(tmp_path), "-m", "gpt-4o", "--json").stdout)
    enc = get_encoding("o200k_base")
    expected = {name: len(enc.encode_ordinary((tmp_path / name).read_text())) for name in ("a.md", "b.txt")}
    assert {f["source"]: f["tokens"] for f in out["files"]} == expected
    assert out["tokens"] == sum(expected.values()) and out["exact"] is True and out["encoding"] == "o200k_base"


def test_count_for_claude_is_marked_estimate_with_margin():
    out = json.loads(run("count", str(ROOT / "corpora/nq-wiki-sample"), "-m", "claude-3.5-sonnet", "--json").stdout)
    assert out["exact"] is False and out["margin"] == 0.2 and out["encoding"] == "cl100k_base"
    assert out["planning_tokens"] > out["tokens"]
    human = run("count", str(ROOT / "corpora/nq-wiki-sample"), "-m", "claude-3.5-sonnet").stdout
    assert "Estimate" in human and "20% margin" in human


def test_plan_stuff_and_retrieve_on_both_sides_of_the_boundary(tmp_path):
    # One file whose fenced block is exactly the budget, then one token over.
    enc = get_encoding("o200k_base")
    budget = plan("gpt-4o", corpus_tokens=0, question="q?").budget_tokens
    ids = enc.encode_ordinary(("alpha " * (budget + 50)).strip())
    doc = tmp_path / "doc.txt"
    doc.write_text(enc.decode(ids[:100]))
    fence = json.loads(run("plan", str(tmp_path), "-m", "gpt-4o", "--question", "q?", "--json").stdout)
    fence = fence["stuffed_tokens"] - fence["corpus_tokens"]
    doc.write_text(enc.decode(ids[:budget - fence]))
    at = json.loads(run("plan", str(tmp_path), "-m", "gpt-4o", "--question", "q?", "--json").stdout)
    doc.write_text(enc.decode(ids[:budget - fence + 1]))
    over = json.loads(run("plan", str(tmp_path), "-m", "gpt-4o", "--question", "q?", "--json").stdout)
    assert (at["strategy"], over["strategy"]) == ("stuff", "retrieve")
    for key in ("corpus_tokens", "practical_limit_tokens", "budget_tokens", "reason", "estimated_cost_usd"):
        assert key in at
    assert at["budget_tokens"] == budget and at["stuffed_tokens"] == budget and over["stuffed_tokens"] == budget + 1
    assert at["corpus_tokens"] == budget - fence


def test_plan_on_bundled_corpora():
    small = json.loads(run("plan", str(ROOT / "corpora/nq-wiki-sample"), "-m", "local", "--json").stdout)
    big = json.loads(run("plan", str(ROOT / "corpora/nq-wiki"), "-m", "gpt-4o", "--json").stdout)
    assert small["strategy"] == "stuff" and big["strategy"] == "retrieve"
    assert big["corpus_tokens"] > 250_000


def test_cost_command_prints_correct_daily_cost():
    out = run("cost", "-m", "gpt-4o", "--tokens-per-day", "10000000").stdout
    assert "$43.75/day" in out and "$1,312.50/month" in out


def test_models_json_lists_registry():
    models = json.loads(run("models", "--json").stdout)
    assert {"gpt-4o", "claude-3.5-sonnet", "qwen2.5-coder-0.5b-local"} <= {m["id"] for m in models}
    assert "gpt-4o" in run("models").stdout


@pytest.mark.parametrize("setup, args, message", [
    ("missing", ["count", "{p}/nope", "-m", "gpt-4o"], "does not exist"),
    ("empty", ["count", "{p}", "-m", "gpt-4o"], "no readable documents"),
    ("binary", ["plan", "{p}", "-m", "gpt-4o"], "no readable documents"),
    ("text", ["count", "{p}", "-m", "gpt-5-turbo"], "unknown model"),
    ("badtoml", ["plan", "{p}", "-m", "gpt-4o"], "not valid TOML"),
    ("text", ["plan", "-m", "gpt-4o"], "give a PATH"),
    ("text", ["cost", "-m", "gpt-4o", "--tokens-per-day", "10", "--input-share", "2"], "between 0 and 1"),
])
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path, setup, args, message):
    p = tmp_path / "corpus"
    p.mkdir()
    if setup == "binary":
        (p / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    elif setup in ("text", "badtoml"):
        (p / "a.txt").write_text("hello")
    if setup == "badtoml":
        (tmp_path / "ragkit.toml").write_text("[models.gpt-4o\n")
    proc = run(*[a.format(p=p) for a in args], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_light_commands_do_not_import_heavy_libraries():
    code = ("import sys; from click.testing import CliRunner; from ragkit.cli import main; r = CliRunner();"
            f"[r.invoke(main, a, catch_exceptions=False) for a in (['models'], ['plan', '{ROOT}/corpora/nq-wiki-sample', '-m', 'gpt-4o'],"
            f" ['count', '{ROOT}/corpora/nq-wiki-sample'], ['cost', '--tokens-per-day', '5'])];"
            f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_count_exact_asks_anthropic_count_tokens_over_http(tmp_path, monkeypatch):
    from llm_server import LLMServer

    (tmp_path / "a.txt").write_text("one two three four")
    (tmp_path / "b.md").write_text("five six")
    with LLMServer(responder=lambda req: "unused") as srv:
        env = dict(os.environ, ANTHROPIC_API_KEY="sk-ant-secret-123", ANTHROPIC_BASE_URL=srv.anthropic_base_url)
        proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "count", str(tmp_path), "-m", "claude-3.5-haiku",
                               "--exact", "--json"], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        # The test server counts whitespace words; framing (the '.' probe) is 1 word - 1 = 0.
        assert {f["source"]: f["tokens"] for f in out["files"]} == {"a.txt": 4, "b.md": 2}
        assert out["exact"] is True and "count_tokens" in out["encoding"]
        assert {r.api for r in srv.requests} == {"anthropic_count_tokens"}
        assert all(r.model == "claude-3-5-haiku-20241022" for r in srv.requests)
        assert "sk-ant-secret-123" not in proc.stdout + proc.stderr


def test_count_exact_is_refused_clearly_without_a_count_api(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    proc = run("count", str(tmp_path), "-m", "gemini-2.0-flash", "--exact", check=False)
    assert proc.returncode == 1 and "Anthropic models only" in proc.stderr and "15% margin" in proc.stderr
    proc = run("count", str(tmp_path), "-m", "claude-3.5-haiku", "--exact", check=False)
    assert proc.returncode == 1 and "ANTHROPIC_API_KEY is not set" in proc.stderr and "Traceback" not in proc.stderr
