"""The one place that removes API keys from text ragkit shows or stores (errors, eval results).

Redact first, cut later: a key that straddles a length limit must not survive as a fragment.
Removed: every key-like token (sk-..., Bearer ..., x-api-key/api_key values, Google AIza... keys)
and every piece of 8 or more characters of any configured key (the *_API_KEY variables ragkit
reads, plus any key a caller passes), wherever it sits in the text.
"""
from __future__ import annotations

import os
import re

KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOGETHER_API_KEY")
MASK = "***"
MIN_PIECE = 8                      # a key fragment this long is still a secret worth hiding
_NOT_SECRET = {"ragkit-no-key"}    # the placeholder sent to key-less local servers

_KEY_LIKE = [
    (re.compile(r"(?i)\bBearer\s+[^\s\"',;}]{8,}"), "Bearer " + MASK),
    # header or field values: x-api-key: ..., "api_key": "...", apikey=... (not OPENAI_API_KEY=..., a hint)
    (re.compile(r"(?i)\b(x-api-key|x-goog-api-key|api[-_]?key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]{8,}"),
     r"\1\2" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-" + MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), MASK),
]


def configured_keys() -> list[str]:
    """The keys present in the environment under the variables ragkit knows."""
    return [v for v in (os.environ.get(name, "").strip() for name in KEY_VARS) if v]


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every key-like token and every >= 8-character piece of a known key replaced by ***."""
    text = str(text)
    keys = {k for k in (*secrets, *configured_keys()) if k and k not in _NOT_SECRET}
    for key in sorted(keys, key=len, reverse=True):
        text = _mask_pieces(text, key)
    for pattern, replacement in _KEY_LIKE:
        text = pattern.sub(replacement, text)
    return text


def _mask_pieces(text: str, key: str) -> str:
    """Masks each run of text covered by 8-character windows of `key` (i.e. any shared piece >= 8)."""
    if len(key) < MIN_PIECE:  # a short key can only be hidden whole
        return text.replace(key, MASK) if len(key) >= 4 else text
    grams = {key[i:i + MIN_PIECE] for i in range(len(key) - MIN_PIECE + 1)}
    covered_to = -1
    spans: list[list[int]] = []
    for i in range(len(text) - MIN_PIECE + 1):
        if text[i:i + MIN_PIECE] in grams:
            if spans and i <= covered_to:
                spans[-1][1] = i + MIN_PIECE
            else:
                spans.append([i, i + MIN_PIECE])
            covered_to = i + MIN_PIECE
    for start, end in reversed(spans):
        text = text[:start] + MASK + text[end:]
    return text
