"""`ragkit index` and `ragkit search` through the real click group (in process: the model loads once)."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.cli import main  # noqa: E402


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "volcano.md").write_text("# Volcanoes\n\nVolcanoes erupt molten rock called lava.\n")
    (folder / "ocean.txt").write_text("The Pacific is the largest and deepest ocean on Earth.\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (folder / "records.jsonl").write_text(
        json.dumps({"id": "r1", "title": "Bread", "text": "Bread is baked from flour, water and yeast."}) + "\n")
    return folder


def test_index_summary_then_incremental(docs):
    runner = CliRunner()
    res = runner.invoke(main, ["index", str(docs)])
    assert res.exit_code == 0, res.output + res.stderr
    assert "files: 3 added, 0 changed, 0 removed, 0 unchanged, 1 skipped" in res.output
    assert "chunks/s" in res.output
    assert "warning: skipped logo.png: binary file" in res.stderr
    assert "embedding" in res.stderr  # the rich progress bar
    (docs / "ocean.txt").write_text("The Atlantic separates Europe from the Americas.\n")
    res = runner.invoke(main, ["index", str(docs), "--json"])
    assert res.exit_code == 0
    report = json.loads(res.output)
    assert (report["files_changed"], report["files_unchanged"], report["chunks_embedded"]) == (1, 2, 1)
    assert report["skipped"] == [{"path": "logo.png", "reason": "binary file"}]


def test_search_text_json_and_batch(docs, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(docs), "-q"]).exit_code == 0
    res = runner.invoke(main, ["search", str(docs), "what is bread made of", "-k", "2"])
    assert res.exit_code == 0 and res.output.startswith("1. ") and "records.jsonl#r1" in res.output.splitlines()[0]

    res = runner.invoke(main, ["search", str(docs), "lava", "--json", "-k", "3"])
    out = json.loads(res.output)
    hit = out["hits"][0]
    assert out["query"] == "lava" and len(out["hits"]) == 3
    assert hit["source"] == "volcano.md" and 0 < hit["score"] <= 1 and "lava" in hit["text"]
    assert hit["span"] == [0, len((docs / "volcano.md").read_text().rstrip())]
    assert out["hits"][0]["score"] >= out["hits"][1]["score"] >= out["hits"][2]["score"]

    qfile = tmp_path / "q.txt"
    qfile.write_text("deepest ocean\n\nyeast and flour\nlava\n")
    res = runner.invoke(main, ["search", str(docs), "--queries", str(qfile), "-k", "1"])
    lines = [json.loads(line) for line in res.output.splitlines()]
    assert [(row["query"], row["hits"][0]["source"]) for row in lines] == [
        ("deepest ocean", "ocean.txt"), ("yeast and flour", "records.jsonl"), ("lava", "volcano.md")]
    assert lines[1]["hits"][0]["title"] == "Bread"


def test_errors_are_one_line_exit_1(docs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["search", str(docs), "anything"])
    assert res.exit_code == 1 and "Error: no index at" in res.stderr and "ragkit index" in res.stderr
    assert "Traceback" not in res.stderr
    res = runner.invoke(main, ["search", str(docs)])
    assert res.exit_code == 1 and "QUERY or --queries" in res.stderr
    assert runner.invoke(main, ["index", str(docs), "-q"]).exit_code == 0
    res = runner.invoke(main, ["index", str(docs), "--chunk-tokens", "64"])
    assert res.exit_code == 1 and "--rebuild" in res.stderr
    res = runner.invoke(main, ["index", str(docs), "--chunk-tokens", "999", "--rebuild"])
    assert res.exit_code == 1 and "silently truncate" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["index", str(empty)])
    assert res.exit_code == 1 and "no files to index" in res.stderr


def test_help_has_examples():
    for cmd in ("index", "search"):
        res = CliRunner().invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "Examples:" in res.output and "ragkit " + cmd in res.output


def test_no_index_hint_names_the_index_dir_that_was_asked_for(docs, tmp_path):
    other = tmp_path / "other-index"
    res = CliRunner().invoke(main, ["search", str(docs), "anything", "--index-dir", str(other)])
    assert res.exit_code == 1 and f"run `ragkit index {docs} --index-dir {other}` first" in res.stderr
    res = CliRunner().invoke(main, ["search", str(docs), "anything"])
    assert res.exit_code == 1 and f"run `ragkit index {docs}` first" in res.stderr  # the default needs no option


def test_search_text_shows_each_hits_title_on_its_line(docs):
    (docs / "records.jsonl").write_text(
        json.dumps({"id": "r1", "title": "Bread", "text": "Bread is baked from flour, water and yeast."}) + "\n"
        + json.dumps({"id": "r2", "title": "Rye\nforged line", "text": "Rye bread is dense and dark."}) + "\n")
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(docs), "-q"]).exit_code == 0
    res = runner.invoke(main, ["search", str(docs), "bread flour yeast", "-k", "4"])
    assert res.exit_code == 0, res.output
    heads = [line for line in res.output.splitlines() if line[:1].isdigit()]
    assert heads[0].startswith("1. ") and heads[0].endswith("records.jsonl#r1  [0:43] — Bread")
    assert any(h.endswith("— Rye forged line") for h in heads)  # a title is data: kept on its hit's line
    assert len(res.output.splitlines()) == 2 * len(heads)
