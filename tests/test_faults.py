"""Fault suite: a hostile or broken endpoint, through the real SDKs over real HTTP (tests/llm_server.py),
for both wire protocols, via the provider, `ragkit ask --stream/--json`, Session.ask and `ragkit eval`.

What must hold whatever the server does: a clear one-line error that says what really happened
(refused, broke off, timed out, malformed; with the real number of requests sent), exit 1, no
ledger row, no cached or scored eval result, no piece of any API key anywhere, and a streamed
answer that stopped before its end marker is an error, never a short answer.
"""
from __future__ import annotations

import json
import math
import re
import threading
import time

import pytest

from llm_server import Fault, LLMServer, Reply
from helpers import run
from test_eval_e2e import invoke, simulated_reader
from test_providers import PROTOCOLS, make
from ragkit.answer import Session
from ragkit.cli.ask import CUT_MARK
from ragkit.errors import ConfigError, IncompleteStream, ProviderError
from ragkit.ledger import Ledger
from ragkit.models import get_model
from ragkit.providers import provider_for
from ragkit.redact import redact

KEY = "sk-ant-api03-FAULTkey7c1d9e4b2a6f80j3XyZ"   # long enough that a cut can leave a piece of it
QUESTION = "who wrote the book the origin of species"
STREAM = lambda t: None  # noqa: E731  (an on_text that only turns streaming on)


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # the anthropic SDK must not find real profiles


def pieces(text: str, key: str = KEY, n: int = 8) -> list[str]:
    """Every n-character piece of `key` that appears in `text` (what a leak looks like)."""
    return sorted({key[i:i + n] for i in range(len(key) - n + 1) if key[i:i + n] in text})


def call(protocol, srv, monkeypatch, *, stream, **kw):
    """(completion or raised error, text streamed) for one call through the provider."""
    provider = make(protocol, srv, monkeypatch, key=KEY, **kw)
    seen: list[str] = []
    try:
        return provider.complete("s", "q", max_tokens=20, on_text=seen.append if stream else None), "".join(seen)
    except ProviderError as exc:
        return exc, "".join(seen)


# ---------------------------------------------------------------- a stream without its end marker

@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_stream_closed_before_its_end_marker_is_an_incomplete_stream(protocol, monkeypatch):
    with LLMServer(responder=lambda req: Fault.cut_stream("The answer is ")) as srv:
        err, streamed = call(protocol, srv, monkeypatch, stream=True, max_retries=0)
    assert streamed == "The answer is "                 # the reader saw it...
    assert isinstance(err, IncompleteStream)            # ...but it is not an answer
    marker = "finish_reason" if protocol == "openai" else "message_stop"
    assert f"ended before the model finished (no {marker}" in str(err) and srv.root_url in str(err)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_stream_closed_right_after_its_end_marker_is_complete(protocol, monkeypatch):
    """The check is the model's end marker, not the transport's: no [DONE] after it is still fine."""
    with LLMServer(responder=lambda req: Fault.cut_stream(Reply("All of it.", 10, 3), end_marker=True)) as srv:
        done, streamed = call(protocol, srv, monkeypatch, stream=True, max_retries=0)
    assert not isinstance(done, Exception), done
    assert done.text == streamed == "All of it." and done.finish_reason == "stop"
    assert (done.input_tokens, done.output_tokens) == (10, 3)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_session_ask_with_a_cut_stream_raises_and_records_nothing(protocol, sample_corpus, monkeypatch):
    model, var, url_attr = PROTOCOLS[protocol]
    monkeypatch.setenv(var, KEY)
    with LLMServer(responder=lambda req: Fault.cut_stream()) as srv:
        with Session(sample_corpus, model=model, base_url=getattr(srv, url_attr), max_retries=0) as s:
            with pytest.raises(IncompleteStream):
                s.ask(QUESTION, on_text=STREAM)
            assert s.ask(QUESTION).answer == "The answer is"    # the same reply unstreamed is whole
    assert len(Ledger().entries()) == 1                         # only the complete one is recorded


def test_a_failing_on_text_callback_is_the_callers_error_not_the_servers(monkeypatch):
    def broken_pipe(text):
        raise BrokenPipeError("stdout went away")

    with LLMServer(responder=lambda req: "fine") as srv:
        provider = make("openai", srv, monkeypatch, key=KEY)
        with pytest.raises(BrokenPipeError):
            provider.complete("s", "q", max_tokens=5, on_text=broken_pipe)


# ---------------------------------------------------------------- the CLI against every fault
# (fault, expected error for --stream, expected error for --json); -r 1 -t 0.5 throughout.

