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


def api_counts(spec, texts: list[str], *, base_url: str | None = None) -> list[int]:
    """Exact counts from the model's own count-tokens API (Anthropic's messages.count_tokens).

    The API counts a whole message, framing included; that framing (measured once on a one-token
    message) is taken off so the figures add up like the local ones.
    """
    from ragkit.errors import ConfigError

    if spec.provider != "anthropic":
        raise ConfigError(f"--exact needs a count-tokens API; ragkit has one for Anthropic models only. "
                          f"{spec.name}'s counts are " + ("already exact." if spec.exact_tokens else
                          f"estimates ({spec.encoding} + {spec.token_margin:.0%} margin)."))
    from ragkit.providers import provider_for

    provider = provider_for(spec, base_url=base_url)
    framing = provider.count_tokens(".") - 1
    return [max(0, provider.count_tokens(t) - framing) for t in texts]


def count_path(path, model, *, include=(), exclude=(), text_field: str = "text",
               use_cache: bool = True, exact_api: bool = False, base_url: str | None = None) -> CorpusCount:
    """Counts every readable document under `path`; InputError when there is none.

    exact_api: ask the model's count-tokens API instead of estimating (one call per file).
    """
    from ragkit.loaders import load_documents
    from ragkit.models import get_model
    from ragkit.tokens import counter_for

    spec = get_model(model)
    counter = counter_for(spec)
    docs = load_documents(path, include, exclude, text_field)
    by_file: dict[str, list] = {}
    for doc in docs:
        by_file.setdefault(doc.source, []).append(doc)
    if exact_api:
        texts = ["\n\n".join(d.text for d in group) for group in by_file.values()]
        totals = api_counts(spec, texts, base_url=base_url)
        files = tuple(FileCount(src, len(group), n) for (src, group), n in zip(by_file.items(), totals))
        total = sum(totals)
        return CorpusCount(str(path), spec.id, f"{spec.provider} count_tokens API", True, 0.0, files,
                           len(docs), total, total)
    counts = count_documents(docs, spec, use_cache=use_cache)
    per_doc = {id(d): n for d, n in zip(docs, counts)}
    files = tuple(FileCount(src, len(group), sum(per_doc[id(d)] for d in group)) for src, group in by_file.items())
    total = sum(counts)
    if not files:
        raise InputError(f"no readable documents under {path}.")
    return CorpusCount(str(path), spec.id, counter.encoding_name, counter.exact, counter.margin, files,
                       len(docs), total, counter.planning_tokens(total))
