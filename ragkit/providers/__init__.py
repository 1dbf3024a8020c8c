"""Model providers, one module per wire protocol, behind one `Provider.complete` method.

    from ragkit.models import get_model
    from ragkit.providers import provider_for
    completion = provider_for(get_model("gpt-4o-mini")).complete(system, prompt, max_tokens=300)

The SDKs are imported only when a call is made, so listing models or planning stays fast.
"""
from __future__ import annotations

import math

from ragkit.errors import ConfigError
from ragkit.providers.base import Completion, Provider

__all__ = ["Completion", "Provider", "provider_for"]


def provider_for(spec, *, base_url: str | None = None, timeout_s: float = 60.0, max_retries: int = 2) -> Provider:
    """The provider for a registry entry. base_url overrides the registry's and the SDK's (--base-url)."""
    _check_limits(timeout_s, max_retries)
    if spec.provider == "openai":
        from ragkit.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(spec, base_url=base_url, timeout_s=timeout_s, max_retries=max_retries)
    if spec.provider == "anthropic":
        from ragkit.providers.anthropic_messages import AnthropicProvider

        return AnthropicProvider(spec, base_url=base_url, timeout_s=timeout_s, max_retries=max_retries)
    if spec.provider == "local":
        if base_url:
            raise ConfigError(f"model '{spec.id}' runs embedded in this process; --base-url does not apply. "
                              f"To use a local server, pick an OpenAI-compatible model entry instead.")
        return _local_provider(spec, timeout_s=timeout_s)
    raise ConfigError(f"model '{spec.id}' has provider '{spec.provider}', which ragkit does not know: "
                      f"use openai, anthropic or local.")


def _check_limits(timeout_s, max_retries) -> None:
    """Library callers get the CLI's checks: a zero timeout would be reported as a network failure."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ConfigError(f"timeout {timeout_s!r}: use a number of seconds above 0, e.g. 60.")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"retries {max_retries!r}: use a whole number from 0 (no retry) up, e.g. 2.")


def _local_provider(spec, *, timeout_s: float) -> Provider:
    try:
        from ragkit.providers import local
    except ImportError as exc:
        raise ConfigError(f"the local model needs the [local] extra: pip install 'ragkit[local]' ({exc}).") from None
    # The local module (owned by the local-model engineer) may expose a factory or a class.
    factory = getattr(local, "provider_for", None) or getattr(local, "LocalProvider", None)
    if factory is None:
        raise ConfigError("ragkit.providers.local has no LocalProvider; reinstall ragkit.")
    return factory(spec)
