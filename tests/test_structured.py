"""Structured answers (ask --schema): the wire request each API documents, validation with one repair
round-trip (each call a ledger row), typed per-field citations, bad schemas refused, the registry field,
and, with the real local model, constrained decoding. The SDKs are real, over HTTP to tests/llm_server.py."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from llm_server import LLMServer, Reply
from ragkit.answer import Session
from ragkit.cli import main
from ragkit.errors import ConfigError
from ragkit.ledger import Ledger
from ragkit.models import get_model
from ragkit.structured import SchemaError, StructuredOutputError, make_schema

DOCS = {
    "darwin.txt": "On the Origin of Species was written by Charles Darwin and published in 1859.",
    "bridge.txt": "The Sydney Harbour Bridge opened in 1932; its chief engineer was John Bradfield.",
    "cats.txt": "Cats sleep for about fifteen hours a day.",
}
SHORTHAND = "title str, year int | null, people list[str]"


class Book(BaseModel):
    title: str
    year: int | None
    people: list[str]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in DOCS.items():
        (root / name).write_text(text + "\n")
    return root


def _source_of(request, needle: str) -> int:
    """The number the prompt gave the source containing `needle`."""
    for n, text in re.findall(r'n="(\d+)"[^>]*>\n\[\d+\] (.*?)\n</', request.prompt, re.S):
        if needle in text:
            return int(n)
    raise AssertionError(f"{needle!r} not sent")


def book_reply(request) -> str:
    n = _source_of(request, "Origin of Species")
    return json.dumps({"answer": {"title": "On the Origin of Species", "year": 1859, "people": ["Charles Darwin"]},
                       "citations": {"title": [n], "year": [n], "people": [n]}})


def test_openai_strict_sends_json_schema_strict_and_returns_cited_fields(corpus):
    with LLMServer(responder=book_reply) as srv, \
            Session(corpus, model="gpt-4o-mini", base_url=srv.openai_base_url) as s:
        a = s.ask("Which book did Darwin write, when, and who is named?", schema=SHORTHAND)
        [req] = srv.requests
    spec = make_schema(SHORTHAND)
    assert req.body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": spec.wire(strict=True), "strict": True}}
    assert req.body["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
    assert "stream" not in req.body or not req.body["stream"]
    assert a.data == {"title": "On the Origin of Species", "year": 1859, "people": ["Charles Darwin"]}
    assert a.enforcement == "strict" and a.repairs == 0 and a.calls == 1
    assert [src.source for src in a.citations["title"]] == ["darwin.txt"]
    assert json.loads(a.answer) == a.data
    assert len(Ledger().entries()) == 1


def test_json_mode_model_sends_json_object_and_is_reported_validated(corpus):
    with LLMServer(responder=book_reply) as srv, \
            Session(corpus, model="llama-3.1-70b", base_url=srv.openai_base_url) as s:
        a = s.ask("Which book did Darwin write?", schema=SHORTHAND)
        [req] = srv.requests
    assert get_model("llama-3.1-70b").structured_output == "json_mode"
    assert req.body["response_format"] == {"type": "json_object"}
    assert a.enforcement == "validated" and a.data["year"] == 1859


def test_anthropic_forces_the_tool_and_reads_its_input_into_a_pydantic_instance(corpus):
    def tool_reply(request):
        n = _source_of(request, "Origin of Species")
        return Reply("", output_tokens=30, tool_input={
            "answer": {"title": "On the Origin of Species", "year": 1859, "people": ["Charles Darwin"]},
            "citations": {"title": [n], "year": [n], "people": [n, 99]}})

    with LLMServer(responder=tool_reply) as srv, \
            Session(corpus, model="claude-3.5-haiku", base_url=srv.anthropic_base_url) as s:
        a = s.ask("Which book did Darwin write?", schema=Book)
        [req] = srv.requests
    spec = make_schema(Book)
    assert req.body["tools"] == [{"name": "Book", "description": "Record the answer and the sources of each field.",
                                  "input_schema": spec.wire()}]
    assert req.body["tool_choice"] == {"type": "tool", "name": "Book"}
    assert isinstance(a.data, Book) and a.data.year == 1859
    assert a.enforcement == "tool"
    # a citation to a source that was never sent is dropped and reported, not kept
    assert [s.number for s in a.citations["people"]] == [_source_of(req, "Origin of Species")]
    assert a.dropped_citations == {"people": (99,)}


def test_invalid_json_once_is_repaired_in_one_round_trip_costing_two_ledger_rows(corpus):
    replies = iter(["{not json", None])

    def once_bad(request):
        bad = next(replies, None)
        return Reply(bad, input_tokens=100, output_tokens=5) if bad else Reply(book_reply(request), input_tokens=120,
                                                                                output_tokens=40)

    with LLMServer(responder=once_bad) as srv, \
            Session(corpus, model="gpt-4o-mini", base_url=srv.openai_base_url) as s:
        a = s.ask("Which book did Darwin write?", schema=SHORTHAND)
        first, second = srv.requests
    assert a.repairs == 1 and a.calls == 2 and a.data["title"] == "On the Origin of Species"
    assert "{not json" in second.prompt and "not valid JSON" in second.prompt
    assert "{not json" not in first.prompt
    rows = Ledger().entries()
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [(100, 5), (120, 40)]
    assert a.usage.input_tokens == 220 and a.usage.output_tokens == 45
    assert a.cost_usd == pytest.approx(sum(r.cost_usd for r in rows))


def test_schema_violation_is_sent_back_with_the_path_of_the_error(corpus):
    wrong = json.dumps({"answer": {"title": "x", "year": "eighteen fifty-nine", "people": []},
                        "citations": {"title": [], "year": [], "people": []}})
    replies = iter([wrong])
    with LLMServer(responder=lambda r: next(replies, None) or book_reply(r)) as srv, \
            Session(corpus, model="gpt-4o-mini", base_url=srv.openai_base_url) as s:
        a = s.ask("Which book did Darwin write?", schema=SHORTHAND)
        repair = srv.requests[1]
    assert a.repairs == 1
    assert "at answer.year" in repair.prompt


def test_a_model_that_never_complies_ends_in_a_clear_error_and_no_answer(corpus):
    with LLMServer(responder=lambda r: "Darwin wrote it [1].") as srv, \
            Session(corpus, model="gpt-4o-mini", base_url=srv.openai_base_url) as s:
        with pytest.raises(StructuredOutputError, match=r"did not match the schema after 1 repair.*2 calls"):
            s.ask("Which book did Darwin write?", schema=SHORTHAND)
        assert len(srv.requests) == 2
    assert len(Ledger().entries()) == 2  # both calls were paid for; nothing else was recorded


def test_cli_json_nests_the_object_under_answer(corpus):
    with LLMServer(responder=book_reply) as srv:
        res = CliRunner().invoke(main, ["ask", str(corpus), "Which book did Darwin write?", "-m", "gpt-4o-mini",
                                        "-u", srv.openai_base_url, "--schema", SHORTHAND, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["answer"] == {"title": "On the Origin of Species", "year": 1859, "people": ["Charles Darwin"]}
    assert out["schema_valid"] is True and out["enforcement"] == "strict" and out["repairs"] == 0
    assert out["citations"]["title"][0]["source"] == "darwin.txt"


def test_cli_stream_with_a_schema_prints_nothing_partial(corpus, tmp_path):
    schema_file = tmp_path / "book.json"
    schema_file.write_text(json.dumps(make_schema(SHORTHAND).schema))
    with LLMServer(responder=book_reply) as srv:
        res = CliRunner().invoke(main, ["ask", str(corpus), "Which book?", "-m", "gpt-4o-mini",
                                        "-u", srv.openai_base_url, "--schema", str(schema_file), "--stream"])
        [req] = srv.requests
    assert res.exit_code == 0, res.output
    assert not req.body.get("stream")  # the structured answer is fetched whole
    assert res.output.startswith("{\n")  # the first thing printed is the whole validated object
    obj = json.loads(res.output.split("\n\n")[0])
    assert obj["year"] == 1859
    assert "title: [" in res.output and "Schema: valid (enforcement: strict" in res.output


def test_the_plan_reserves_the_schemas_instructions_and_answer(corpus):
    with Session(corpus, model="gpt-4o-mini") as s:
        plain = s.prepare("Which book?")
        shaped = s.prepare("Which book?", schema=SHORTHAND)
    spec = make_schema(SHORTHAND)
    assert shaped.plan.instructions_tokens > plain.plan.instructions_tokens + 50
    from ragkit.tokens import counter_for

    assert shaped.plan.answer_tokens == spec.answer_reserve(counter_for(get_model("gpt-4o-mini")).count)
    assert spec.instructions() in shaped.system and "JSON object only" in shaped.user
    # one plan: the reply-format block is in the plan's count exactly as it is in the prompt sent
    for prepared in (plain, shaped):
        assert prepared.strategy == "stuff"
        assert prepared.input_tokens == prepared.plan.estimated_input_tokens


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "not valid JSON Schema"),
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
     "keyword 'oneOf' (at properties.a) is not supported"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}, "keyword 'pattern'"),
    ({"type": "array", "items": {"type": "string"}}, "top level must be an object"),
    ("{not json", "not valid JSON"),
    ("name strng", "unknown type 'strng' for field 'name'"),
    ("missing-file.json", "does not exist"),
])
def test_bad_schemas_are_refused_with_a_sentence_naming_the_problem(schema, words):
    with pytest.raises(SchemaError, match=re.escape(words)):
        make_schema(schema)


def test_cli_bad_schema_is_one_error_line_before_any_call(corpus):
    with LLMServer(responder=book_reply) as srv:
        res = CliRunner().invoke(main, ["ask", str(corpus), "q", "-m", "gpt-4o-mini", "-u", srv.openai_base_url,
                                        "--schema", '{"type": "object", "properties": {"a": {"not": {}}}}'])
        assert srv.requests == []
    assert res.exit_code == 1
    assert "Error:" in res.output and "'not'" in res.output


def test_shorthand_and_strict_form_round_trip():
    spec = make_schema("name str: who, score float, tags list[str], year int | null")
    assert spec.schema["properties"]["name"] == {"type": "string", "description": "who"}
    assert spec.schema["properties"]["year"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    optional = make_schema({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                            "required": ["a"]})
    strict = optional.wire(strict=True)["properties"]["answer"]
    assert strict["required"] == ["a", "b"] and strict["properties"]["b"]["anyOf"][1] == {"type": "null"}
    # strict mode makes the model write null for an optional non-nullable field: read as absent
    parsed = optional.parse(json.dumps({"answer": {"a": "x", "b": None}, "citations": {"a": [1], "b": []}}),
                            n_sources=1)
    assert parsed.value == {"a": "x"}


def test_shorthand_splits_fields_as_llm_does_lines_first_and_any_whitespace_before_the_type():
    lines = make_schema("name\tstr: who wrote it, and when\nyear  int | null\n").schema
    assert list(lines["properties"]) == ["name", "year"]
    assert lines["properties"]["name"] == {"type": "string", "description": "who wrote it, and when"}
    one_line = make_schema("name\tstr: who, year int\n").schema   # a trailing newline keeps comma fields
    assert list(one_line["properties"]) == ["name", "year"]


def test_a_cut_reply_is_reported_in_one_readable_phrase():
    from ragkit.structured import SchemaMismatch

    spec = make_schema(SHORTHAND)
    with pytest.raises(SchemaMismatch, match=r"^the reply is not valid JSON \(Unterminated string starting at "
                                             r"character 21\)$"):
        spec.parse('{"answer": {"title": "On the Orig', n_sources=1)   # it said "starting at at character"
    with pytest.raises(SchemaMismatch, match=r"\(Expecting value at character 0\)$"):
        spec.parse("", n_sources=1)


@pytest.mark.parametrize("line, provider, fine", [
    ('structured_output = "tool"', "openai", False),
    ('structured_output = "strict"', "anthropic", False),
    ('structured_output = "yes"', "openai", False),
    ('structured_output = "none"', "anthropic", True),
])
def test_registry_structured_output_field_is_validated(tmp_path, monkeypatch, line, provider, fine):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ragkit.toml").write_text(f"""
[models."m"]
name = "M"
provider = "{provider}"
api_model = "m"
context_window_tokens = 8000
practical_limit_tokens = 4000
max_output_tokens = 1000
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
encoding = "cl100k_base"
exact_tokens = false
{line}
""")
    if fine:
        assert get_model("m").structured_output == "none"
    else:
        with pytest.raises(ConfigError, match="structured_output"):
            get_model("m")


# ------------------------------------------------------------------ the real local model (slow)

LOCAL_CASES = [
    ("nested", {"type": "object", "properties": {
        "book": {"type": "object", "properties": {"title": {"type": "string"}, "author": {"type": "string"}},
                 "required": ["title", "author"]}}, "required": ["book"]}),
    ("enum", {"type": "object", "properties": {"kind": {"enum": ["book", "bridge", "animal"]}}, "required": ["kind"]}),
    ("nullable", {"type": "object", "properties": {"year": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                                                   "month": {"type": ["string", "null"]}},
                  "required": ["year", "month"]}),
    ("array", {"type": "object", "properties": {"people": {"type": "array", "items": {"type": "string"},
                                                           "maxItems": 3}}, "required": ["people"]}),
]


@pytest.mark.slow
def test_local_constrained_decoding_is_schema_valid_on_every_case():
    from ragkit.prompt import build_prompt
    from ragkit.providers import provider_for

    provider = provider_for(get_model("qwen2.5-coder-0.5b-local"))
    from ragkit.loaders import Document

    sources = [Document("darwin.txt", "darwin.txt", DOCS["darwin.txt"])]
    for name, schema in LOCAL_CASES:
        spec = make_schema(schema)
        system, user = spec.frame(*build_prompt("Describe the book in source 1.", sources))
        done = provider.complete(system, user, max_tokens=80, schema=spec)
        assert done.enforcement == "grammar", name
        parsed = spec.parse(done.text, n_sources=1)  # raises SchemaMismatch if anything is off
        assert set(parsed.citations) == set(schema["properties"]), name


@pytest.mark.parametrize("defs", [
    {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}, "required": ["next"]}},
    {"N": {"type": "array", "items": {"$ref": "#/$defs/N"}, "minItems": 1}},
    {"A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}, "required": ["b"]},
     "B": {"type": "array", "items": {"$ref": "#/$defs/A"}, "minItems": 2}},
])
def test_a_def_that_must_always_hold_itself_again_is_refused(defs):
    """No finite value matches: under the local grammar the model would write until the token limit."""
    first = next(iter(defs))
    with pytest.raises(SchemaError, match=rf"\$defs\.{first} has no finite value.*optional or nullable"):
        make_schema({"type": "object", "properties": {"x": {"$ref": f"#/$defs/{first}"}}, "$defs": defs})


def test_recursive_defs_with_a_way_out_are_accepted():
    tree = {"type": "object", "properties": {"name": {"type": "string"},
                                             "kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}},
            "required": ["name", "kids"]}
    nullable = {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/L"}, {"type": "null"}]}},
                "required": ["next"]}
    optional = {"type": "object", "properties": {"next": {"$ref": "#/$defs/O"}}}
    spec = make_schema({"type": "object", "properties": {"t": {"$ref": "#/$defs/T"}, "l": {"$ref": "#/$defs/L"},
                                                         "o": {"$ref": "#/$defs/O"}},
                        "$defs": {"T": tree, "L": nullable, "O": optional}})
    assert spec.fields == ("t", "l", "o")


def test_a_schema_too_large_for_the_model_is_named_as_what_to_shrink(corpus):
    """A schema is sent in the instructions: when it alone passes the practical limit, the error says so
    (it used to say to shorten the question or lower --answer-tokens)."""
    from ragkit.errors import InputError

    huge = {"type": "object", "properties": {"title": {"type": "string", "description": "x " * 40_000}},
            "required": ["title"]}
    with Session(corpus, model="gpt-4o-mini") as s:
        with pytest.raises(InputError, match=r"the instructions \(\d{2},\d{3} tokens\), the question \(\d+\) .*"
                                             r"the largest part is the instructions: use a smaller --schema"):
            s.prepare("Which book?", schema=huge)
