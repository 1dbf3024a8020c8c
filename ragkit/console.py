"""What ragkit prints on the user's terminal besides results: warnings, and names made safe to print.

A file name is data from the folder being read: a name holding a newline could forge an output
line ("files: 0 skipped"), an escape sequence could rewrite the terminal. Every path or name ragkit
prints goes through `safe_path`; every warning goes through `warn`, one line with one prefix.

A name can also hold bytes that are not UTF-8 (`caf\\xe9.txt` written in Latin-1): Python reads them
as lone surrogates, which no encoder accepts (SQLite, JSON bodies, the terminal). A name becomes
text once, where it is found (`encodable`, used by loaders.discover_files): each such byte is shown
as its escape, the same one `safe_path` prints, so citations and warnings name the file alike.
"""
from __future__ import annotations

import re
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
    if 0xDC80 <= n <= 0xDCFF:  # an undecodable byte, surrogate-escaped by Python: show the byte itself
        n -= 0xDC00
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")   # Python never pairs them in a str: each one is lone


def encodable(text: str) -> str:
    """`text` with every lone surrogate (an undecodable byte of a file name) replaced by its visible
    escape (`caf\\xe9.txt`), so it can be stored, sent and printed; any other text is returned as is."""
    return _LONE_SURROGATE.sub(lambda m: _escape(m.group()), text) if _LONE_SURROGATE.search(text) else text


def require_text(text: str, what: str) -> str:
    """`text` unchanged, or InputError when it holds a lone surrogate (a byte that was not UTF-8 in
    a command-line argument, or a "\\ud800" escape in JSON): a question is refused, not guessed at."""
    found = _LONE_SURROGATE.search(text)
    if found:
        from ragkit.errors import InputError

        raise InputError(f"{what} is not valid text: character {found.start() + 1} ({_escape(found.group())}) is a "
                         f"byte that is not UTF-8 or a lone surrogate; write it again in UTF-8.")
    return text


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
