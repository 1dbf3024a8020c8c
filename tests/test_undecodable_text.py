"""Bytes that are not UTF-8 in a file name or a question (Python reads them as lone surrogates, which
SQLite, JSON request bodies and the terminal all refuse): a name is indexed, sent and cited under one
visible escape (`caf\\xe9.txt`); a question is refused with one sentence before any call."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from llm_server import LLMServer  # noqa: E402
from ragkit.cli import main  # noqa: E402
from ragkit.errors import ProviderError  # noqa: E402

LATIN1_NAME = os.fsdecode(b"caf\xe9.txt")      # 'caf\udce9.txt': how Python reads a Latin-1 file name
SHOWN = "caf\\xe9.txt"                           # how ragkit stores, sends and prints it


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def latin1_docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"Charles Darwin wrote On the Origin of Species in 1859.\n")
    (folder / "ocean.txt").write_text("The Pacific is the largest ocean on Earth.\n")
    return folder


def test_a_latin1_file_name_is_indexed_searched_and_cited_under_its_escape(latin1_docs):
    res = run("index", latin1_docs, "--json")
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    assert json.loads(res.stdout)["files_added"] == 2
    res = run("search", latin1_docs, "who wrote the origin of species", "-k", "1")
    assert res.exit_code == 0 and f"  {SHOWN}  [0:" in res.stdout.splitlines()[0], res.output + res.stderr


@pytest.mark.parametrize("model, url", [("gpt-4o-mini", "openai_base_url"), ("claude-3.5-haiku", "anthropic_base_url")])
@pytest.mark.parametrize("strategy", ["stuff", "retrieve"])
def test_ask_sends_and_cites_a_latin1_file_name_through_the_real_sdk(latin1_docs, model, url, strategy, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    with LLMServer(responder=lambda req: "Darwin [1].") as srv:
        res = run("ask", latin1_docs, "who wrote the origin of species?", "-m", model, "-u", getattr(srv, url),
                  "--strategy", strategy, "--top-k", "1", "--no-stream")
        prompt = srv.requests[-1].prompt if srv.requests else ""
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res.output + res.stderr
    assert f"[1] {SHOWN} chars 0-" in res.stdout, res.stdout
    assert SHOWN in prompt and "Charles Darwin" in prompt


def test_a_question_with_a_stray_byte_is_refused_before_any_call(latin1_docs, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    question = os.fsdecode(b"who wrote \xff the origin?")     # a Latin-1 terminal's argv, as Python decodes it
    with LLMServer(responder=lambda req: "Darwin [1].") as srv:
        for extra in ((), ("--dry-run",), ("-m", "auto")):
            res = run("ask", latin1_docs, question, "-u", srv.openai_base_url, "--no-stream", *extra)
            assert res.exit_code == 1 and "Traceback" not in res.stderr, (extra, res.output + res.stderr)
            assert res.stderr.splitlines() == ["Error: the question is not valid text: character 11 (\\xff) is a byte "
                                               "that is not UTF-8 or a lone surrogate; write it again in UTF-8."]
        res = run("search", latin1_docs, question)
        assert res.exit_code == 1 and res.stderr.startswith("Error: the query is not valid text"), res.stderr
        assert srv.requests == []


@pytest.mark.parametrize("model, url", [("gpt-4o-mini", "openai_base_url"), ("claude-3.5-haiku", "anthropic_base_url")])
def test_a_prompt_the_sdk_cannot_encode_is_not_called_a_malformed_response(model, url, monkeypatch):
    """Library callers can still hand a provider a lone surrogate: that is our request, not the endpoint's reply."""
    from ragkit.models import get_model
    from ragkit.providers import provider_for

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    with LLMServer(responder=lambda req: "unused") as srv:
        provider = provider_for(get_model(model), base_url=getattr(srv, url), max_retries=0)
        with pytest.raises(ProviderError) as err:
            provider.complete("system", "caf\udce9?", max_tokens=5)
        assert srv.requests == []
    assert err.value.kind == "bad_request" and "malformed" not in str(err.value)
    assert "could not be encoded, so it was not sent" in str(err.value), str(err.value)


