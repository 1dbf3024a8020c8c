"""The cost ledger: migrations, rows, summaries, the monthly projection, the `costs` command."""
from __future__ import annotations

import json
import multiprocessing
import queue
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from llm_server import LLMServer, Reply

from ragkit.cli import main
from ragkit.errors import InputError
from ragkit.ledger import (MIGRATIONS, Ledger, LedgerEntry, LedgerError, ledger_path, m001_initial, migrate,
                           parse_since, question_hash)
from ragkit.models import get_model

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def entry(model="gpt-4o-mini", cost=0.01, days_ago=0.0, task="ask", **kw) -> LedgerEntry:
    ts = (NOW - timedelta(days=days_ago)).isoformat()
    base = dict(task=task, model=model, api_model=model, provider="openai", strategy="stuff", input_tokens=1000,
                output_tokens=100, cost_usd=cost, latency_s=1.5, ttft_s=0.3, question_sha256=question_hash("q"), ts=ts)
    base.update(kw)
    return LedgerEntry(**base)


def test_path_follows_ragkit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_HOME", str(tmp_path / "h"))
    assert ledger_path() == tmp_path / "h" / "ledger.sqlite"
    monkeypatch.delenv("RAGKIT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert ledger_path() == tmp_path / "xdg" / "ragkit" / "ledger.sqlite"


def test_migrations_apply_once_and_upgrade_an_old_ledger(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # a ledger written by a version that knew only m001
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    m001_initial(db)
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 'then')")
    db.execute("INSERT INTO calls (ts, task, model, api_model, provider, strategy, input_tokens, output_tokens, "
               "cost_usd, latency_s) VALUES ('2026-11-01T00:00:00+00:00', 'ask', 'gpt-4o', 'gpt-4o', 'openai', "
               "'stuff', 10, 2, 0.5, 1.0)")
    db.commit()
    assert migrate(db) == [fn.__name__ for fn in MIGRATIONS[1:]]
    assert migrate(db) == []
    db.close()
    [old] = Ledger(path).entries()
    assert old.cost_usd == 0.5 and old.usage_reported is True   # kept, with the new column's default


def test_record_and_read_back(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    saved = ledger.record(entry(ts=""))
    assert saved.id == 1 and saved.ts.endswith("+00:00")
    [back] = ledger.entries()
    assert back == saved
    assert back.question is None and back.question_sha256 == question_hash("q") and len(back.question_sha256) == 64


def test_bad_rows_are_refused(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        ledger.record(entry(input_tokens=-5))
    assert ledger.entries() == []


def test_summary_by_model_day_task_and_projection(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.record(entry("gpt-4o", 0.30, days_ago=9))                 # outside a 7-day window
    ledger.record(entry("gpt-4o", 0.20, days_ago=6))
    ledger.record(entry("claude-3.5-haiku", 0.05, days_ago=1, task="eval"))
    ledger.record(entry("claude-3.5-haiku", 0.05, days_ago=0.5))
    s = ledger.summary(since="7d", by="model", now=NOW)
    assert s.calls == 3 and s.cost_usd == pytest.approx(0.30)
    assert [(g.key, g.calls) for g in s.groups] == [("gpt-4o", 1), ("claude-3.5-haiku", 2)]
    assert s.rate_days == pytest.approx(6.0)                         # from the first call in the window
    assert s.projected_monthly_usd == pytest.approx(0.30 / 6 * 30)
    by_day = ledger.summary(by="day", now=NOW)
    assert [g.key for g in by_day.groups] == ["2026-11-19", "2026-11-22", "2026-11-27", "2026-11-28"]
    by_task = ledger.summary(by="task", now=NOW)
    assert {g.key: g.calls for g in by_task.groups} == {"ask": 3, "eval": 1}
    one = Ledger(tmp_path / "one.sqlite")
    one.record(entry(cost=0.01, days_ago=1 / 24))
    assert one.summary(now=NOW).projected_monthly_usd == pytest.approx(0.30)   # a 1-day floor, not x720


def test_parse_since():
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(InputError, match="7d"):
        parse_since("last tuesday", NOW)


def test_costs_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_HOME", str(tmp_path))
    runner = CliRunner()
    empty = runner.invoke(main, ["costs"])
    assert empty.exit_code == 0 and "No calls recorded" in empty.output
    now = datetime.now(timezone.utc)
    ledger = Ledger()
    ledger.record(entry("gpt-4o", 0.25, ts=(now - timedelta(days=2)).isoformat()))
    ledger.record(entry("gpt-4o-mini", 0.05, ts=(now - timedelta(hours=1)).isoformat()))
    out = runner.invoke(main, ["costs", "--since", "7d"])
    assert out.exit_code == 0, out.output
    assert "2 calls" in out.output and "gpt-4o-mini" in out.output and "Projected monthly cost" in out.output
    data = json.loads(runner.invoke(main, ["costs", "--by", "day", "--json"]).output)
    assert data["calls"] == 2 and data["cost_usd"] == pytest.approx(0.30) and data["by"] == "day"
    assert data["projected_monthly_usd"] == pytest.approx(0.30 / data["rate_days"] * 30)
    bad = runner.invoke(main, ["costs", "--since", "soon"])
    assert bad.exit_code == 1 and "Error:" in bad.output and "Traceback" not in bad.output


# ---- concurrent first use and damaged files ---------------------------------------------------------
WRITERS = 8


def _record_one(barrier, errors) -> None:
    """A process (or thread) that opens the ledger under RAGKIT_HOME and writes one row, all at once."""
    try:
        barrier.wait(30)
        Ledger().record(entry(ts=""))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_a_fresh_ledger_under_concurrent_writers_keeps_every_row(tmp_path, monkeypatch, kind):
    fork = multiprocessing.get_context("fork")
    for attempt in range(6):  # the race is a matter of timing: several fresh ledgers
        home = tmp_path / f"home{attempt}"
        monkeypatch.setenv("RAGKIT_HOME", str(home))
        if kind == "processes":
            barrier, errors, start = fork.Barrier(WRITERS), fork.Queue(), fork.Process
        else:
            barrier, errors, start = threading.Barrier(WRITERS), queue.Queue(), threading.Thread
        writers = [start(target=_record_one, args=(barrier, errors)) for _ in range(WRITERS)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(60)
        failures = []
        while not errors.empty():
            failures.append(errors.get(timeout=5))
        assert failures == [] and not any(w.is_alive() for w in writers)
        assert len(Ledger(home / "ledger.sqlite").entries()) == WRITERS


def test_a_garbage_ledger_file_is_one_clear_sentence_and_left_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_HOME", str(tmp_path))
    junk = b"this is not a database, it is a shopping list\n" * 100
    (tmp_path / "ledger.sqlite").write_bytes(junk)
    result = CliRunner().invoke(main, ["costs"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "is not a ragkit ledger" in line
    assert f"mv {tmp_path / 'ledger.sqlite'} " in line
    assert (tmp_path / "ledger.sqlite").read_bytes() == junk          # never deleted or rewritten
    with pytest.raises(LedgerError, match="not a ragkit ledger"):
        Ledger().record(entry())


def test_another_programs_sqlite_file_is_not_taken_for_a_ledger(tmp_path):
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE calls (phone TEXT)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not a ragkit ledger"):
        Ledger(path).entries()
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["calls"]  # untouched
    db.close()


# ---- every paid call reaches the ledger: ask and eval, through the real SDK to a local server ------------
def test_ask_returns_the_answer_it_paid_for_when_the_ledger_is_garbage(tmp_path, monkeypatch, sample_corpus):
    monkeypatch.setenv("RAGKIT_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "ledger.sqlite").write_bytes(b"\x00garbage" * 512)
    with LLMServer(responder=lambda req: Reply("Charles Darwin [1].", input_tokens=900, output_tokens=7)) as srv:
        result = CliRunner().invoke(main, ["ask", str(sample_corpus), "who wrote the origin of species",
                                           "-m", "gpt-4o-mini", "-u", srv.openai_base_url, "--json"])
        assert len(srv.requests) == 1
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"] == "Charles Darwin [1]."
    [warning] = result.stderr.strip().splitlines()
    assert "is not a ragkit ledger" in warning and "mv " in warning and "Traceback" not in result.stderr
    assert (tmp_path / "home" / "ledger.sqlite").read_bytes() == b"\x00garbage" * 512


def test_costs_by_task_shows_ask_and_eval_calls_with_their_cost(tmp_path, sample_corpus):
    runner = CliRunner()
    with LLMServer(responder=lambda req: Reply("Charles Darwin [1].", input_tokens=900, output_tokens=7)) as srv:
        asked = runner.invoke(main, ["ask", str(sample_corpus), "who wrote the origin of species", "-m", "gpt-4o-mini",
                                     "-u", srv.openai_base_url, "--json"])
        assert asked.exit_code == 0, asked.output
        labelled = runner.invoke(main, ["ask", str(sample_corpus), "who wrote it", "-m", "gpt-4o-mini",
                                        "-u", srv.openai_base_url, "--task", "support-bot"])
        assert labelled.exit_code == 0, labelled.output
        eval_args = ["eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url,
                     "-l", "500", "--depths", "0,50,100", "-n", "1", "--cache", str(tmp_path / "c.sqlite"),
                     "-o", str(tmp_path / "run"), "--json", "--no-progress"]
        evaled = runner.invoke(main, eval_args)
        assert evaled.exit_code == 0, evaled.output
        again = runner.invoke(main, eval_args)  # answered from the cache: nothing paid, nothing recorded
        assert again.exit_code == 0, again.output
        assert len(srv.requests) == 2 + 3
    run = json.loads(evaled.stdout[evaled.stdout.index("{"):])["run"]
    assert run["calls_made"] == 3 and run["cost_usd"] > 0

    data = json.loads(runner.invoke(main, ["costs", "--by", "task", "--json"]).output)
    groups = {g["key"]: g for g in data["groups"]}
    assert set(groups) == {"ask", "support-bot", "eval:needle"}
    spec = get_model("gpt-4o-mini")
    per_call = (900 * spec.input_usd_per_mtok + 7 * spec.output_usd_per_mtok) / 1e6
    assert groups["ask"]["calls"] == 1 and groups["ask"]["cost_usd"] == pytest.approx(per_call)
    assert groups["eval:needle"]["calls"] == 3 and groups["eval:needle"]["input_tokens"] == 3 * 900
    assert groups["eval:needle"]["cost_usd"] == pytest.approx(3 * per_call)
    assert run["cost_usd"] == pytest.approx(3 * per_call, abs=1e-6)  # what the eval said it paid
    assert groups["eval:needle"]["mean_cost_usd"] == pytest.approx(per_call)
    assert groups["eval:needle"]["p50_latency_s"] > 0
    rows = [e for e in Ledger().entries() if e.task == "eval:needle"]
    assert {e.strategy for e in rows} == {"stuff"} and all(e.question_sha256 for e in rows)

    text = runner.invoke(main, ["costs", "--by", "task"]).output
    assert "5 calls" in text and "USD/call" in text and "p50 s" in text
    [eval_line] = [line for line in text.splitlines() if line.startswith("eval:needle")]
    assert eval_line.split()[1] == "3" and float(eval_line.split()[4]) == pytest.approx(3 * per_call, abs=1e-6)


def test_a_since_window_past_the_calendar_is_one_sentence():
    result = CliRunner().invoke(main, ["costs", "--since", "99999999d"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: --since '99999999d' reaches back before the year 1")


@pytest.mark.parametrize("label, why", [("X\nforged-row 999", "printable"), ("", "give a short name"),
                                        ("   ", "give a short name"), ("a" * 65, "at most 64")])
def test_a_task_label_is_one_printable_line_where_it_is_given(sample_corpus, label, why):
    from ragkit.answer import Session

    result = CliRunner().invoke(main, ["ask", str(sample_corpus), "q", "-m", "gpt-4o-mini", "--task", label])
    assert result.exit_code == 2 and "--task" in result.output and why in result.output
    with pytest.raises(InputError, match=why):
        Session(sample_corpus, task=label)
    assert Ledger().entries() == []


def test_costs_by_task_shows_a_stored_label_with_a_newline_escaped_on_its_own_row():
    Ledger().record(entry(task="X\nforged-row 999"))    # a row written before labels were checked
    Ledger().record(entry(task="ask\x1b[2J"))
    result = CliRunner().invoke(main, ["costs", "--by", "task"])
    assert result.exit_code == 0, result.output
    rows = result.output.split("\ntask", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert len(rows) == 2 and not any(line.startswith("forged-row") for line in result.output.splitlines())
    assert any(r.startswith("X\\nforged-row 999 ") for r in rows) and any(r.startswith("ask\\x1b[2J ") for r in rows)
    assert "\x1b" not in result.output
