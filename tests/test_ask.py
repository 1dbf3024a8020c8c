"""`ragkit ask` and the Session API end to end: the bundled sample corpus, the real index (MiniLM +
FAISS) for the retrieve path, and both SDKs over real HTTP to tests/llm_server.py."""
from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import ROOT, run
from llm_server import Fault, LLMServer, Reply
from ragkit.answer import Session
from ragkit.errors import ConfigError, ProviderError
from ragkit.ledger import Ledger, question_hash
from ragkit.models import get_model

QA = {json.loads(line)["question"]: json.loads(line)["answers"]
      for line in (ROOT / "corpora" / "questions" / "nq-wiki-sample.jsonl").read_text().splitlines() if line.strip()}
SECRET = "sk-test-SECRET-77e1c0ffee"

# A model whose practical limit is below the sample corpus, so the planner must retrieve.
SMALL_MODEL_TOML = """
[models."tiny-ctx"]
name = "Tiny context (test)"
provider = "openai"
api_model = "tiny-ctx-served"
api_key_env = "OPENAI_API_KEY"
context_window_tokens = 8000
practical_limit_tokens = 900
limit_source = "default: test"
max_output_tokens = 200
input_usd_per_mtok = 3.0
output_usd_per_mtok = 12.0
encoding = "cl100k_base"
exact_tokens = false
token_margin = 0.1
"""

_FENCE = re.compile(r'<(source-[0-9a-f]{8}) n="(\d+)"[^>]*>\n(.*?)\n</\1>', re.S)


def sources_in(prompt: str) -> dict[int, str]:
    return {int(n): text.removeprefix(f"[{n}] ") for _tag, n, text in _FENCE.findall(prompt)}


def question_in(prompt: str) -> str:
    return prompt.split("\nQuestion: ", 1)[1].split("\n", 1)[0].strip()


def reader(request) -> Reply | str:
    """A simulated reader: answers with the known answer and the number of the source holding it."""
    q = question_in(request.prompt)
    for n, text in sources_in(request.prompt).items():
        for ans in QA.get(q, []):
            if ans in text:
                return Reply(f"{ans} [{n}].", input_tokens=1234, output_tokens=56)
    return "The sources do not contain the answer."


@pytest.fixture
def tiny_model(monkeypatch, tmp_path):
    import os

    Path(os.environ["RAGKIT_CONFIG"]).write_text(SMALL_MODEL_TOML)
    return get_model("tiny-ctx")


