"""OpenAI Chat Completions over the `openai` SDK: OpenAI itself and every compatible endpoint
(Gemini's OpenAI endpoint, Together AI, vLLM, Ollama, llama.cpp) chosen by base URL.

Base URL, first that is set: --base-url, the registry entry's base_url, OPENAI_BASE_URL, the SDK
default (api.openai.com). Key: the registry entry's api_key_env (OPENAI_API_KEY, GEMINI_API_KEY,
TOGETHER_API_KEY, ...); with a key-less local endpoint a placeholder is sent.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Callable

from ragkit.errors import ProviderError
from ragkit.providers.base import Completion, StreamTracker, resolve_key, sdk_error

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class OpenAICompatProvider:
    """One model on one OpenAI-compatible endpoint. Thread-safe (the SDK client is)."""

    def __init__(self, spec, *, base_url: str | None = None, timeout_s: float = 60.0, max_retries: int = 2):
        self.spec = spec
        env_url = os.environ.get("OPENAI_BASE_URL", "").strip() or None
        # A registry base_url (Gemini, Together) wins over OPENAI_BASE_URL, which is meant for OpenAI models.
        self.base_url = base_url or spec.base_url or env_url or DEFAULT_OPENAI_URL
        overridden = bool(base_url) or (not spec.base_url and bool(env_url))
        env_names = [spec.api_key_env] if spec.api_key_env else ["OPENAI_API_KEY"]
        self._key, self.key_env = resolve_key(env_names, base_url=self.base_url,
                                              base_url_overridden=overridden, model_id=spec.id)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._client = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatProvider(model={self.spec.api_model!r}, base_url={self.base_url!r})"

    def _sdk(self):
        if self._client is None:
            import openai  # heavy: only when a call is made

            self._client = openai.OpenAI(api_key=self._key, base_url=self.base_url,
                                         timeout=self.timeout_s, max_retries=self.max_retries)
        return self._client

    def complete(self, system: str, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None, schema=None) -> Completion:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        client = self._sdk()
        start = time.perf_counter()
        tracker = None if on_text is None else StreamTracker(
            on_text, url=self.base_url, end_marker="finish_reason", protocol="an OpenAI-compatible endpoint")
        extra, enforcement = self._response_format(schema)
        try:
            if tracker is None:
                done = self._plain(client, messages, max_tokens, temperature, start, extra)
            else:
                done = self._stream(client, messages, max_tokens, temperature, tracker, extra)
            return replace(done, enforcement=enforcement) if schema is not None else done
        except ProviderError:
            raise
        except Exception as exc:  # every SDK/parse failure becomes one sentence, never a traceback
            if tracker is not None and exc is tracker.callback_error:
                raise  # the caller's own on_text failed: theirs to see as it is
            raise self._error(exc, mid_stream=tracker is not None and tracker.mid_stream) from None

    def _response_format(self, schema) -> tuple[dict, str]:
        """(extra create() kwargs, enforcement) for a schema: strict json_schema where the registry says the
        model has it, JSON mode where it has only that, else nothing (the reply is validated either way)."""
        mode = self.spec.structured_output
        if schema is None or mode == "none":
            return {}, "validated"
        if mode == "strict":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": schema.name, "schema": schema.wire(strict=True), "strict": True}}}, "strict"
        return {"response_format": {"type": "json_object"}}, "validated"

    def _plain(self, client, messages, max_tokens, temperature, start, extra) -> Completion:
        resp = client.chat.completions.create(model=self.spec.api_model, messages=messages,
                                              max_tokens=max_tokens, temperature=temperature, **extra)
        latency = time.perf_counter() - start
        if not getattr(resp, "choices", None):
            raise ProviderError(f"{self.base_url} answered without any choices; is it an OpenAI-compatible "
                                f"Chat Completions endpoint?", kind="malformed")
        choice = resp.choices[0]
        text = (choice.message.content or "") if choice.message else ""
        usage = resp.usage
        return Completion(
            text=text,
            input_tokens=int(usage.prompt_tokens) if usage else self._estimate(messages),
            output_tokens=int(usage.completion_tokens) if usage else self._estimate_text(text),
            ttft_s=latency, latency_s=latency, model=resp.model or self.spec.api_model,
            finish_reason=choice.finish_reason or "stop", usage_reported=usage is not None,
        )

    def _stream(self, client, messages, max_tokens, temperature, tracker: StreamTracker, extra) -> Completion:
        stream = client.chat.completions.create(model=self.spec.api_model, messages=messages,
                                                max_tokens=max_tokens, temperature=temperature, stream=True,
                                                stream_options={"include_usage": True}, **extra)
        usage = None
        model = None
        finish = None
        for chunk in stream:
            tracker.event()
            model = model or getattr(chunk, "model", None)
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            for choice in chunk.choices or ():
                tracker.text(choice.delta.content if choice.delta else None)
                if choice.finish_reason:
                    finish = choice.finish_reason
                    tracker.end()
        text, ttft, latency = tracker.result()  # no finish_reason: IncompleteStream
        return Completion(
            text=text,
            input_tokens=int(usage.prompt_tokens) if usage else self._estimate(messages),
            output_tokens=int(usage.completion_tokens) if usage else self._estimate_text(text),
            ttft_s=ttft, latency_s=latency,
            model=model or self.spec.api_model, finish_reason=finish, usage_reported=usage is not None,
        )

    # Some servers (old vLLM/llama.cpp builds) send no usage: fall back to our own count, flagged.
    def _estimate_text(self, text: str) -> int:
        from ragkit.tokens import counter_for

        return counter_for(self.spec).count(text)

    def _estimate(self, messages) -> int:
        return sum(self._estimate_text(m["content"]) for m in messages) + 4 * len(messages)

    def _error(self, exc: Exception, *, mid_stream: bool = False) -> ProviderError:
        import openai

        return sdk_error(
            openai, exc, provider=self, key_var="OPENAI_API_KEY", mid_stream=mid_stream,
            connection_hint="check the URL (--base-url / OPENAI_BASE_URL) and that the server is running.",
            not_found=" or no Chat Completions route", protocol="an OpenAI-compatible endpoint")