CLI_FAULTS = {
    "cut-stream": (Fault.cut_stream(), r"ended before the model finished", None),
    "short-body": (Fault.short_body(), r"broke off mid-answer \(peer closed connection",
                   r"broke off its response before it was complete \(2 attempts\) \(peer closed"),
    "reset": (Fault.reset(), r"broke off its response before it was complete \(2 attempts\) \(.*reset",
              r"broke off its response before it was complete \(2 attempts\) \(.*reset"),
    "reset-mid-stream": (Fault.reset(mid_stream=True), r"broke off mid-answer \(.*reset",
                         r"broke off its response before it was complete \(2 attempts\)"),
    "hang": (Fault.hang(), r"did not answer within 0.5 s \(2 attempts\)",
             r"did not answer within 0.5 s \(2 attempts\)"),
    "hang-mid-stream": (Fault.hang(mid_stream=True), r"stopped sending mid-answer \(nothing for 0.5 s\)",
                        r"did not answer within 0.5 s \(2 attempts\)"),
    "malformed-json": (Fault.malformed(), r"sent a malformed response \(not valid JSON\)",
                       r"sent a malformed response \(not valid JSON\)"),
    "bad-events": (Fault.bad_events(), r"without a message_start event|ended before the model finished",
                   r"incomplete Messages response|answered without any choices"),
    "500-forever": (Fault.server_error(), r"failed with HTTP 500 .*\(2 attempts\)",
                    r"failed with HTTP 500 .*\(2 attempts\)"),
    "429-retry-after": (Fault.rate_limited(retry_after_s=0.2),
                        r"rate-limited the call \(HTTP 429\) \(2 attempts\); it asks to wait 0.2 s",
                        r"rate-limited the call \(HTTP 429\) \(2 attempts\); it asks to wait 0.2 s"),
    "key-echo": (Fault.status(400, "." * 156 + KEY + " Authorization: Bearer " + KEY + " x-api-key: " + KEY),
                 r"failed with HTTP 400 .*\(1 attempt\)", r"failed with HTTP 400 .*\(1 attempt\)"),
}


# --json makes a plain call, where a cut stream is just a normal answer: that pair is not a fault.
CLI_CASES = [(fault_id, mode) for fault_id in sorted(CLI_FAULTS) for mode in ("--stream", "--json")
             if CLI_FAULTS[fault_id][1 if mode == "--stream" else 2] is not None]


@pytest.mark.parametrize("fault_id,mode", CLI_CASES, ids=[f"{f}{m}" for f, m in CLI_CASES])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_cli_ask_fails_with_one_true_sentence_and_records_nothing(protocol, fault_id, mode, sample_corpus, monkeypatch):
    fault, on_stream, on_json = CLI_FAULTS[fault_id]
    expected = on_stream if mode == "--stream" else on_json
    model, var, url_attr = PROTOCOLS[protocol]
    monkeypatch.setenv(var, KEY)
    with LLMServer(responder=lambda req: fault) as srv:
        code, out, err = run(["ask", str(sample_corpus), QUESTION, "-m", model, "-u", getattr(srv, url_attr),
                              mode, "-r", "1", "-t", "0.5"])
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    if out:  # part of an answer was printed: it ends its line and is marked as cut
        assert mode == "--stream" and out.endswith("\n") and "Sources:" not in out
        assert lines[0] == CUT_MARK
        lines = lines[1:]
    [line] = lines
    assert line.startswith("Error: ") and re.search(expected, line), line
    assert "cannot reach" not in line and "Traceback" not in err
    assert pieces(out + err) == [] and "Bearer sk" not in err
    assert Ledger().entries() == []


# ---------------------------------------------------------------- keys in error bodies

ECHO = {
    "raw": lambda req: KEY,
    "authorization": lambda req: f"Authorization: {req.headers['authorization']}",
    "x-api-key": lambda req: f"x-api-key: {KEY}",
}


@pytest.mark.parametrize("echo", sorted(ECHO))
@pytest.mark.parametrize("offset", [0, 150, 156, 199, 200, 250])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_key_echoed_at_any_offset_leaves_no_piece_in_the_error(protocol, offset, echo, monkeypatch):
    responder = lambda req: Fault.status(400, "." * offset + ECHO[echo](req) + " trailing words")  # noqa: E731
    with LLMServer(responder=responder) as srv:
        err, _ = call(protocol, srv, monkeypatch, stream=False, max_retries=0)
    assert isinstance(err, ProviderError) and "HTTP 400" in str(err)
    assert pieces(str(err)) == [], str(err)


