"""Routing: the article's select_model case by case, and `-m auto` end to end against stand-in models with
known accuracies (tests/model_world.py) over the real openai SDK: the cheapest model that clears the floor,
fallback when the chosen one rate-limits forever, the latency bound, --max-cost and the daily budget."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import model_world as w
from helpers import run
from llm_server import Fault, LLMServer
from ragkit.answer import Session
from ragkit.errors import ConfigError, ProviderError
from ragkit.ledger import Ledger, LedgerEntry
from ragkit.route import select_model

Q = "What is the code of item 7?"


@pytest.mark.parametrize("task, floor, volume, expected", [
    ("structured_extraction", 0.99, 10, "gpt-4o-2024-11-20"),
    ("structured_extraction", 0.50, 100_000, "gpt-4o-2024-11-20"),
    ("batch_enrichment", 0.80, 4000, "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"),
    ("batch_enrichment", 0.80, 2000, "claude-3-5-sonnet-20241022"),     # not above 2000: the default
    ("batch_enrichment", 0.85, 4000, "claude-3-5-sonnet-20241022"),     # floor not under 0.85
    ("classification", 0.90, 5001, "gemini-2.0-flash"),
    ("classification", 0.90, 5000, "gpt-4o-mini"),
    ("routing", 0.50, 10_000, "gemini-2.0-flash"),
    ("summarization", 0.50, 100, "gpt-4o-mini"),
    ("interactive_agent", 0.95, 100, "claude-3-5-sonnet-20241022"),
    ("code_generation", 0.50, 1_000_000, "claude-3-5-sonnet-20241022"),
])
def test_select_model_matches_the_articles_function(task, floor, volume, expected):
    assert select_model(task, floor, volume) == expected


def world(srv, tmp: Path, policy: str) -> Path:
    w.register_models(srv, extra=policy)
    return w.make_corpus(tmp)


def save(model: str, accuracy: float, n: int = 40) -> None:
    from ragkit.models import save_accuracy_override

    save_accuracy_override(model, "qa", {"accuracy": accuracy, "n": n, "source": "measured: ragkit compare"})


def test_auto_picks_the_cheapest_model_that_clears_the_measured_floor(tmp_path):
    """Accuracies measured by `compare --save` (the real run), then routed: small (70%) is under the floor,
    twin (90%) is cheaper than big (90%), so twin answers; --explain says why each was kept or dropped."""
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router]\nfloor = 0.85\n[router.tasks.qa]\nmodels = ["big", "twin", "small"]\n')
        golden = w.make_golden(tmp_path)
        code, _out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "twin",
                               "-m", "small", "-o", str(tmp_path / "cmp"), "--cache", str(tmp_path / "c.sqlite"),
                               "--save", "-q"])
        assert code == 0, err
        code, out, err = run(["route", str(corpus), Q, "--explain"])
        assert code == 0, err
        assert "dropped small: measured accuracy 0.70 (n=40) is under the floor 0.85" in out
        assert "kept    big: measured accuracy 0.90" in out and "kept    twin: measured accuracy 0.90" in out
        assert out.strip().endswith("chosen: twin (fallbacks: big)")
        sent = len(srv.requests)
        code, out, err = run(["ask", str(corpus), Q, "-m", "auto", "--json"])
        assert code == 0, err
        [req] = srv.requests[sent:]
    data = json.loads(out)
    assert data["model"] == "twin" and req.model == "twin-served" and "K7Z" in data["answer"]
    assert data["route"]["answered_by"] == "twin" and data["route"]["attempts"] == []
    assert "cheapest candidate" in data["route"]["why"]


def test_unmeasured_candidates_are_kept_by_policy_and_said_to_be(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router]\nfloor = 0.85\n[router.tasks.qa]\nmodels = ["big", "close"]\n')
        save("big", 0.9)
        code, out, err = run(["route", str(corpus), Q, "--explain"])
    assert code == 0, err
    assert "kept    close: unmeasured: kept by policy alone" in out and "chosen: close" in out


def test_the_latency_bound_drops_a_slow_model_even_when_it_is_cheapest(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["slow", "twin"]\n')
        code, out, err = run(["route", str(corpus), Q, "--max-ttft", "1.0", "--explain"])
        assert code == 0, err
        assert "dropped slow: TTFT 3 s is over the bound 1 s" in out and "chosen: twin" in out
        code, out, _ = run(["route", str(corpus), Q])                      # no bound: the cheapest
        assert out.strip() == "chosen: slow (fallbacks: twin)" and srv.requests == []


def test_auto_falls_back_when_the_chosen_model_rate_limits_forever(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["limited", "twin"]\n')
        with Session(corpus, model="auto", max_retries=1) as s:
            answer = s.ask(Q)
        served = [r.model for r in srv.requests]
    assert served == ["limited-served", "limited-served", "twin-served"]      # the retry, then the fallback
    assert answer.model == "twin" and "K7Z" in answer.answer
    [attempt] = answer.route["attempts"]
    assert attempt["model"] == "limited" and attempt["reason"] == "rate-limited" and "429" in attempt["error"]
    assert answer.route["why"] == "fallback after limited (rate-limited)"
    assert [(e.model, e.task) for e in Ledger().entries()] == [("twin", "ask")]   # only the answer was paid


# The chosen model ("limited", the cheapest) fails once with each fault; "twin" stands behind it.
FALLS_BACK = [("rate-limited", Fault.rate_limited(), False),
              ("server error", Fault.server_error(502), False),
              ("timeout or connection failure", Fault.slow(10), False),
              ("timeout or connection failure", Fault.reset(), False),
              ("context length", Fault.status(400, "This model's maximum context length is 16000 tokens"), False)]
STOPS = [("bad_request", Fault.status(400, "Invalid 'temperature': proxy said HTTP 503 upstream"), False),
         ("bad_request", Fault.status(422, "'response_format' is not supported by this model"), False),
         ("auth", Fault.status(401, "invalid key"), False),
         ("not_found", Fault.status(404, "no such model"), False),
         ("malformed", Fault.malformed(), False),
         ("incomplete_stream", Fault.reset(mid_stream=True), True),   # part of an answer was already shown
         ("incomplete_stream", Fault.hang(mid_stream=True), True)]


def failing_first(fault):
    return lambda req: fault if req.model == "limited-served" else w.responder(req)


@pytest.mark.parametrize("reason, fault, stream", FALLS_BACK, ids=[f"{r}-{i}" for i, (r, _f, _s) in enumerate(FALLS_BACK)])
def test_auto_falls_back_on_failures_another_model_can_fix(tmp_path, reason, fault, stream):
    with LLMServer(responder=failing_first(fault)) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["limited", "twin"]\n')
        with Session(corpus, model="auto", max_retries=0, timeout_s=0.5) as s:
            answer = s.ask(Q)
        served = [r.model for r in srv.requests]
    assert served == ["limited-served", "twin-served"]
    assert answer.model == "twin" and [a["reason"] for a in answer.route["attempts"]] == [reason]
    assert [(e.model, e.task) for e in Ledger().entries()] == [("twin", "ask")]   # exactly the call that answered


@pytest.mark.parametrize("kind, fault, stream", STOPS, ids=[f"{k}-{i}" for i, (k, _f, _s) in enumerate(STOPS)])
def test_auto_stops_on_failures_another_model_would_repeat(tmp_path, kind, fault, stream):
    """A request the API refused (400/422), a wrong key, a missing model, a malformed reply or a stream cut
    mid-answer is not retried on the next model: nobody is charged twice for the same mistake, and a
    half-shown answer is not followed by another model's."""
    shown: list[str] = []
    with LLMServer(responder=failing_first(fault)) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["limited", "twin"]\n')
        with Session(corpus, model="auto", max_retries=0, timeout_s=0.5) as s, pytest.raises(ProviderError) as err:
            s.ask(Q, on_text=shown.append if stream else None)
        served = [r.model for r in srv.requests]
    assert err.value.kind == kind and served == ["limited-served"]
    assert Ledger().entries() == []


