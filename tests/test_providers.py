"""Both SDKs over real HTTP against tests/llm_server.py on 127.0.0.1."""
from __future__ import annotations

import socket
import time

import pytest

from llm_server import Fault, LLMServer, Reply, scripted
from ragkit.errors import ConfigError, ProviderError
from ragkit.models import get_model
from ragkit.providers import provider_for
from ragkit.providers.base import PLACEHOLDER_KEY, Completion, Provider

SECRET = "sk-test-SECRET-4f9a2b7c1d"
KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOGETHER_API_KEY",
            "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the anthropic SDK must not find real profiles
    monkeypatch.setenv("RAGKIT_HOME", str(tmp_path / "ragkit"))


PROTOCOLS = {
    "openai": ("gpt-4o-mini", "OPENAI_API_KEY", "openai_base_url"),
    "anthropic": ("claude-3.5-haiku", "ANTHROPIC_API_KEY", "anthropic_base_url"),
}


def make(protocol, srv, monkeypatch, *, key=SECRET, **kw):
    model, var, url_attr = PROTOCOLS[protocol]
    if key:
        monkeypatch.setenv(var, key)
    return provider_for(get_model(model), base_url=getattr(srv, url_attr), **kw)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_round_trip_reports_api_usage(protocol, stream, monkeypatch):
    reply = Reply("Darwin wrote it [1].", input_tokens=1234, output_tokens=56)
    with LLMServer(responder=lambda req: reply) as srv:
        provider = make(protocol, srv, monkeypatch)
        assert isinstance(provider, Provider)
        deltas: list[str] = []
        done = provider.complete("SYSTEM RULES", "Who wrote it?", max_tokens=77,
                                 on_text=deltas.append if stream else None)
        [req] = srv.requests
    assert isinstance(done, Completion)
    assert done.text == "Darwin wrote it [1]."
    assert (done.input_tokens, done.output_tokens) == (1234, 56)   # as the API reported, not our count
    assert done.usage_reported
    assert done.model == get_model(PROTOCOLS[protocol][0]).api_model
    assert done.finish_reason == "stop"
    assert 0 < done.ttft_s <= done.latency_s
    if stream:
        assert len(deltas) > 1 and "".join(deltas) == done.text
    assert req.stream is stream
    assert req.system == "SYSTEM RULES" and req.prompt == "Who wrote it?"
    assert req.max_tokens == 77 and req.temperature == 0.0
    assert req.headers.get("authorization") == f"Bearer {SECRET}"
    assert SECRET not in repr(provider) and SECRET not in repr(done)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_429_then_200_is_retried(protocol, monkeypatch):
    with LLMServer(responder=scripted(Fault.rate_limited(retry_after_s=0), "fine")) as srv:
        done = make(protocol, srv, monkeypatch, max_retries=2).complete("s", "q", max_tokens=5)
        assert done.text == "fine"
        assert len(srv.requests) == 2


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_500_forever_fails_with_one_clear_sentence(protocol, monkeypatch):
    with LLMServer(responder=lambda req: Fault.server_error()) as srv:
        provider = make(protocol, srv, monkeypatch, max_retries=1)
        with pytest.raises(ProviderError) as err:
            provider.complete("s", "q", max_tokens=5)
        assert len(srv.requests) == 2            # first try + one retry
        msg = str(err.value)
        assert "HTTP 500" in msg and srv.root_url in msg and "Traceback" not in msg
        assert SECRET not in msg


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_slow_server_hits_the_timeout(protocol, stream, monkeypatch):
    with LLMServer(responder=lambda req: Fault.slow(10)) as srv:
        provider = make(protocol, srv, monkeypatch, timeout_s=0.4, max_retries=0)
        t0 = time.perf_counter()
        with pytest.raises(ProviderError, match=r"did not answer within 0.4 s"):
            provider.complete("s", "q", max_tokens=5, on_text=(lambda t: None) if stream else None)
        assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_malformed_json_is_an_error_not_a_crash(protocol, stream, monkeypatch):
    with LLMServer(responder=lambda req: Fault.malformed()) as srv:
        provider = make(protocol, srv, monkeypatch, max_retries=0)
        with pytest.raises(ProviderError, match="malformed response"):
            provider.complete("s", "q", max_tokens=5, on_text=(lambda t: None) if stream else None)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_key_echoed_by_server_is_redacted(protocol, monkeypatch):
    with LLMServer(responder=lambda req: Fault.status(401, f"invalid key {SECRET}")) as srv:
        provider = make(protocol, srv, monkeypatch, max_retries=0)
        with pytest.raises(ProviderError) as err:
            provider.complete("s", "q", max_tokens=5)
    msg = str(err.value)
    assert "401" in msg and PROTOCOLS[protocol][1] in msg    # names the variable to check
    assert SECRET not in msg and SECRET not in repr(err.value)


@pytest.mark.parametrize("model,var", [("gpt-4o-mini", "OPENAI_API_KEY"), ("gemini-2.0-flash", "GEMINI_API_KEY"),
                                       ("llama-3.1-70b", "TOGETHER_API_KEY"), ("claude-3.5-sonnet", "ANTHROPIC_API_KEY")])