def leaks_across_the_cut(protocol, monkeypatch, *, echo, status=400, offsets=range(0, 260, 2)) -> dict:
    """{offset: pieces shown} for error bodies echoing the key at each offset, i.e. sliding it across
    the 200-character cut of the error's detail (every other offset: a piece of 8+ characters left by
    a cut shows at two neighbouring offsets at least). One server, no retries."""
    todo, lock = iter(offsets), threading.Lock()

    def responder(req):
        with lock:
            offset = next(todo)
        return Fault.status(status, "." * offset + ECHO[echo](req) + " and more")

    leaks = {}
    with LLMServer(responder=responder) as srv:
        provider = make(protocol, srv, monkeypatch, key=KEY, max_retries=0)
        for offset in offsets:
            with pytest.raises(ProviderError, match=f"HTTP {status}") as err:
                provider.complete("s", "q", max_tokens=5)
            if pieces(str(err.value)) or "Bearer sk" in str(err.value):
                leaks[offset] = pieces(str(err.value))
    return leaks


@pytest.mark.parametrize("echo", sorted(ECHO))
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_key_straddling_the_detail_cut_at_every_offset_leaks_nothing(protocol, echo, monkeypatch):
    assert leaks_across_the_cut(protocol, monkeypatch, echo=echo) == {}


@pytest.mark.parametrize("echo", ["authorization", "x-api-key"])
@pytest.mark.parametrize("status", [422, 500])
def test_claude_error_echoing_the_auth_header_leaks_nothing(status, echo, monkeypatch):
    """The 400 case is in the sweep above; Claude's 422 and 500 bodies take the same path."""
    assert leaks_across_the_cut("anthropic", monkeypatch, echo=echo, status=status, offsets=range(0, 200, 3)) == {}


def test_every_configured_key_is_redacted_not_only_the_providers(monkeypatch):
    """A proxy echoing another provider's key (all keys live in one environment) must not show it either."""
    gemini = "AIzaSyFAULT-gemini-0123456789abcdefghij"
    together = "tgp_v1_FAULTtogether0123456789abcdef"
    monkeypatch.setenv("GEMINI_API_KEY", gemini)
    monkeypatch.setenv("TOGETHER_API_KEY", together)
    with LLMServer(responder=lambda req: Fault.status(400, f"keys: {gemini[3:]} {together[:-1]} {KEY[5:20]}")) as srv:
        err, _ = call("openai", srv, monkeypatch, stream=False, max_retries=0)
    text = str(err)
    assert "HTTP 400" in text
    assert pieces(text) == pieces(text, gemini) == pieces(text, together) == []


def test_redact_removes_key_like_tokens_and_pieces_but_keeps_hints():
    text = (f"…{KEY[3:]} Bearer {KEY} x-api-key: {KEY} {{'api_key': 'abcdefgh12345'}} sk-proj-Zz09_abcdefg "
            f"export OPENAI_API_KEY=... and set ANTHROPIC_API_KEY")
    out = redact(text, KEY)
    assert pieces(out) == [] and "abcdefgh12345" not in out and "sk-proj-Zz09" not in out
    assert "Bearer ***" in out and "x-api-key: ***" in out
    assert out.endswith("export OPENAI_API_KEY=... and set ANTHROPIC_API_KEY")  # hints stay readable
    assert redact("Bearer ragkit-no-key", "ragkit-no-key") == "Bearer ***"  # token-shaped, still masked


# ---------------------------------------------------------------- eval: failed calls stay failed

def test_eval_stores_no_piece_of_the_key_and_no_result_for_failed_calls(tmp_path, monkeypatch):
    """Keys echoed at offsets around the cut (and in the auth header) through `ragkit eval`: the failed
    calls are logged unscored with a redacted error, nothing about them is cached."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    echoes = [lambda r, o=o: "." * o + KEY for o in (0, 150, 156, 199, 200, 250)]
    echoes += [ECHO["authorization"], ECHO["x-api-key"]]
    reader, lock, state = simulated_reader(), threading.Lock(), {"i": 0}

    def responder(req):  # the first 8 calls (400s are not retried) echo the key; the rest are answered
        with lock:
            i = state["i"]
            state["i"] += 1
        return Fault.status(400, echoes[i](req)) if i < len(echoes) else reader(req)

    out, cache = tmp_path / "o", tmp_path / "c.sqlite"
    with LLMServer(responder=responder) as srv:
        data = invoke("eval", "needle", "-m", "gpt-4o-mini", "-l", "500", "--depths", "0,50,100", "-n", "4",
                      "--cache", str(cache), "-o", str(out), "--base-url", srv.openai_base_url, "--json")
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert len(failed) == len(echoes) and all(x["score"] is None and x["prediction"] is None for x in failed)
    assert all("HTTP 400" in x["error"] for x in failed)
    assert data["summary"]["strategies"]["stuff"]["overall"]["failed"] == len(echoes)
    for path in out.iterdir():
        if path.is_file():
            assert pieces(path.read_bytes().decode("utf-8", "replace")) == [], path.name
    assert pieces(cache.read_bytes().decode("utf-8", "replace")) == []
    from test_eval_e2e import _cache_keys

    assert len(_cache_keys(cache)) == len(lines) - len(failed)   # only answered calls are cached


def test_eval_a_response_that_breaks_off_is_failed_not_scored_or_cached(tmp_path):
    """The eval's plain calls: a body cut short (Content-Length not reached) is a failed call."""
    reader = simulated_reader()
    responder = lambda req: Fault.short_body() if "chess club" in req.prompt else reader(req)  # noqa: E731
    out, cache = tmp_path / "o", tmp_path / "c.sqlite"
    with LLMServer(responder=responder) as srv:
        invoke("eval", "needle", "-m", "gpt-4o-mini", "-l", "500", "--depths", "0,100", "-n", "4",
               "--cache", str(cache), "-o", str(out), "--base-url", srv.openai_base_url, "--json")
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert failed and all(x["score"] is None for x in failed)
    assert all("broke off its response before it was complete (3 attempts)" in x["error"] for x in failed)
    from test_eval_e2e import _cache_keys

    assert len(_cache_keys(cache)) == len(lines) - len(failed)


