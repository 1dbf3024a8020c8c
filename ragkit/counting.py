"""Counting a corpus (file or folder) in a model's tokens, per file and in total."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ragkit.errors import InputError


@dataclass(frozen=True)
class FileCount:
    source: str
    documents: int
    tokens: int


@dataclass(frozen=True)
class CorpusCount:
    path: str
    model: str
    encoding: str
    exact: bool
    margin: float            # fraction the planner adds to estimated counts (0 when exact)
    files: tuple[FileCount, ...]
    documents: int
    tokens: int              # as counted by `encoding`
    planning_tokens: int     # tokens inflated by the margin: what the planner compares to the budget

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"] = [asdict(f) for f in self.files]
        return d


def count_documents(docs, model, *, use_cache: bool = True) -> list[int]:
    """Token count of each Document's text in `model`'s counting encoding (cached by content hash)."""
    from ragkit.tokens import CountCache, counter_for

    counter = counter_for(model)
    texts = [d.text for d in docs]
    if not use_cache:
        return counter.count_many(texts)
    cache = CountCache()
    try:
        return cache.count_many(counter, texts)
    finally:
        cache.close()


def count_path(path, model, *, include=(), exclude=(), text_field: str = "text",
               use_cache: bool = True) -> CorpusCount:
    """Counts every readable document under `path`; InputError when there is none."""
    from ragkit.loaders import load_documents
    from ragkit.models import get_model
    from ragkit.tokens import counter_for

    spec = get_model(model)
    counter = counter_for(spec)
    docs = load_documents(path, include, exclude, text_field)
    counts = count_documents(docs, spec, use_cache=use_cache)
    per_file: dict[str, list[int]] = {}
    for doc, n in zip(docs, counts):
        per_file.setdefault(doc.source, []).append(n)
    files = tuple(FileCount(src, len(ns), sum(ns)) for src, ns in per_file.items())
    total = sum(counts)
    if not files:
        raise InputError(f"no readable documents under {path}.")
    return CorpusCount(str(path), spec.id, counter.encoding_name, counter.exact, counter.margin, files,
                       len(docs), total, counter.planning_tokens(total))
