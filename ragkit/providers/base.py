"""What every provider returns and the one method it must have.

A provider is one wire protocol (OpenAI Chat Completions, Anthropic Messages, the embedded local
model). Everything above it (answer.py, evals) sees only `Provider.complete` and `Completion`.
"""
from __future__ import annotations

import ipaddress
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ragkit.errors import IncompleteStream, MissingKey, ProviderError
from ragkit.redact import redact


@dataclass(frozen=True)
class Completion:
    """One model call: the text and the usage *as the API reported it*."""

    text: str
    input_tokens: int
    output_tokens: int
    ttft_s: float            # seconds to the first text (== latency_s when not streamed)
    latency_s: float         # seconds for the whole call, retries included
    model: str               # the raw model id the API answered with
    finish_reason: str       # "stop", "length", ... (provider spelling normalised to OpenAI's)
    usage_reported: bool = True   # False when the endpoint sent no usage and counts were estimated locally
    enforcement: str = ""         # with a schema: how the API enforced it (strict | tool | grammar | validated)

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Provider(Protocol):
    def complete(self, system: str, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None, schema=None) -> Completion:
        """Sends one system + user turn. on_text given => stream, calling it with each text delta.
        schema (a structured.StructuredSpec) => the reply is its JSON, enforced as deep as the API allows."""
        ...


PLACEHOLDER_KEY = "ragkit-no-key"  # sent to key-less local endpoints; the SDKs refuse an empty key


