"""The one passage type: which characters of which document. Every passage ragkit hands on — a
chunk of the index, a search hit, a packed chunk, a numbered source in the prompt — is a Span
with a few fields of its own, so code that needs "where is this text from" reads the same fields
everywhere (prompt.as_sources, citations, JSON output)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Span:
    """`text == document.text[start_char:end_char]` of the document `doc_id` in the file `source`."""

    doc_id: str        # stable id: the path relative to the corpus root (+ "#record" for JSON Lines)
    source: str        # the file, relative to the corpus root
    start_char: int
    end_char: int
    text: str
    title: str = ""    # the document's title ("" = none)

    def to_dict(self) -> dict:
        return asdict(self)
