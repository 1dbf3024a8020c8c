"""What ragkit prints on the user's terminal besides results: warnings, and names made safe to print.

A file name is data from the folder being read: a name holding a newline could forge an output
line ("files: 0 skipped"), an escape sequence could rewrite the terminal. Every path or name ragkit
prints goes through `safe_path`; every warning goes through `warn`, one line with one prefix.
"""
from __future__ import annotations

import sys
import unicodedata

WARNING_PREFIX = "ragkit: warning: "

# Invisible characters that reorder the text around them (Trojan Source); shown escaped, not obeyed.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    # Cc: control characters (newline, ESC, DEL...); Cs: undecodable bytes of a file name (lone
    # surrogates, which would also crash the encoder); Zl/Zp: Unicode line and paragraph breaks.
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def safe_path(text) -> str:
    """`text` (a path, a document id, a title) on one line: control, line-break and bidi characters
    are shown as Python-style escapes (a newline as \\n); everything else, including non-ASCII
    letters, is left as it is."""
    text = str(text)
    if not any(_unsafe(ch) for ch in text):
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def warn(message: str) -> None:
    """One warning line on stderr, `ragkit: warning: <message>`, with any line breaks in the message
    (e.g. from a file name) escaped so it stays one line."""
    print(WARNING_PREFIX + safe_path(message), file=sys.stderr, flush=True)
