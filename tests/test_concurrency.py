"""Many askers on one folder: threads in one Session and separate processes, while another process
holds the index's write lock (as a running `ragkit index` does). Answering only reads the index:
an up-to-date index is never locked, a stale one is answered from as it is (and the answer says so),
and a missing one is waited for a bounded time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from llm_server import LLMServer
from ragkit.answer import Session
from ragkit.corpus import Corpus
from ragkit.errors import IndexBusy
from test_ask import QA, SECRET, reader, tiny_model  # noqa: F401  (fixtures; sample_corpus is in conftest)

QUESTIONS = list(QA)


@contextmanager
def writer_holding_lock(index_dir: Path):
    """A separate process holding the index's write lock, exactly as `ragkit index` holds it."""
    code = ("import sys, time; from pathlib import Path; from ragkit.store import WriteLock\n"
            "lock = WriteLock(Path(sys.argv[1])); lock.__enter__(); print('locked', flush=True); time.sleep(120)")
    index_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(index_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def ask_all(session: Session, n_threads: int = 6) -> list:
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        return list(pool.map(lambda q: session.ask(q, answer_tokens=100), QUESTIONS * 2))


def test_threads_answer_from_an_up_to_date_index_while_another_process_holds_the_lock(sample_corpus, tiny_model,
                                                                                       monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    Corpus.open(sample_corpus).index()
    with LLMServer(responder=reader) as srv, writer_holding_lock(sample_corpus / ".ragkit"):
        with Session(sample_corpus, model="tiny-ctx", base_url=srv.openai_base_url) as session:
            answers = ask_all(session)
    assert len(answers) == len(QUESTIONS) * 2
    for a in answers:
        assert a.strategy == "retrieve" and a.index.fresh and a.index.note is None
        assert any(a.answer.startswith(ans) for ans in QA[a.question]), a.answer


def test_stale_index_being_updated_elsewhere_is_answered_from_as_it_is_and_says_so(sample_corpus, tiny_model,
                                                                                    monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    generation = Corpus.open(sample_corpus).index().generation
    (sample_corpus / "new.txt").write_text("A new document that arrived after the last index.\n")
    with LLMServer(responder=reader) as srv, writer_holding_lock(sample_corpus / ".ragkit") as holder:
        with Session(sample_corpus, model="tiny-ctx", base_url=srv.openai_base_url) as session:
            answers = ask_all(session)
    for a in answers:
        assert a.index.generation == generation and not a.index.fresh
        assert "1 file(s) changed" in a.index.note and f"pid {holder.pid}" in a.index.note
        assert a.to_dict()["index"]["fresh"] is False
        assert any(a.answer.startswith(ans) for ans in QA[a.question]), a.answer


def test_stale_index_is_updated_by_the_asker_when_nobody_else_is(sample_corpus, tiny_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    before = Corpus.open(sample_corpus).index().generation
    (sample_corpus / "new.txt").write_text("Zanzibar's fictional harbour master in 2031 was Ottoline Brack.\n")
    with LLMServer(responder=reader) as srv:
        with Session(sample_corpus, model="tiny-ctx", base_url=srv.openai_base_url) as session:
            a = session.ask("who was zanzibar's harbour master in 2031", answer_tokens=100)
    assert a.index.fresh and a.index.updated and a.index.generation != before
    assert any("Ottoline Brack" in s.text for s in a.context)


def test_first_index_waits_for_a_running_builder_then_answers(sample_corpus, tiny_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with LLMServer(responder=reader) as srv:
        with writer_holding_lock(sample_corpus / ".ragkit") as holder:
            with Session(sample_corpus, model="tiny-ctx", base_url=srv.openai_base_url, index_wait_s=0.5) as session:
                with pytest.raises(IndexBusy, match=f"pid {holder.pid}"):
                    session.ask(QUESTIONS[0], answer_tokens=100)
            release_at = time.monotonic() + 2
            subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(2); os.kill({holder.pid}, 9)"])
            with Session(sample_corpus, model="tiny-ctx", base_url=srv.openai_base_url, index_wait_s=60) as session:
                a = session.ask(QUESTIONS[0], answer_tokens=100)
            assert time.monotonic() >= release_at - 0.1     # it waited for the holder, then built
    assert a.index.fresh and a.strategy == "retrieve"


def test_lock_holder_is_never_shown_half_written(tmp_path):
    """The holder line is written to a temp file and renamed: the busy message names a pid, not "()"."""
    from ragkit.store import WriteLock

    with WriteLock(tmp_path):
        names = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(IndexBusy) as exc:
            with WriteLock(tmp_path):
                pass
    assert names == ["lock", "lock.info"]
    assert f"(pid {os.getpid()}, since " in str(exc.value) and "()" not in str(exc.value)


def _cli_ask(sample_corpus: Path, base_url: str, question: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ragkit.cli", "ask", str(sample_corpus), question, "-m", "tiny-ctx",
                             "-u", base_url, "--json", "--answer-tokens", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_processes_ask_at_once_on_an_indexed_folder_and_while_it_is_being_updated(sample_corpus, tiny_model):
    """The probe's case: 8 concurrent `ragkit ask --json` processes; before the fix 6 of 8 failed."""
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    Corpus.open(sample_corpus).index()
    with LLMServer(responder=reader) as srv:
        procs = [_cli_ask(sample_corpus, srv.openai_base_url, QUESTIONS[i % len(QUESTIONS)], env) for i in range(8)]
        results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
        assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
        assert all(json.loads(out)["index"]["fresh"] for _, out, _ in results)

        (sample_corpus / "new.txt").write_text("A new document that arrived after the last index.\n")
        with writer_holding_lock(sample_corpus / ".ragkit"):
            procs = [_cli_ask(sample_corpus, srv.openai_base_url, QUESTIONS[i % len(QUESTIONS)], env) for i in range(4)]
            results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
        assert [code for code, _, _ in results] == [0] * 4, [err for _, _, err in results]
        for _, out, err in results:
            assert json.loads(out)["index"]["fresh"] is False
            assert "ragkit: warning: 1 file(s) changed since index" in err
    from ragkit.ledger import Ledger

    assert len(Ledger().entries()) == 12
