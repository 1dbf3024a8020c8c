"""CLI commands: index, search (a thin layer over ragkit.corpus)."""
from __future__ import annotations

import json
import sys

import click

from ragkit.embed_export import BACKEND_KEYS


def _hit_dict(h) -> dict:
    return {"source": h.source, "doc_id": h.doc_id, "title": h.title, "score": h.score,
            "span": [h.start_char, h.end_char], "position": h.position, "text": h.text}


INDEX_DIR_OPTION = click.option("-d", "--index-dir", type=click.Path(file_okay=False),
                          help="Index folder (default: PATH/.ragkit/).")
_embed_model = click.option("-e", "--embed-model", envvar="RAGKIT_EMBED_MODEL", default=None,
                            help="sentence-transformers model name or path (default all-MiniLM-L6-v2, bundled; "
                                 "an existing index keeps its own).")

STORE_OPTION = click.option("--store", default=None, envvar="RAGKIT_STORE", metavar="URL",
                            help="Where the index lives: the FAISS folder (default), milvus-lite:PATH (embedded "
                                 "Milvus) or milvus://HOST:19530/COLLECTION (a Milvus server).")
WHERE_OPTION = click.option("--where", default=None, metavar="EXPR",
                            help="Only chunks matching this Milvus filter, e.g. 'source like \"docs/%\"' "
                                 "(a Milvus --store only).")
nprobe_option = click.option(
    "--nprobe", type=click.IntRange(1), default=None,
    help="IVF-PQ indexes (very large corpora) only: clusters a query scans; more is slower and finds more "
         "(default: the one `ragkit index` measured to reach recall@10 0.95; on `index`, sets that default).")

rerank_option = click.option(
    "--rerank", type=click.IntRange(0), default=None, metavar="N",
    help="IVF-PQ indexes only: re-score the top N approximate candidates exactly (default max(100, 10 x k); "
         "0 keeps the approximate order: faster, lower recall).")

embed_backend_option = click.option(
    "--embed-backend", type=click.Choice(BACKEND_KEYS, case_sensitive=False),
    default=None, help="How the embedding model runs (default onnx-int8, or $RAGKIT_EMBED_BACKEND; "
                       "an existing index keeps its own, and queries use the index's).")


@click.command("index", short_help="Build or update the search index of a file or folder.")
@click.argument("path", type=click.Path(exists=True))
@INDEX_DIR_OPTION
@_embed_model
@embed_backend_option
@STORE_OPTION
@click.option("-i", "--include", multiple=True, help="Glob of files to index (repeatable), e.g. '*.md'.")
@click.option("-x", "--exclude", multiple=True, help="Glob of files to skip (repeatable), e.g. 'drafts/*'.")
@click.option("-f", "--text-field", default=None, help="JSON Lines field holding the text (default: text).")
@click.option("--chunk-tokens", type=int, default=None, help="Max chunk size in the embedder's word pieces (default 240).")
@click.option("--overlap-tokens", type=int, default=None, help="Overlap between chunks in word pieces (default 32).")
@click.option("--rebuild", is_flag=True, help="Discard the index and embed everything again (after changing settings).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where changed files are chunked and embedded: this process, or Ray (needs ragkit[ray]).")
@click.option("--ray-address", default=None, help="Ray cluster to join (e.g. ray://HEAD:10001); default: a local instance.")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None,
              help="Embedding actors (default: one per GPU, else one per CPU of the cluster).")
@click.option("--ray-batch-size", type=click.IntRange(min=1), default=None,
              help="Texts per call to an embedding actor (default 256, measured: README, Ray cluster).")