def test_an_escaped_name_never_shadows_a_real_file_of_that_name(latin1_docs, capsys):
    (latin1_docs / SHOWN).write_text("A file whose real name holds a backslash.\n")
    from ragkit.loaders import discover_files

    _, files = discover_files(latin1_docs)
    assert [sf.rel for sf in files] == [SHOWN, "ocean.txt"]
    assert files[0].path.name == SHOWN   # the real name keeps the key; the undecodable one is skipped, said once
    assert capsys.readouterr().err.splitlines() == [
        f"ragkit: warning: skipped {SHOWN}: its name is not UTF-8 and, escaped, is the name of another file here; "
        "rename it"]


def test_a_corpus_folder_whose_own_name_is_not_utf8_is_indexed_updated_and_asked(tmp_path, monkeypatch):
    folder = os.fsencode(tmp_path) + b"/r\xe9sum\xe9s"
    os.mkdir(folder)
    with open(folder + b"/caf\xe9.txt", "wb") as f:
        f.write(b"Charles Darwin wrote On the Origin of Species in 1859.\n")
    root = os.fsdecode(folder)
    assert run("index", root, "-q").exit_code == 0
    with open(folder + b"/ocean.txt", "wb") as f:
        f.write(b"The Pacific is the largest ocean on Earth.\n")
    res = run("index", root, "--json")          # reads the FAISS file back and writes the next one
    assert res.exit_code == 0 and json.loads(res.stdout)["files_added"] == 1, res.output + res.stderr
    res = run("count", root)
    assert res.exit_code == 0 and "r\\xe9sum\\xe9s in " in res.stdout.replace("\n", ""), res.output  # rich wraps the title
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer(responder=lambda req: "Darwin [1].") as srv:
        res = run("ask", root, "who wrote the origin of species?", "-u", srv.openai_base_url, "-s", "retrieve",
                  "-k", "1", "--no-stream")
    assert res.exit_code == 0 and f"[1] {SHOWN} chars 0-" in res.stdout, res.output + res.stderr


def test_a_json_lines_record_with_lone_surrogate_escapes_is_indexed_and_asked(tmp_path, monkeypatch):
    folder = tmp_path / "recs"
    folder.mkdir()
    (folder / "recs.jsonl").write_text('{"id": "r\\ud800", "title": "T\\udce9", "text": "Lava is molten rock \\ud800 '
                                       'from volcanoes."}\n{"id": "ok", "text": "The Pacific is an ocean."}\n')
    assert run("index", folder, "-q").exit_code == 0
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer(responder=lambda req: "Lava [1].") as srv:
        for strategy in ("stuff", "retrieve"):
            res = run("ask", folder, "what is lava?", "-u", srv.openai_base_url, "-s", strategy, "--no-stream")
            assert res.exit_code == 0, res.output + res.stderr
            assert "[1] recs.jsonl#r\\ud800 chars 0-42 — T\\xe9" in res.stdout, res.stdout
        assert "molten rock \\ud800 from" in srv.requests[-1].prompt


def test_a_corpus_folder_named_with_uri_characters_is_indexed_and_searched(tmp_path):
    """The chunk table is opened read-only by URI: `?`, `#` and `%` in a folder name are data, not URI syntax."""
    folder = tmp_path / "what?#%41 x"
    folder.mkdir()
    (folder / "a.txt").write_text("Lava is molten rock.\n")
    assert run("index", folder, "-q").exit_code == 0
    res = run("search", folder, "lava", "-k", "1")
    assert res.exit_code == 0 and "a.txt" in res.stdout, res.output + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["what?#%41 x"]   # no stray file at the cut-off path