def test_stuff_json_keyless_endpoint_reports_server_usage_and_registry_cost(sample_corpus):
    q = "who wrote the book the origin of species"
    with LLMServer(responder=reader) as srv:
        code, out, err = run(["ask", str(sample_corpus), q, "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url, "--json"])
        assert code == 0, err
        [req] = srv.requests
    data = json.loads(out)
    spec = get_model("gpt-4o-mini")
    assert data["strategy"] == "stuff" and data["model"] == "gpt-4o-mini"
    assert data["usage"] == {"input_tokens": 1234, "output_tokens": 56, "reported": True}
    assert data["cost_usd"] == pytest.approx((1234 * spec.input_usd_per_mtok + 56 * spec.output_usd_per_mtok) / 1e6)
    assert data["answer"].startswith("Charles Darwin [")
    [cited] = data["sources"]
    assert cited["doc_id"] == "passages.jsonl#p8036d975e2" and cited["source"] == "passages.jsonl"
    assert cited["span"].startswith("passages.jsonl#p8036d975e2 chars 0-")
    n_docs = sum(1 for line in (sample_corpus / "passages.jsonl").read_text().splitlines() if line.strip())
    assert len(data["context"]) == n_docs == len(sources_in(req.prompt))   # every document, whole
    assert req.headers["authorization"] == "Bearer ragkit-no-key" and req.model == spec.api_model
    # one ledger row with the same numbers, the question only as a hash
    [row] = Ledger().entries()
    assert (row.input_tokens, row.output_tokens, row.strategy, row.task) == (1234, 56, "stuff", "ask")
    assert row.cost_usd == pytest.approx(data["cost_usd"]) and row.question is None
    assert row.question_sha256 == question_hash(q)


def test_retrieve_end_to_end_with_the_real_index(sample_corpus, tiny_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    q = "how many steps does the cn tower have"
    with LLMServer(responder=reader) as srv:
        code, out, err = run(["ask", str(sample_corpus), q, "-m", "tiny-ctx", "-u", srv.openai_base_url, "--json",
                              "--answer-tokens", "100", "--log-question"])
        assert code == 0, err
        [req] = srv.requests
    data = json.loads(out)
    assert data["strategy"] == "retrieve", data["reason"]
    sent = sources_in(req.prompt)
    n_docs = sum(1 for line in (sample_corpus / "passages.jsonl").read_text().splitlines() if line.strip())
    assert 1 <= len(sent) < n_docs                         # packed chunks, not the whole corpus
    assert data["answer"].startswith("2,579")
    [cited] = data["sources"]
    assert cited["doc_id"] == "passages.jsonl#pf541633b9f"
    text = json.loads(next(l for l in (sample_corpus / "passages.jsonl").read_text().splitlines() if "pf541633b9f" in l))["text"]
    assert text[cited["start_char"]:cited["end_char"]].strip() in sent[cited["number"]] or \
        sent[cited["number"]] in text[cited["start_char"]:cited["end_char"]]
    # the prompt stays inside the plan's budget (counted like the planner counts)
    from ragkit.tokens import counter_for

    counter = counter_for(tiny_model)
    used = counter.planning_tokens(counter.count(req.system) + counter.count(req.prompt))
    assert used + 100 <= tiny_model.practical_limit_tokens
    assert data["cost_usd"] == pytest.approx((1234 * 3.0 + 56 * 12.0) / 1e6)
    assert (sample_corpus / ".ragkit").is_dir()            # the index was built on demand
    [row] = Ledger().entries()
    assert row.question == q and row.strategy == "retrieve"
    assert SECRET.encode() not in Path(Ledger().path).read_bytes()


def test_anthropic_end_to_end_human_output(sample_corpus, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    q = "who sings the pokemon theme song season 1"
    with LLMServer(responder=reader) as srv:
        code, out, err = run(["ask", str(sample_corpus), q, "-m", "claude-3.5-haiku", "-u", srv.anthropic_base_url,
                              "--no-stream"])
        assert code == 0, err
        [req] = srv.requests
    assert req.api == "anthropic" and req.headers["authorization"] == f"Bearer {SECRET}"
    assert out.startswith("Jason Paige [")
    assert re.search(r"Sources:\n  \[\d+\] passages.jsonl#p9ead59fbc0 chars 0-\d+ — Jason Paige", out)
    assert "Strategy: stuff — " in out and "Tokens: 1,234 in, 56 out" in out
    assert "Cost: $0.00" in out and "Latency: " in out
    assert SECRET not in out + err


def test_streaming_prints_the_answer_once(sample_corpus):
    with LLMServer(responder=reader) as srv:
        code, out, err = run(["ask", str(sample_corpus), "how many countries are a part of opec", "-u",
                              srv.openai_base_url, "--stream"])
        assert code == 0, err
        assert srv.requests[0].stream
    assert out.count("14 [") == 1 and "Sources:" in out


def test_a_failed_call_prints_one_line_and_records_nothing(sample_corpus, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with LLMServer(responder=lambda req: Fault.server_error()) as srv:
        code, out, err = run(["ask", str(sample_corpus), "who wrote the book the origin of species",
                              "-u", srv.openai_base_url, "--retries", "1", "--json"])
        assert len(srv.requests) == 2
    assert code == 1 and out == ""                          # no partial result on stdout
    assert err.startswith("Error: ") and "HTTP 500" in err and srv.root_url in err
    assert "Traceback" not in err and SECRET not in err and len(err.strip().splitlines()) == 1
    assert Ledger().entries() == []


def test_missing_key_fails_before_any_work(sample_corpus, tiny_model):
    """A question that needs the index (the corpus is above tiny-ctx's limit) stops at the missing key
    before any embedding: no index folder is created, neither the default one nor -d's."""
    other = sample_corpus.parent / "elsewhere"
    for args in ([], ["-d", str(other)]):
        code, out, err = run(["ask", str(sample_corpus), "anything?", "-m", "tiny-ctx", *args])
        assert code == 1 and "OPENAI_API_KEY is not set" in err and "Traceback" not in err
        assert [p.name for p in sample_corpus.iterdir()] == ["passages.jsonl"] and not other.exists()
    # The work that was skipped is real: without the key check, this question builds the index.
    code, out, err = run(["ask", str(sample_corpus), "anything?", "-m", "tiny-ctx", "--dry-run", "--json"])
    assert code == 0, err
    assert json.loads(out)["strategy"] == "retrieve" and (sample_corpus / ".ragkit").is_dir()


def test_dry_run_prints_plan_prompt_and_cost_without_calling_a_model(sample_corpus):
    with LLMServer(responder=reader) as srv:
        code, out, err = run(["ask", str(sample_corpus), "who got the first nobel prize in physics", "-u",
                              srv.openai_base_url, "--dry-run"])
        assert code == 0, err
        assert srv.requests == []
    assert "Strategy: stuff" in out and "Estimated cost: at most $" in out
    assert "===== system =====" in out and "Question: who got the first nobel prize in physics" in out
    code, out, err = run(["ask", str(sample_corpus), "who got the first nobel prize in physics", "--dry-run", "--json"])
    data = json.loads(out)
    assert data["strategy"] == "stuff" and data["estimated_cost_usd"] > 0
    assert len(sources_in(data["prompt"]["user"])) == len(data["context"])
    assert Ledger().entries() == []


def test_dry_run_prompt_is_the_prompt_sent(sample_corpus):
    q = "who wrote the song city of new orleans"
    with LLMServer(responder=reader) as srv, Session(sample_corpus, base_url=srv.openai_base_url) as s:
        prepared = s.prepare(q)
        s.ask(q)
        [req] = srv.requests
    assert (req.system, req.prompt) == (prepared.system, prepared.user)


def test_session_is_thread_safe_and_loads_once(sample_corpus, tiny_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    questions = list(QA)
    with LLMServer(responder=reader) as srv:
        with Session(sample_corpus, model="tiny-ctx", base_url=srv.openai_base_url) as session:
            calls = {"index": 0, "documents": 0}
            real_index, real_docs = session.corpus.index, session.corpus.documents
            lock = threading.Lock()

            def counting(name, fn):
                def wrapped(*a, **kw):
                    with lock:
                        calls[name] += 1
                    return fn(*a, **kw)
                return wrapped

            monkeypatch.setattr(session.corpus, "index", counting("index", real_index))
            monkeypatch.setattr(session.corpus, "documents", counting("documents", real_docs))
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers = list(pool.map(lambda q: session.ask(q, answer_tokens=100), questions * 2))
        assert len(srv.requests) == len(questions) * 2
    assert calls == {"index": 1, "documents": 1}
    for q, a in zip(questions * 2, answers):
        assert a.question == q and a.strategy == "retrieve"
        assert any(a.answer.startswith(ans) for ans in QA[q]), (q, a.answer)
        assert a.sources, a.answer
    assert len(Ledger().entries()) == len(questions) * 2


def test_python_api_errors_are_ragkit_errors(sample_corpus, monkeypatch):
    with LLMServer(responder=lambda req: Fault.malformed()) as srv:
        with Session(sample_corpus, base_url=srv.openai_base_url, max_retries=0) as s:
            with pytest.raises(ProviderError, match="malformed"):
                s.ask("who wrote the book the origin of species")
    with Session(sample_corpus, model="gemini-2.0-flash") as s:
        with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
            s.ask("anything")
    assert Ledger().entries() == []


def test_answer_not_in_sources_is_reported_with_no_citation(sample_corpus):
    with LLMServer(responder=reader) as srv:
        code, out, err = run(["ask", str(sample_corpus), "what is the boiling point of tungsten", "-u",
                              srv.openai_base_url, "--json"])
    data = json.loads(out)
    assert code == 0 and data["answer"] == "The sources do not contain the answer." and data["sources"] == []


def test_reading_the_ledger_does_not_create_it(tmp_path):
    ledger = Ledger(tmp_path / "x.sqlite")
    assert ledger.entries() == [] and ledger.summary().calls == 0
    assert not (tmp_path / "x.sqlite").exists()


def test_retrieved_chunks_carry_their_documents_whole_title(tmp_path, tiny_model):
    """The index embeds a title cut to chunking.MAX_TITLE_TOKENS; the prompt names the source by its whole title."""
    folder = tmp_path / "titled"
    folder.mkdir()
    long_title = "The " + " ".join(f"v{i}" for i in range(10, 50)) + " chronicle"  # ~80 word pieces
    assert len(long_title) < 200                       # the prompt's own cap on a title attribute
    records = [{"id": f"r{i}", "title": f"Filler {i}", "text": f"Filler record {i} talks about gardens. " * 40}
               for i in range(8)]
    records.append({"id": "lava", "title": long_title, "text": "Mount Lavara erupted in 1871 and buried the valley."})
    (folder / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with Session(folder, model="tiny-ctx", ledger=False) as s:
        prepared = s.prepare("when did mount lavara erupt", answer_tokens=100)
        indexed = s.corpus.search("when did mount lavara erupt", k=1)[0].title
    assert prepared.strategy == "retrieve"
    assert len(indexed) < len(long_title) and long_title.startswith(indexed)   # what the index holds: cut
    [lava] = [src for src in prepared.context if src.doc_id == "docs.jsonl#lava"]
    assert lava.title == long_title and f'title="{long_title}"' in prepared.user
