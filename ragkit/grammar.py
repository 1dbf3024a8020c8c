"""Constrained decoding for the embedded model: a JSON Schema compiled to a token mask, so a token that
would break the schema is never sampled.

Library: llguidance (benchmarks/bench_grammar_libs.py compared the four that install here on the
model's tokenizer). llguidance compiles a schema in milliseconds (outlines-core: 2-4 s per schema,
and ragkit's schemas change per question), fills a mask in ~0.07 ms, and is one 3 MB wheel without
dependencies (xgrammar, as fast, pulls in triton, ~400 MB, unused on CPU; lm-format-enforcer does not
import with transformers 5). Its torch helper applies the mask in ~0.8 s on CPU, so the mask is applied
here with numpy instead (~1 ms).

    constraint = JsonConstraint.for_tokenizer(tokenizer, schema, vocab_size=151936, eos=151645)
    logits = constraint.mask(logits); constraint.advance(token); constraint.done
"""
from __future__ import annotations

import threading

from ragkit.errors import RagkitError

_tokenizers: dict[int, object] = {}
_lock = threading.Lock()


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


class JsonConstraint:
    """One generation's grammar state. Not shared between generations."""

    def __init__(self, matcher, vocab_size: int):
        import llguidance.torch as llt

        self._matcher = matcher
        self._vocab = vocab_size
        self._bitmask = llt.allocate_token_bitmask(1, vocab_size)

    @classmethod
    def for_tokenizer(cls, tokenizer, schema: dict, *, vocab_size: int, eos: int) -> "JsonConstraint":
        import llguidance
        import llguidance.hf

        with _lock:  # building the token trie takes seconds: once per tokenizer and process
            key = id(tokenizer)
            if key not in _tokenizers:
                _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
            lltok = _tokenizers[key]
        # compact JSON: a small model given free whitespace can pad forever
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False})
        matcher = llguidance.LLMatcher(lltok, grammar)
        if matcher.is_error():
            raise RagkitError(f"the schema cannot be compiled to a grammar: {matcher.get_error()}")
        return cls(matcher, vocab_size)

    def mask(self, logits):
        """logits with every token the grammar forbids set to -inf (a new tensor)."""
        import llguidance.torch as llt
        import numpy as np
        import torch

        llt.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        allowed = np.unpackbits(self._bitmask[0].numpy().view(np.uint8), bitorder="little")[: logits.shape[-1]]
        out = logits.clone()
        out[torch.from_numpy(allowed == 0)] = float("-inf")
        return out

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RagkitError(f"constrained decoding: token {token} was refused by the grammar "
                              f"({self._matcher.get_error() or 'no reason given'}).")

    @property
    def done(self) -> bool:
        """True once the JSON is complete (only the end-of-turn token may follow)."""
        return self._matcher.is_stopped()
