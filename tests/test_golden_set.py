"""A golden set `ragkit compare` cannot score faithfully is refused in one sentence naming the line(s),
before any call: a question asked twice, fields of the wrong type, text that is not valid Unicode."""
from __future__ import annotations

import json

import pytest

import model_world as w
from helpers import run
from llm_server import LLMServer
from ragkit.compare import load_golden
from ragkit.ledger import Ledger


@pytest.fixture
def world(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        w.register_models(srv)
        yield srv, w.make_corpus(tmp_path), tmp_path


def _compare(world, lines: list[str]) -> str:
    srv, corpus, tmp = world
    golden = tmp / "golden.jsonl"
    golden.write_text("".join(line + "\n" for line in lines))
    code, out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-o", str(tmp / "o"),
                          "--cache", str(tmp / "c.sqlite")])
    assert code == 1 and "Traceback" not in err, out + err
    assert len(err.splitlines()) == 1 and err.startswith(f"Error: {golden} "), err
    assert srv.requests == [] and Ledger().entries() == []
    return err.strip()[len(f"Error: {golden} "):]


def _line(question, answers=("A-1",), **extra) -> str:
    return json.dumps({"question": question, "answers": list(answers), **extra})


def test_a_question_asked_twice_is_refused_naming_both_lines(world):
    lines = [_line("What is the code of item 1?"), _line("What is the code of item 2?"),
             _line("  What is the code of item 1? ", ["B-2"])]     # the same once stripped, another answer
    assert _compare(world, lines) == "lines 1 and 3 ask the same question; merge their answers into one line."


@pytest.mark.parametrize("line, message", [
    ('{"question": 42, "answers": ["a"]}', 'line 2: "question" must be a string, not a number.'),
    ('{"question": ["q?"], "answers": ["a"]}', 'line 2: "question" must be a string, not a list.'),
    ('{"question": "q?", "answers": ["a"], "gold": {"p": 1}}',
     'line 2: "gold" must be a source path or record id, or a list of them, not an object.'),
    ('{"question": "q?", "answers": ["a"], "gold": [null]}',
     'line 2: "gold" must be a source path or record id, or a list of them, not a list holding null.'),
    ('{"question": "q?", "answers": 5}',
     'line 2 has no "answers": give the acceptable answers as a list of strings.'),
    ('{"question": "caf\\ud800?", "answers": ["a"]}',
     "line 2: the question is not valid text: character 4 (\\ud800) is a byte that is not UTF-8 or a lone "
     "surrogate; write it again in UTF-8."),
    ('{"question": "q?", "answers": ["caf\\udce9"]}',
     "line 2: an answer or gold id is not valid text: character 4 (\\xe9) is a byte that is not UTF-8 or a lone "
     "surrogate; write it again in UTF-8."),
])
def test_a_golden_field_of_the_wrong_type_is_one_sentence_naming_the_line(world, line, message):
    assert _compare(world, [_line("What is the code of item 1?"), line]) == message


def test_a_numeric_passage_id_is_an_id(tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text(_line("q?", passage_id=17) + "\n" + _line("r?", gold=["a.txt", 0]) + "\n")
    questions, _ = load_golden(golden)
    assert [q.gold for q in questions] == [("17",), ("a.txt", "0")]


def test_a_huge_golden_set_over_max_cost_is_refused_without_preparing_every_prompt(world):
    """20,000 questions at --max-cost 0.01: refused once the prompts prepared so far pass it."""
    import re
    import time

    srv, corpus, tmp = world
    golden = tmp / "huge.jsonl"
    golden.write_text("".join(_line(f"What is the code of item {i % 40} (variant {i})?") + "\n" for i in range(20_000)))
    t0 = time.monotonic()
    code, out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "--max-cost", "0.01",
                          "-o", str(tmp / "o"), "--cache", str(tmp / "c.sqlite")])
    elapsed = time.monotonic() - t0
    assert code == 1 and "Traceback" not in err, out + err
    assert err.startswith("Error: the estimated cost exceeds --max-cost $0.01: the first ") and "of 20,000 calls" in err
    prepared = int(re.search(r"the first ([\d,]+) of 20,000", err).group(1).replace(",", ""))
    assert prepared < 100, elapsed   # it stopped preparing at once; the base prepared all 20,000 prompts first
    assert srv.requests == [] and Ledger().entries() == []
