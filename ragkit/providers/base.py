"""What every provider returns and the one method it must have.

A provider is one wire protocol (OpenAI Chat Completions, Anthropic Messages, the embedded local
model). Everything above it (answer.py, evals) sees only `Provider.complete` and `Completion`.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ragkit.errors import ConfigError


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

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Provider(Protocol):
    def complete(self, system: str, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """Sends one system + user turn. on_text given => stream, calling it with each text delta."""
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
    raise ConfigError(
        f"{wanted} is not set: model '{model_id}' needs it. Export {wanted}=... "
        f"(or use --base-url for a key-less local endpoint)."
    )


def redact(text: str, secret: str | None) -> str:
    """Removes the key from any text that might be shown (SDK error bodies can echo headers)."""
    if secret and secret != PLACEHOLDER_KEY and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def explain_sdk_error(sdk, exc: Exception, *, provider, key_var: str, connection_hint: str,
                      not_found: str, protocol: str) -> str:
    """One sentence for a failed call through the openai or anthropic SDK, key redacted.

    Both SDKs share one exception hierarchy (APITimeoutError, APIConnectionError, APIStatusError and
    its subclasses), so one mapping serves both; `sdk` is the imported module. The other arguments
    carry the protocol's own wording: the base-URL variable, the 404 cause, the protocol's name.
    """
    url, spec, retries = provider.base_url, provider.spec, provider.max_retries
    if isinstance(exc, sdk.APITimeoutError):
        msg = (f"{url} did not answer within {provider.timeout_s:g} s (tried {retries + 1} times); "
               f"try again later or raise --timeout.")
    elif isinstance(exc, sdk.APIConnectionError):
        msg = f"cannot reach {url}: {connection_hint}"
    elif isinstance(exc, sdk.AuthenticationError):
        msg = f"{url} rejected the API key (HTTP 401): check {provider.key_env or spec.api_key_env or key_var}."
    elif isinstance(exc, sdk.PermissionDeniedError):
        msg = f"{url} refused access to model '{spec.api_model}' (HTTP 403): check the key's permissions."
    elif isinstance(exc, sdk.NotFoundError):
        msg = f"{url} has no model '{spec.api_model}'{not_found} (HTTP 404): check --model and --base-url."
    elif isinstance(exc, sdk.RateLimitError):
        msg = (f"{url} kept rate-limiting (HTTP 429) after {retries} retries: "
               f"wait and try again, or check your quota.")
    elif isinstance(exc, sdk.APIStatusError):
        detail = short(getattr(exc, "message", "") or "")
        msg = f"{url} failed with HTTP {exc.status_code} for model '{spec.id}' after {retries} retries: {detail}"
    elif isinstance(exc, ValueError):  # json.JSONDecodeError and SDK parse errors
        msg = f"{url} sent a malformed response (not valid JSON): is it {protocol}?"
    elif isinstance(exc, sdk.APIError):
        msg = f"{url} returned an error for model '{spec.id}': {short(str(exc))}"
    else:
        msg = f"calling {url} failed ({type(exc).__name__}): {short(str(exc))}"
    return redact(msg, provider._key)
