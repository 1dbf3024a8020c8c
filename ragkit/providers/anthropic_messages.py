"""Anthropic Messages over the `anthropic` SDK (Claude 3.5 Sonnet, Claude 3.5 Haiku, ...).

Base URL: --base-url, the registry entry's base_url, ANTHROPIC_BASE_URL, the SDK default.
Key: the registry entry's api_key_env (ANTHROPIC_API_KEY), always passed explicitly: without it
this SDK version goes looking for profiles under ~/.config/anthropic.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Callable

from ragkit.errors import ProviderError
from ragkit.providers.base import Completion, StreamTracker, resolve_key, sdk_error

DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicProvider:
    """One Claude model. Thread-safe (the SDK client is)."""

    def __init__(self, spec, *, base_url: str | None = None, timeout_s: float = 60.0, max_retries: int = 2):
        self.spec = spec
        env_url = os.environ.get("ANTHROPIC_BASE_URL", "").strip() or None
        self.base_url = base_url or spec.base_url or env_url or DEFAULT_ANTHROPIC_URL
        overridden = bool(base_url) or bool(env_url)
        env_names = [spec.api_key_env] if spec.api_key_env else ["ANTHROPIC_API_KEY"]
        self._key, self.key_env = resolve_key(env_names, base_url=self.base_url,
                                              base_url_overridden=overridden, model_id=spec.id)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._client = None

    def __repr__(self) -> str:  # never the key
        return f"AnthropicProvider(model={self.spec.api_model!r}, base_url={self.base_url!r})"

    def _sdk(self):
        if self._client is None:
            import anthropic  # heavy (~2 s): only when a call is made

            self._client = anthropic.Anthropic(api_key=self._key, base_url=self.base_url,
                                               timeout=self.timeout_s, max_retries=self.max_retries)
        return self._client

    def complete(self, system: str, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None, schema=None) -> Completion:
        kwargs = dict(model=self.spec.api_model, max_tokens=max_tokens, system=system,
                      messages=[{"role": "user", "content": prompt}],
                      # this SDK version has no temperature kwarg; the API still takes the field
                      extra_body={"temperature": temperature})
        tool = schema is not None and self.spec.structured_output == "tool"
        if tool:  # a forced tool call whose input schema is the answer's: the reply is the tool's input
            kwargs.update(tools=[{"name": schema.name, "description": "Record the answer and the sources of each field.",
                                  "input_schema": schema.wire()}],
                          tool_choice={"type": "tool", "name": schema.name})
            on_text = None  # a tool's input streams as partial JSON: nothing partial is shown
        client = self._sdk()
        start = time.perf_counter()
        tracker = None if on_text is None else StreamTracker(
            on_text, url=self.base_url, end_marker="message_stop", protocol="an Anthropic Messages endpoint")
        try:
            if tracker is None:
                msg = client.messages.create(**kwargs)
                latency = time.perf_counter() - start
                done = self._completion(msg, latency, latency, tool=schema.name if tool else None)
                return replace(done, enforcement="tool" if tool else "validated") if schema is not None else done
            return self._stream(client, kwargs, tracker)
        except ProviderError:
            raise
        except Exception as exc:
            if tracker is not None and exc is tracker.callback_error:
                raise  # the caller's own on_text failed: theirs to see as it is
            raise self._error(exc, mid_stream=tracker is not None and tracker.mid_stream) from None

    def _stream(self, client, kwargs, tracker: StreamTracker) -> Completion:
        started = False
        with client.messages.stream(**kwargs) as stream:
            for event in stream:
                tracker.event()
                if event.type == "message_start":
                    started = True
                elif event.type == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
                    tracker.text(event.delta.text)
                elif event.type == "message_stop":
                    tracker.end()
            if tracker.events and not started:  # the SDK would fail on an assert with no message
                raise ProviderError(f"{self.base_url} sent a stream without a message_start event: "
                                    f"is it an Anthropic Messages endpoint?", kind="malformed")
            _text, ttft, latency = tracker.result()  # no message_stop: IncompleteStream
            msg = stream.get_final_message()
        return self._completion(msg, ttft, latency)

    def count_tokens(self, text: str) -> int:
        """Claude's own count of `text` as one user message (messages.count_tokens; needs a key)."""
        try:
            result = self._sdk().messages.count_tokens(
                model=self.spec.api_model, messages=[{"role": "user", "content": text}])
            return int(result.input_tokens)
        except Exception as exc:
            raise self._error(exc) from None

    def _completion(self, msg, ttft: float, latency: float, tool: str | None = None) -> Completion:
        if msg is None or getattr(msg, "usage", None) is None:
            raise ProviderError(f"{self.base_url} sent an incomplete Messages response (no usage); "
                                f"is it an Anthropic-compatible endpoint?", kind="malformed")
        text = "".join(getattr(block, "text", "") or "" for block in (msg.content or ())
                       if getattr(block, "type", "") == "text")
        if tool is not None:  # the forced tool's input is the answer (JSON); no tool_use block: the text, validated
            uses = [b for b in (msg.content or ()) if getattr(b, "type", "") == "tool_use" and b.name == tool]
            text = json.dumps(uses[0].input, ensure_ascii=False) if uses else text
        return Completion(
            text=text, input_tokens=int(msg.usage.input_tokens or 0), output_tokens=int(msg.usage.output_tokens or 0),
            ttft_s=ttft, latency_s=latency, model=msg.model or self.spec.api_model,
            finish_reason=_STOP.get(msg.stop_reason or "end_turn", msg.stop_reason or "stop"),
        )

    def _error(self, exc: Exception, *, mid_stream: bool = False) -> ProviderError:
        import anthropic

        return sdk_error(
            anthropic, exc, provider=self, key_var="ANTHROPIC_API_KEY", mid_stream=mid_stream,
            connection_hint="check the URL (--base-url / ANTHROPIC_BASE_URL) and your network.",
            not_found="", protocol="an Anthropic Messages endpoint")