@nprobe_option
@click.option("-q", "--quiet", "--no-progress", "quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def index_cmd(path, index_dir, embed_model, embed_backend, store, include, exclude, text_field, chunk_tokens,
              overlap_tokens, rebuild, engine, ray_address, ray_actors, ray_batch_size, nprobe, quiet, as_json):
    """Build or update the search index of a file or folder (only new or changed files are embedded).

    \b
    Examples:
      ragkit index docs/
      ragkit index corpora/nq-wiki --include '*.jsonl' --text-field text
      ragkit index notes/ --chunk-tokens 128 --rebuild
      ragkit index corpora/nq-wiki --engine ray --ray-address ray://head:10001
    """
    from contextlib import nullcontext

    from ragkit.corpus import Corpus

    if engine != "ray" and (ray_address or ray_actors or ray_batch_size):
        raise click.UsageError("--ray-address, --ray-actors and --ray-batch-size need --engine ray")
    corpus = Corpus.open(path, index_dir=index_dir, embed_model=embed_model, chunk_tokens=chunk_tokens,
                         overlap_tokens=overlap_tokens, text_field=text_field, include=include, exclude=exclude,
                         rebuild=rebuild, embed_backend=embed_backend, store=store, nprobe=nprobe)
    if engine == "ray":
        from ragkit.ray_engine import RayEngine

        runner = RayEngine(ray_address, actors=ray_actors, batch_size=ray_batch_size)
    else:
        runner = nullcontext()
    with runner:  # skips: one warning line each
        report = corpus.index(progress=not quiet and not as_json, rebuild=rebuild,
                              engine=runner if engine == "ray" else None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.summary())


@click.command("search", short_help="Search an index: the chunks nearest a query.")
@click.argument("path", type=click.Path(exists=True))
@click.argument("query", required=False)
@click.option("-k", "--top-k", "k", type=int, default=5, show_default=True, help="Hits per query.")
@click.option("-Q", "--queries", type=click.File("r"), default=None,
              help="File with one query per line ('-' = stdin); prints JSON Lines, one line per query.")
@INDEX_DIR_OPTION
@_embed_model
@embed_backend_option
@STORE_OPTION
@WHERE_OPTION
@nprobe_option
@rerank_option
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
def search_cmd(path, query, k, queries, index_dir, embed_model, embed_backend, store, where, nprobe, rerank,
               as_json):
    """Search an indexed file or folder: the chunks most similar to QUERY, best first.

    \b
    Examples:
      ragkit search docs/ "how do I rotate the API key?"
      ragkit search docs/ "rotate key" -k 10 --json
      ragkit search corpora/nq-wiki --queries questions.txt > hits.jsonl
    """
    from ragkit.console import safe_path
    from ragkit.corpus import Corpus
    from ragkit.errors import InputError

    if (query is None) == (queries is None):
        raise InputError("give either a QUERY or --queries FILE (one query per line)")
    corpus = Corpus.open(path, index_dir=index_dir, embed_model=embed_model, embed_backend=embed_backend,
                         store=store, nprobe=nprobe, rerank=rerank)
    if queries is not None:
        lines = [line.strip() for line in queries if line.strip()]
        for start in range(0, len(lines), 256):  # batched: one model load, few model calls
            part = lines[start:start + 256]
            for q, hits in zip(part, corpus.search_many(part, k, where)):
                click.echo(json.dumps({"query": q, "hits": [_hit_dict(h) for h in hits]}, ensure_ascii=False))
        return
    hits = corpus.search(query, k, where)
    if as_json:
        click.echo(json.dumps({"query": query, "hits": [_hit_dict(h) for h in hits]}, indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo("no hits")
    for n, h in enumerate(hits, 1):
        title = f" — {safe_path(h.title)}" if h.title else ""  # as `ask` lists its sources
        click.echo(f"{n}. {h.score:.3f}  {safe_path(h.doc_id)}  [{h.start_char}:{h.end_char}]{title}")
        snippet = " ".join(h.text.split())
        click.echo("   " + (snippet[:300] + ("…" if len(snippet) > 300 else "")))


def register(group: click.Group) -> None:
    """Adds this module's commands to the top-level group."""
    group.add_command(index_cmd)
    group.add_command(search_cmd)
