"""Registry, offline token counting, planner and cost math: real tiktoken encodings, real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit.budget import plan
from ragkit.costs import cost_usd, volume_cost
from ragkit.errors import ConfigError, InputError, UnknownModelError
from ragkit.models import get_model, list_models, save_limit_override
from ragkit.tokens import CountCache, counter_for, get_encoding

ROOT = Path(__file__).resolve().parent.parent
ARTICLE_MODELS = {"gpt-4o", "gpt-4o-mini", "claude-3.5-sonnet", "claude-3.5-haiku", "gemini-2.0-flash",
                  "gemini-1.5-pro", "llama-3.1-70b"}


# --- registry -------------------------------------------------------------------------------

def test_registry_has_every_article_model_with_its_figures():
    ids = {m.id for m in list_models()}
    assert ARTICLE_MODELS <= ids
    gpt4o = get_model("gpt-4o")
    assert (gpt4o.context_window_tokens, gpt4o.practical_low_tokens, gpt4o.practical_high_tokens) == (128000, 40000, 50000)
    assert (gpt4o.input_usd_per_mtok, gpt4o.output_usd_per_mtok, gpt4o.ttft_s, gpt4o.tokens_per_s) == (2.5, 10.0, 0.8, 70)
    sonnet = get_model("claude-3-5-sonnet-20241022")  # alias
    assert sonnet.id == "claude-3.5-sonnet" and sonnet.practical_low_tokens == 60000 and sonnet.practical_high_tokens == 80000
    pro = get_model("gemini-1.5-pro")
    assert pro.context_window_tokens == 1_000_000 and (pro.practical_low_tokens, pro.practical_high_tokens) == (80000, 120000)
    assert get_model("gemini-2.0-flash").input_usd_per_mtok == 0.10
    assert get_model("llama-3.1-70b").output_usd_per_mtok == 0.90


def test_limits_without_an_article_figure_are_marked_as_defaults_with_a_reason():
    for m in list_models():
        assert m.practical_low_tokens <= m.practical_limit_tokens <= m.practical_high_tokens <= m.context_window_tokens
        if m.id in {"gpt-4o", "claude-3.5-sonnet", "gemini-1.5-pro"}:
            assert m.limit_source.startswith("article")
        else:
            assert m.limit_source.startswith("default: ") and len(m.limit_source) > 30


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError, match="gpt-4o"):
        get_model("gpt-4")


def test_project_and_user_overrides_win_field_by_field(tmp_path, monkeypatch):
    user = Path(os.environ["RAGKIT_CONFIG"])
    user.write_text('[models."gpt-4o"]\npractical_limit_tokens = 45000\nlimit_source = "measured by me"\n')
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ragkit.toml").write_text(
        '[models."gpt-4o"]\ninput_usd_per_mtok = 2.0\n'
        '[models."my-vllm"]\nname = "My vLLM"\nprovider = "openai"\napi_model = "llama"\n'
        'base_url = "http://127.0.0.1:8000/v1"\ncontext_window_tokens = 32768\npractical_limit_tokens = 16000\n'
        'max_output_tokens = 1024\ninput_usd_per_mtok = 0\noutput_usd_per_mtok = 0\nencoding = "cl100k_base"\n'
        'exact_tokens = false\ntoken_margin = 0.1\n')
    m = get_model("gpt-4o")
    assert m.practical_limit_tokens == 45000 and m.input_usd_per_mtok == 2.0 and m.output_usd_per_mtok == 10.0
    assert m.limit_is_measured
    assert get_model("my-vllm").practical_limit_tokens == 16000


@pytest.mark.parametrize("text, message", [
    ("[models.x\n", "not valid TOML"),
    ('[models."gpt-4o"]\npractical_limit_tokens = 999999999\n', "between 1 and"),
    ('[models."gpt-4o"]\nwindow = 5\n', "unknown field"),
    ('[models."new"]\nname = "x"\n', "lacks"),
])
def test_malformed_override_is_a_clear_config_error(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ragkit.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        get_model("gpt-4o")


def test_save_limit_override_keeps_comments_and_changes_the_plan():
    user = Path(os.environ["RAGKIT_CONFIG"])
    user.write_text("# my overrides\n")
    before = plan("gpt-4o", corpus_tokens=45000).strategy
    save_limit_override("4o", 60000, "measured 2026-11-28 by needle eval")
    assert "# my overrides" in user.read_text()
    m = get_model("gpt-4o")
    assert m.practical_limit_tokens == 60000 and m.practical_high_tokens == 60000 and m.limit_is_measured
    after = plan("gpt-4o", corpus_tokens=45000)
    assert (before, after.strategy) == ("retrieve", "stuff") and "measured limit" in after.reason


# --- tokens -----------------------------------------------------------------------------------

def test_encodings_are_real_tiktoken_built_offline():
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert get_encoding("o200k_base").encode("hello world") == [24912, 2375]
    with pytest.raises(ConfigError):
        get_encoding("p50k_base")


def test_parsed_ranks_are_kept_checksummed_and_a_damaged_copy_is_parsed_again(tmp_path, monkeypatch):
    import subprocess
    import sys

    from ragkit import tokens

    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path))
    probe = [sys.executable, "-c", "from ragkit.tokens import get_encoding as g; "
             "e = g('cl100k_base'); print(e.encode('hello world'), e.n_vocab)"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout
    ranks = tokens._ranks_file("cl100k_base", tmp_path / "tiktoken")
    assert ranks.is_file() and first.startswith("[15339, 1917]")
    blob = bytearray(ranks.read_bytes())
    blob[-10] ^= 0xFF  # one flipped byte: the checksum no longer matches
    ranks.write_bytes(bytes(blob))
    again = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout
    assert again == first                                         # parsed again from the verified BPE file
    assert ranks.read_bytes() != bytes(blob)                      # and the damaged copy replaced


def test_gpt4o_counts_are_exact_o200k_and_claude_counts_are_marked_estimates():
    text = (ROOT / "corpora/nq-wiki-sample/passages.jsonl").read_text()
    gpt = counter_for("gpt-4o")
    assert gpt.exact and gpt.count(text) == len(get_encoding("o200k_base").encode_ordinary(text))
    claude = counter_for("claude-3.5-sonnet")
    n = claude.count(text)
    assert not claude.exact and claude.margin == 0.20 and claude.planning_tokens(n) == -(-n * 12 // 10)


def test_special_token_text_in_documents_is_counted_as_data():
    assert counter_for("gpt-4o").count("<|endoftext|>") > 1


def test_count_cache_returns_the_same_counts_and_skips_known_texts(tmp_path):
    cache = CountCache(tmp_path / "c.sqlite")
    counter = counter_for("gpt-4o")
    texts = ["alpha beta", "gamma", "alpha beta"]
    assert cache.count_many(counter, texts) == counter.count_many(texts)
    # A poisoned row proves the second call reads the cache instead of re-counting.
    cache._db.execute("UPDATE counts SET tokens = 999")
    cache._db.commit()
    assert cache.count_many(counter, ["gamma"]) == [999]
    cache.close()


# --- planner ----------------------------------------------------------------------------------

def test_plan_boundary_is_where_the_reserve_puts_it():
    m = get_model("gpt-4o")
    p = plan(m, corpus_tokens=0, question="", answer_tokens=1000, instructions_tokens=400)
    assert p.reserve_tokens == 1400 and p.budget_tokens == m.practical_limit_tokens - 1400
    at = plan(m, corpus_tokens=p.budget_tokens, answer_tokens=1000, instructions_tokens=400)
    over = plan(m, corpus_tokens=p.budget_tokens + 1, answer_tokens=1000, instructions_tokens=400)
    assert (at.strategy, over.strategy) == ("stuff", "retrieve")
    assert "fit" in at.reason and "exceed" in over.reason and "40,000" in over.reason


def test_plan_counts_question_and_document_framing():
    # The reserve is ragkit's answer prompt as rendered (not a constant); the fences are the caller's count.
    from ragkit.prompt import Framing

    q = "who wrote the book the origin of species"
    framing = Framing(counter_for("gpt-4o"))
    p = plan("gpt-4o", corpus_tokens=1000, framing_tokens=75, question=q, documents=3)
    assert p.instructions_tokens == framing.scaffold_tokens("") > 100
    assert p.question_tokens == framing.scaffold_tokens(q) - framing.scaffold_tokens("") >= counter_for("gpt-4o").count(q)
    assert p.context_tokens == p.stuffed_tokens == 1075


def test_estimated_counts_are_planned_with_the_margin():
    m = get_model("claude-3.5-sonnet")
    p = plan(m, corpus_tokens=0, answer_tokens=1000, instructions_tokens=400)
    fits_raw_but_not_with_margin = p.budget_tokens - 10
    q = plan(m, corpus_tokens=fits_raw_but_not_with_margin, answer_tokens=1000, instructions_tokens=400)
    assert q.strategy == "retrieve" and q.margin_tokens > 0 and not q.exact
    assert "estimated with cl100k_base + 20% margin" in q.reason
    assert q.pack_budget_tokens == int(q.budget_tokens / 1.2)


def test_plan_cost_is_an_upper_bound_from_registry_prices():
    p = plan("gpt-4o", corpus_tokens=10_000, answer_tokens=500)
    assert p.strategy == "stuff"
    assert p.estimated_cost_usd == pytest.approx((p.estimated_input_tokens * 2.5 + 500 * 10.0) / 1e6)
    r = plan("gpt-4o", corpus_tokens=1_000_000, answer_tokens=500)
    assert r.estimated_input_tokens <= get_model("gpt-4o").practical_limit_tokens


@pytest.mark.parametrize("kwargs, message", [
    ({"corpus_tokens": 10, "answer_tokens": 40_000}, "writes at most"),
    ({"corpus_tokens": -1}, "negative"),
])
def test_plan_rejects_impossible_requests(kwargs, message):
    with pytest.raises(InputError, match=message):
        plan("gpt-4o-mini" if "answer_tokens" in kwargs else "gpt-4o", **kwargs)


def test_plan_rejects_a_reserve_larger_than_the_limit():
    with pytest.raises(InputError, match="practical limit"):
        plan("local", corpus_tokens=10, question="word " * 3000)


# --- costs ------------------------------------------------------------------------------------

def test_cost_math_uses_correct_arithmetic_not_the_article_column():
    v = volume_cost("gpt-4o", 10_000_000, 0.75)
    assert v.cost_per_day_usd == pytest.approx(43.75) and v.cost_per_month_usd == pytest.approx(1312.5)
    assert volume_cost("gemini-2.0-flash", 10_000_000).cost_per_day_usd == pytest.approx(1.75)
    assert cost_usd("claude-3.5-sonnet", 1_000_000, 1_000_000) == pytest.approx(18.0)
    with pytest.raises(InputError):
        volume_cost("gpt-4o", 10, 1.5)