# ---------------------------------------------------------------- the sentence matches what happened

@pytest.mark.parametrize("fault,retries,expect", [
    (Fault.status(400, "bad request"), 2, "(1 attempt)"),           # 4xx: the SDK does not retry
    (Fault.server_error(), 2, "(3 attempts)"),
    (Fault.rate_limited(retry_after_s=0), 1, "(2 attempts)"),
    (Fault.short_body(), 1, "broke off its response before it was complete (2 attempts)"),
    (Fault.reset(), 0, "broke off its response before it was complete (1 attempt)"),
], ids=["400", "500", "429", "short-body", "reset"])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_error_counts_the_requests_really_sent(protocol, fault, retries, expect, monkeypatch):
    with LLMServer(responder=lambda req: fault) as srv:
        err, _ = call(protocol, srv, monkeypatch, stream=False, max_retries=retries, timeout_s=5)
        sent = len(srv.requests)
    assert expect in str(err), str(err)
    n = int(re.search(r"\((\d+) attempts?\)", str(err)).group(1))
    assert n == sent
    assert "cannot reach" not in str(err) and "retries" not in str(err)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_429_waits_as_retry_after_says_and_then_succeeds(protocol, monkeypatch):
    from llm_server import scripted

    with LLMServer(responder=scripted(Fault.rate_limited(retry_after_s=0.6), "fine")) as srv:
        t0 = time.perf_counter()
        done, _ = call(protocol, srv, monkeypatch, stream=True, max_retries=1)
        elapsed = time.perf_counter() - t0
        assert len(srv.requests) == 2
    assert done.text == "fine" and elapsed >= 0.6


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_malformed_claude_or_openai_stream_is_a_clear_sentence(protocol, monkeypatch):
    with LLMServer(responder=lambda req: Fault.bad_events()) as srv:
        err, _ = call(protocol, srv, monkeypatch, stream=True, max_retries=0)
    text = str(err)
    assert isinstance(err, ProviderError) and "AssertionError" not in text and not text.endswith(": ")
    protocol_name = "an OpenAI-compatible endpoint" if protocol == "openai" else "an Anthropic Messages endpoint"
    assert srv.root_url in text and (protocol_name in text or "ended before the model finished" in text)


@pytest.mark.parametrize("value", [0, -5, math.nan, math.inf])
def test_timeout_must_be_positive_for_library_callers(value, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(ConfigError, match="timeout .* above 0"):
        provider_for(get_model("gpt-4o-mini"), timeout_s=value)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_retries_must_be_a_whole_number_from_zero_for_library_callers(value, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with pytest.raises(ConfigError, match="retries .* from 0"):
        provider_for(get_model("claude-3.5-haiku"), max_retries=value)


@pytest.mark.parametrize("args,option", [(["-r", "-1"], "--retries"), (["-t", "0"], "--timeout"),
                                         (["-t", "-5"], "--timeout")])
def test_cli_rejects_bad_retries_and_timeout_before_any_call(args, option, sample_corpus):
    with LLMServer(responder=lambda req: "never asked") as srv:
        code, out, err = run(["ask", str(sample_corpus), QUESTION, "-u", srv.openai_base_url, *args])
        assert srv.requests == []
    assert code == 2 and option in err and "range" in err and "Traceback" not in err
    assert Ledger().entries() == []