def is_loopback_url(url: str | None) -> bool:
    """True for http(s)://localhost / 127.x / ::1 endpoints (Ollama, llama.cpp, vLLM on this machine)."""
    if not url:
        return False
    host = (urlsplit(url).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_key(env_names: list[str], *, base_url: str | None, base_url_overridden: bool,
                model_id: str) -> tuple[str, str | None]:
    """Returns (key, env var it came from). Reads only the environment.

    No key + an endpoint the user chose (--base-url, *_BASE_URL) or one on this machine: a
    placeholder, because local servers usually take none. No key otherwise: one clear sentence.
    """
    for name in env_names:
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    if base_url_overridden or is_loopback_url(base_url):
        return PLACEHOLDER_KEY, None
    wanted = env_names[0] if env_names else "an API key variable"
    raise MissingKey(
        f"{wanted} is not set: model '{model_id}' needs it. Export {wanted}=... "
        f"(or use --base-url for a key-less local endpoint).", wanted)


def short(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters. Only for text already redacted (ragkit.redact first)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StreamTracker:
    """One streamed answer, whichever wire protocol carries it: its text, the time to the first text,
    and whether the protocol's end marker arrived (OpenAI: a finish_reason; Anthropic: message_stop).

    Both HTTP providers feed it, so the completeness rule lives here once: a stream that stops
    without its end marker (a server or proxy that closed early) is an IncompleteStream, never a
    short answer, even though the text so far has already gone to on_text.
    """

    def __init__(self, on_text: Callable[[str], None], *, url: str, end_marker: str, protocol: str):
        self.on_text, self.url, self.end_marker, self.protocol = on_text, url, end_marker, protocol
        self.start = time.perf_counter()
        self.parts: list[str] = []
        self.ttft: float | None = None
        self.events = 0
        self.finished = False
        self.callback_error: BaseException | None = None   # the caller's on_text failed: not our error

    @property
    def mid_stream(self) -> bool:
        """True once the response has started (an error now cuts an answer, not a request)."""
        return self.events > 0

    def event(self) -> None:
        self.events += 1

    def text(self, delta: str | None) -> None:
        if not delta:
            return
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.start
        self.parts.append(delta)
        try:
            self.on_text(delta)
        except BaseException as exc:
            self.callback_error = exc
            raise

    def end(self) -> None:
        self.finished = True

    def result(self) -> tuple[str, float, float]:
        """(text, ttft_s, latency_s) of a complete stream; IncompleteStream otherwise."""
        latency = time.perf_counter() - self.start
        if not self.events:
            raise IncompleteStream(f"{self.url} sent an empty stream: is it {self.protocol}?")
        if not self.finished:
            got = sum(map(len, self.parts))
            raise IncompleteStream(
                f"the stream from {self.url} ended before the model finished (no {self.end_marker} after "
                f"{got:,} characters of answer); the partial answer is not used: try again.")
        return "".join(self.parts), latency if self.ttft is None else self.ttft, latency


_MALFORMED = (ValueError, AssertionError, KeyError, IndexError)


def _attempts(exc: Exception) -> str:
    """' (3 attempts)': the requests really sent. Both SDKs number each try in x-stainless-retry-count."""
    try:
        n = int(exc.request.headers["x-stainless-retry-count"]) + 1
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):
        return ""
    return f" ({n} attempt{'' if n == 1 else 's'})"


def _network_failure(sdk, exc: Exception) -> str | None:
    """'connect timeout', 'timeout', 'connect' or 'broken' for a network failure, else None.

    The SDKs wrap transport errors raised while sending (APITimeoutError, APIConnectionError, the
    httpx error as __cause__); the anthropic SDK lets ones raised mid-stream through unwrapped.
    Classes are matched by name so httpx and httpx2 both work.
    """
    names = {c.__name__ for e in (exc, exc.__cause__) if e is not None for c in type(e).__mro__}
    if isinstance(exc, sdk.APITimeoutError) or "TimeoutException" in names:
        return "connect timeout" if "ConnectTimeout" in names else "timeout"
    if isinstance(exc, sdk.APIConnectionError) or "TransportError" in names:
        return "connect" if names & {"ConnectError", "UnsupportedProtocol"} else "broken"
    return None


_CONTEXT_LENGTH = re.compile(r"context.{0,20}(length|window)|maximum context|prompt is too long|too many tokens", re.I)


def _over_context(exc) -> bool:
    """A 400/413/422 that says the prompt is over the model's context: OpenAI's error code, or the
    server's own message where it sends none (Anthropic, vLLM, llama.cpp)."""
    if getattr(exc, "code", None) == "context_length_exceeded":
        return True
    return bool(_CONTEXT_LENGTH.search(str(getattr(exc, "message", "") or "")))


def sdk_error(sdk, exc: Exception, *, provider, key_var: str, connection_hint: str,
              not_found: str, protocol: str, mid_stream: bool = False) -> ProviderError:
    """The ProviderError for a failed call through the openai or anthropic SDK: one sentence, keys
    redacted, and its `kind` (see errors.ProviderError) for callers that decide what to do next.

    Both SDKs share one exception hierarchy (APITimeoutError, APIConnectionError, APIStatusError and
    its subclasses), so one mapping serves both; `sdk` is the imported module. The other arguments
    carry the protocol's own wording: the base-URL variable, the 404 cause, the protocol's name.
    mid_stream: the response had started, so a transport error cut an answer rather than a request
    (kind incomplete_stream: part of it may already have been shown).
    The sentence says what happened (refused, broke off, timed out) and how many requests were sent.
    """
    url, spec, secret = provider.base_url, provider.spec, provider._key

    def detail(text) -> str:  # redact before cutting: a key straddling the cut must not leave a piece
        return short(redact(str(text or ""), secret))

    tries, wait = _attempts(exc), f"{provider.timeout_s:g} s"
    network = _network_failure(sdk, exc)
    cause = detail(exc.__cause__ if isinstance(exc, sdk.APIError) else exc)
    because = f" ({cause})" if cause else ""
    status = getattr(exc, "status_code", None) if isinstance(exc, sdk.APIStatusError) else None
    if network in ("timeout", "connect timeout") and mid_stream:
        kind, msg = "incomplete_stream", f"{url} stopped sending mid-answer (nothing for {wait}); try again later or raise --timeout."
    elif network == "connect timeout":
        kind, msg = "timeout", f"could not connect to {url} within {wait}{tries}: {connection_hint}"
    elif network == "timeout":
        kind, msg = "timeout", f"{url} did not answer within {wait}{tries}; try again later or raise --timeout."
    elif network == "connect":
        kind, msg = "connection", f"cannot reach {url}{tries}: {connection_hint}"
    elif network == "broken" and mid_stream:
        kind, msg = "incomplete_stream", f"the connection to {url} broke off mid-answer{because}; try again."
    elif network == "broken":
        kind, msg = "connection", (f"{url} broke off its response before it was complete{tries}{because}; "
                                   f"try again, or check the server's logs.")
    elif isinstance(exc, sdk.AuthenticationError):
        kind, msg = "auth", f"{url} rejected the API key (HTTP 401): check {provider.key_env or spec.api_key_env or key_var}."
    elif isinstance(exc, sdk.PermissionDeniedError):
        kind, msg = "auth", f"{url} refused access to model '{spec.api_model}' (HTTP 403): check the key's permissions."
    elif isinstance(exc, sdk.NotFoundError):
        kind, msg = "not_found", f"{url} has no model '{spec.api_model}'{not_found} (HTTP 404): check --model and --base-url."
    elif isinstance(exc, sdk.RateLimitError):
        after = exc.response.headers.get("retry-after")
        asks = f"; it asks to wait {after} s" if after else ""
        kind, msg = "rate_limit", f"{url} rate-limited the call (HTTP 429){tries}{asks}: wait and try again, or check your quota."
    elif status is not None:
        kind = ("server" if status >= 500 else "timeout" if status == 408
                else "context_length" if status in (400, 413, 422) and _over_context(exc) else "bad_request")
        msg = (f"{url} failed with HTTP {status} for model '{spec.id}'{tries}: "
               f"{detail(getattr(exc, 'message', ''))}")
    elif isinstance(exc, UnicodeEncodeError):  # raised while building the request: our text, not their reply
        kind, msg = "bad_request", (f"the request to {url} could not be encoded, so it was not sent ({detail(exc)}); "
                                    f"the prompt holds text that is not valid Unicode.")
    elif isinstance(exc, _MALFORMED):  # json.JSONDecodeError, SDK parse errors, events in an unexpected shape
        what = "not valid JSON" if "JSONDecodeError" in type(exc).__name__ else f"unexpected {type(exc).__name__}"
        kind, msg = "malformed", f"{url} sent a malformed response ({what}): is it {protocol}?"
    elif isinstance(exc, sdk.APIError):
        kind, msg = "", f"{url} returned an error for model '{spec.id}': {detail(exc)}"
    else:
        text = detail(exc)
        kind, msg = "", f"calling {url} failed ({type(exc).__name__}){': ' + text if text else ''}"
    return ProviderError(redact(msg, secret), kind=kind)
