"""The "local" provider: the embedded Qwen2.5-Coder model, behind the same `complete` as the HTTP providers.

The model is loaded once per process (ragkit.local_model.get_local_model) and shared by every
LocalProvider, so a Session asking many questions pays the load once. Token counts come from the
model's own tokenizer, so they are exact (usage_reported=True).
"""
from __future__ import annotations

import sys
from typing import Callable

from ragkit.providers.base import Completion


class LocalProvider:
    """Provider for registry entries with provider = "local". Thread-safe: generations are serialised."""

    def __init__(self, spec, *, log: Callable[[str], None] | None = None):
        self.spec = spec
        # The first use on a machine converts the weights (about a minute): say so on stderr.
        self._log = log or (lambda msg: print(f"ragkit: local model: {msg}", file=sys.stderr, flush=True))

    def complete(self, system: str, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None, schema=None) -> Completion:
        model = self._model()
        constraint, enforcement = self._constraint(model, schema)
        result = model.generate(system, prompt, max_tokens=max_tokens, temperature=temperature,
                                on_text=on_text if schema is None else None, constraint=constraint)
        return Completion(text=result.text, input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                          ttft_s=result.ttft_s, latency_s=result.latency_s, model=self.spec.api_model,
                          finish_reason=result.finish_reason, enforcement=enforcement if schema is not None else "")

    def _constraint(self, model, schema):
        """(grammar constraint or None, enforcement): constrained decoding unless the registry says
        structured_output = "none" or llguidance is not installed (then: validation only)."""
        from ragkit import grammar

        if schema is None or self.spec.structured_output != "grammar" or not grammar.available():
            return None, "validated"
        from ragkit.local_model import STOP_TOKEN_IDS

        vocab = int(model.model.config.vocab_size)
        eos = max(STOP_TOKEN_IDS)  # <|im_end|>: the end of the assistant's turn
        return grammar.JsonConstraint.for_tokenizer(model.tokenizer, schema.wire(strict=True),
                                                    vocab_size=vocab, eos=eos), "grammar"

    def count_tokens(self, system: str, prompt: str) -> int:
        """Exact input tokens (chat template included) for this system + user turn."""
        return len(self._model().prompt_ids(system, prompt))

    def _model(self):
        from ragkit.local_model import get_local_model, weights_for

        return get_local_model(weights_for(self.spec.api_model), log=self._log)

    def __repr__(self) -> str:
        return f"LocalProvider({self.spec.id!r})"