def test_missing_key_names_the_variable(model, var):
    with pytest.raises(ConfigError) as err:
        provider_for(get_model(model))
    assert var in str(err.value)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_keyless_local_endpoint_gets_a_placeholder(protocol, monkeypatch):
    with LLMServer(responder=lambda req: "ok") as srv:
        done = make(protocol, srv, monkeypatch, key=None).complete("s", "q", max_tokens=5)
        assert done.text == "ok"
        assert srv.requests[0].headers.get("authorization") == f"Bearer {PLACEHOLDER_KEY}"


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_unreachable_endpoint_names_the_url(protocol, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}" + ("/v1" if protocol == "openai" else "")
    model, var, _ = PROTOCOLS[protocol]
    monkeypatch.setenv(var, SECRET)
    provider = provider_for(get_model(model), base_url=url, max_retries=0, timeout_s=2)
    with pytest.raises(ProviderError) as err:
        provider.complete("s", "q", max_tokens=5)
    assert f"cannot reach {url}" in str(err.value) and SECRET not in str(err.value)


def test_sdk_environment_variables_keep_working(monkeypatch):
    with LLMServer(responder=lambda req: "via env") as srv:
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET + "-a")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        assert provider_for(get_model("gpt-4o")).complete("s", "q", max_tokens=5).text == "via env"
        assert provider_for(get_model("claude-3.5-sonnet")).complete("s", "q", max_tokens=5).text == "via env"
        auth = [r.headers.get("authorization") for r in srv.requests]
    assert auth == [f"Bearer {SECRET}", f"Bearer {SECRET}-a"]


def test_registry_base_url_wins_over_openai_base_url_and_key_comes_from_its_variable(monkeypatch):
    """Gemini's entry names its own endpoint and GEMINI_API_KEY; --base-url still overrides it."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    spec = get_model("gemini-2.0-flash")
    assert provider_for(spec).base_url == spec.base_url
    with LLMServer(responder=lambda req: "gemini says hi") as srv:
        done = provider_for(spec, base_url=srv.openai_base_url).complete("s", "q", max_tokens=5)
        [req] = srv.requests
    assert done.text == "gemini says hi"
    assert req.model == "gemini-2.0-flash" and req.headers["authorization"] == f"Bearer {SECRET}"


def test_endpoint_without_usage_is_estimated_and_flagged(monkeypatch):
    """A server that omits usage still gives counts, marked usage_reported=False."""
    with LLMServer(responder=lambda req: "two words") as srv:
        provider = make("openai", srv, monkeypatch)
        # streaming without include_usage support: the fake honours stream_options, so strip it
        original = provider._sdk().chat.completions.create

        def no_usage(**kw):
            kw.pop("stream_options", None)
            return original(**kw)

        monkeypatch.setattr(provider._sdk().chat.completions, "create", no_usage)
        done = provider.complete("s", "q", max_tokens=5, on_text=lambda t: None)
    assert done.text == "two words" and not done.usage_reported and done.output_tokens > 0


def test_local_provider_is_resolved_lazily_and_rejects_base_url():
    spec = get_model("qwen2.5-coder-0.5b-local")
    provider = provider_for(spec)                 # no model load yet: that happens on the first call
    assert isinstance(provider, Provider)
    with pytest.raises(ConfigError, match="base-url"):
        provider_for(spec, base_url="http://127.0.0.1:8080/v1")


# What failed, as a kind callers decide on (route.py's fallback), set where each SDK's exception is
# translated: the same fault gives the same kind over both wire protocols.
KINDS = [
    ("rate_limit", Fault.rate_limited(), False),
    ("server", Fault.server_error(503), False),
    ("timeout", Fault.slow(10), False),
    ("bad_request", Fault.status(400, "Invalid 'temperature': proxy said HTTP 503 upstream"), False),
    ("context_length", Fault.status(400, "This model's maximum context length is 16385 tokens"), False),
    ("context_length", Fault.status(400, "prompt is too long: 201234 tokens > 200000 maximum"), False),
    ("auth", Fault.status(401, "invalid x-api-key"), False),
    ("auth", Fault.status(403, "no access to this model"), False),
    ("not_found", Fault.status(404, "no such model"), False),
    ("malformed", Fault.malformed(), False),
    ("connection", Fault.reset(), False),
    ("incomplete_stream", Fault.reset(mid_stream=True), True),
    ("incomplete_stream", Fault.cut_stream(), True),
]


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("kind, fault, stream", KINDS, ids=[f"{k}-{i}" for i, (k, _f, _s) in enumerate(KINDS)])
def test_each_failure_carries_its_kind(protocol, kind, fault, stream, monkeypatch):
    with LLMServer(responder=lambda req: fault) as srv:
        provider = make(protocol, srv, monkeypatch, timeout_s=0.4, max_retries=0)
        with pytest.raises(ProviderError) as err:
            provider.complete("s", "q", max_tokens=5, on_text=(lambda t: None) if stream else None)
    assert err.value.kind == kind, str(err.value)
    assert SECRET not in str(err.value)


def test_the_kind_survives_pickling():
    import pickle

    back = pickle.loads(pickle.dumps(ProviderError("HTTP 429 from x", kind="rate_limit")))
    assert (str(back), back.kind) == ("HTTP 429 from x", "rate_limit")