def test_a_model_with_no_fallback_left_raises_its_own_error(tmp_path):
    from ragkit.errors import ProviderError

    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["limited"]\n')
        with Session(corpus, model="auto", max_retries=0) as s, pytest.raises(ProviderError, match="429"):
            s.ask(Q)


def test_max_cost_refuses_before_any_call_and_auto_routes_under_it(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["big", "small"]\n')
        code, _out, err = run(["ask", str(corpus), Q, "-m", "big", "--max-cost", "0.001"])
        assert code == 1 and "over --max-cost $0.001;" in err and srv.requests == []
        code, out, err = run(["ask", str(corpus), Q, "-m", "auto", "--max-cost", "0.001", "--json"])
        assert code == 0, err
        assert json.loads(out)["model"] == "small"


def test_the_daily_budget_refuses_a_pinned_model_and_routes_auto_cheaper(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[budget]\ndaily_usd = 0.01\n[router.tasks.qa]\nmodels = ["big", "twin"]\n')
        # today's spend so far: $0.005; big costs at most ~$0.009 a question, twin ~$0.0009
        Ledger().record(LedgerEntry("ask", "big", "big-served", "openai", "stuff", 400, 10, 0.005, 0.1, 0.05, None))
        code, _out, err = run(["ask", str(corpus), Q, "-m", "big"])
        assert code == 1 and "would pass the daily budget $0.01" in err and srv.requests == []
        with Session(corpus, model="auto") as s:
            routed = s.ask(Q)
            decision = routed.route["decision"]
        assert routed.model == "twin"
        assert [c["kept"] for c in decision["candidates"]] == [False, True]
        assert "over what is left of the daily budget" in decision["candidates"][0]["reason"]
        Ledger().record(LedgerEntry("ask", "big", "big-served", "openai", "stuff", 400, 10, 0.005, 0.1, 0.05, None))
        with Session(corpus, model="auto") as s, pytest.raises(ConfigError, match="no model can answer"):
            s.ask(Q)
        assert len(srv.requests) == 1


def test_a_bad_router_table_is_one_sentence(tmp_path):
    Path(os.environ["RAGKIT_CONFIG"]).write_text('[router.tasks.qa]\nmodels = "big"\n')
    code, _out, err = run(["route", str(w.make_corpus(tmp_path)), Q])
    assert code == 1 and err.startswith("Error: ") and "[router.tasks.qa] needs models" in err


def test_cost_lists_every_model_at_10M_and_prices_tasks_at_measured_tokens():
    code, out, err = run(["cost", "--tokens-per-day", "10M"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("claude-3.5-sonnet: 10,000,000 tokens/day") and "$60.00/day, $1,800.00/month" in lines[-1]
    assert any(line.startswith("gpt-4o: ") and "$43.75/day" in line for line in lines)
    code, out, _ = run(["cost", "-m", "gpt-4o", "--tokens-per-day", "2k", "--json"])
    assert json.loads(out)["tokens_per_day"] == 2000
    code, _out, err = run(["cost", "--tasks-per-day", "5k"])
    assert code == 1 and "no calls" in err                                  # nothing measured yet
    for n in (1000, 3000):
        Ledger().record(LedgerEntry("compare", "big", "b", "openai", "stuff", n, 100, 0.01, 0.1, 0.05, None))
    code, out, err = run(["cost", "-m", "gpt-4o", "--tasks-per-day", "5k", "--task", "compare", "--json"])
    assert code == 0, err
    data = json.loads(out)   # 2,000 in + 100 out per task x 5,000 tasks at $2.50 / $10.00 per Mtok
    assert (data["input_tokens_per_day"], data["output_tokens_per_day"]) == (10_000_000, 500_000)
    assert data["cost_per_day_usd"] == pytest.approx(25.0 + 5.0)


def test_auto_drops_a_model_whose_key_is_not_set_before_choosing(tmp_path):
    """gemini-2.0-flash is the cheapest candidate, but GEMINI_API_KEY is not set (conftest clears it): it is
    dropped with that reason, and -m auto answers with the next one; the embedded local model needs no key."""
    from ragkit.route import Policy, decide

    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["gemini-2.0-flash", "twin"]\n')
        with Session(corpus) as s:
            route = decide(s, Q, policy=Policy({"qa": ("gemini-2.0-flash", "twin", "qwen2.5-coder-0.5b-local")}))
        reasons = {c.model: (c.kept, c.reason) for c in route.candidates}
        assert reasons["gemini-2.0-flash"] == (False, "GEMINI_API_KEY is not set")
        assert reasons["twin"][0] and reasons["qwen2.5-coder-0.5b-local"][0]
        assert route.order == ("qwen2.5-coder-0.5b-local", "twin")
        code, out, err = run(["route", str(corpus), Q, "--explain"])
        assert code == 0, err
        assert "dropped gemini-2.0-flash: GEMINI_API_KEY is not set" in out and "chosen: twin" in out
        code, out, err = run(["ask", str(corpus), Q, "-m", "auto", "--json"])
        assert code == 0, err
        assert [r.model for r in srv.requests] == ["twin-served"]
    assert json.loads(out)["route"]["answered_by"] == "twin"


@pytest.mark.parametrize("fault", [Fault.reset(mid_stream=True, then="GPT partial answer"),
                                   Fault.hang(mid_stream=True, then="GPT partial answer")], ids=["reset", "hang"])
def test_a_stream_cut_after_text_was_shown_is_marked_cut_and_never_glued_to_a_fallback(tmp_path, fault):
    """`ask -m auto --stream`: the chosen model's stream breaks after its first words reached the terminal.
    No other model answers after them (its text would read as the same answer): the words shown are marked
    cut, the command exits 1, and only the one paid-for attempt was sent."""
    from ragkit.cli.ask import CUT_MARK

    with LLMServer(responder=failing_first(fault)) as srv:
        corpus = world(srv, tmp_path, '\n[router.tasks.qa]\nmodels = ["limited", "twin"]\n')
        code, out, err = run(["ask", str(corpus), Q, "-m", "auto", "--stream", "-r", "0", "-t", "0.5"])
        served = [r.model for r in srv.requests]
    assert code == 1 and served == ["limited-served"]
    assert out.startswith("GPT") and "K7Z" not in out and "twin" not in out
    assert CUT_MARK in err and "Error: " in err and "mid-answer" in err


@pytest.mark.parametrize("table, wrong", [("2.0", "not 2.0"), ("{ qa = 2.0 }", 'for task "qa" must be a table like'),
                                          ("{ qa = { accuracy = 2.0, n = 3 } }", "not 2.0"),
                                          ("{ qa = { accuracy = nan, n = 3 } }", "not nan"),
                                          ("{ qa = { accuracy = -3, n = 3 } }", "not -3")])
def test_an_accuracy_value_error_names_the_wrong_value(tmp_path, table, wrong):
    Path(os.environ["RAGKIT_CONFIG"]).write_text(f'[models."gpt-4o"]\naccuracy = {table}\n')
    code, _out, err = run(["route", str(w.make_corpus(tmp_path)), Q])
    assert code == 1 and err.startswith("Error: ") and wrong in err and "not a table" not in err


def test_route_with_no_model_left_says_why_without_explain(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[router]\nmax_ttft_s = 0.1\n[router.tasks.qa]\nmodels = ["big", "twin"]\n')
        code, out, _err = run(["route", str(corpus), Q])
    assert code == 1
    assert "dropped big: TTFT 0.8 s is over the bound 0.1 s" in out and "dropped twin: TTFT 0.4 s" in out
    assert "chosen: none (every candidate was dropped" in out


def test_a_tiny_daily_budget_is_printed_as_itself(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        corpus = world(srv, tmp_path, '\n[budget]\ndaily_usd = 0.001\n[router.tasks.qa]\nmodels = ["big"]\n')
        code, _out, err = run(["ask", str(corpus), Q, "-m", "big"])
        assert code == 1 and "would pass the daily budget $0.001 ([budget] daily_usd)" in err and srv.requests == []
        code, out, _err = run(["route", str(corpus), Q, "--explain"])
    assert "budget left today $0.001" in out
