"""The eval results log: one typed, versioned record per call; torn lines, old files, newer files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm_server import LLMServer, Reply

from ragkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def needle_reader(req) -> Reply:
    """Answers every needle question correctly (the needle sentence is in the prompt)."""
    import re

    m = re.search(r"archive vault is (\S+)\.|lighthouse soup is ([^.]+)\.|repainted ([^.]+)\.|chess club is "
                  r"(?:a |an )?([^.]+)\.", req.prompt)
    return Reply(next(g for g in m.groups() if g) if m else "unknown", input_tokens=600, output_tokens=4)


def eval_needle(srv, out: Path, cache: Path, lengths: str) -> dict:
    result = CliRunner().invoke(main, ["eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url,
                                       "-l", lengths, "--depths", "0,50,100", "-n", "1", "--concurrency", "1",
                                       "--cache", str(cache), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_a_torn_last_line_is_dropped_on_resume_and_every_later_record_is_whole(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache.sqlite"
    log = out / "results.jsonl"
    with LLMServer(responder=needle_reader) as srv:
        eval_needle(srv, out, cache, "500")
        lines = log.read_text().splitlines()
        assert len(lines) == 3
        # killed mid-write: the last line cut short, no newline
        log.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
        sent = len(srv.requests)
        data = eval_needle(srv, out, cache, "500,1k")   # resume, with more calls appended after the torn line
        assert len(srv.requests) - sent == 3             # only the new length is paid; the torn call is cached
    records = [json.loads(line) for line in log.read_text().splitlines()]   # every line whole
    assert len(records) == 6 and len({r["call_id"] for r in records}) == 6
    assert all(r["status"] == "ok" and r["score"] == 1.0 for r in records)
    assert data["summary"]["calls"] == 6


COMMITTED = ROOT / "evals" / "reports" / "needle-qwen2.5-coder-0.5b-local"


def test_committed_report_rerenders_identically_and_its_lines_round_trip(tmp_path):
    from ragkit.evals.records import EvalRecord, read
    from ragkit.evals.report import render_report

    lines = (COMMITTED / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [EvalRecord.from_dict(json.loads(line)).to_json() for line in lines] == lines  # the same bytes back
    copy = tmp_path / "report"
    shutil.copytree(COMMITTED, copy)
    render_report(copy)
    for name in ("summary.json", "report.md"):
        assert (copy / name).read_text(encoding="utf-8") == (COMMITTED / name).read_text(encoding="utf-8")
    assert len(read(copy)) == len(lines) == 90


def test_a_record_from_a_newer_ragkit_is_refused_with_a_sentence(tmp_path):
    line = json.loads((COMMITTED / "results.jsonl").read_text(encoding="utf-8").splitlines()[0])
    (tmp_path / "results.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "v": 2, "new": 1}) + "\n")
    result = CliRunner().invoke(main, ["eval", "report", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "line 2 was written by a newer ragkit (results format v2" in result.output
    assert "upgrade ragkit" in result.output


def test_a_record_glued_after_a_torn_line_by_an_older_ragkit_is_recovered(tmp_path):
    from ragkit.evals.records import read

    first, second, third = (COMMITTED / "results.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    (tmp_path / "results.jsonl").write_text(first + "\n" + second[:70] + third + "\n")  # the old append bug
    assert [r.call_id for r in read(tmp_path)] == [json.loads(first)["call_id"], json.loads(third)["call_id"]]


def test_something_else_in_results_jsonl_is_named_not_misread(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"id": 1, "text": "a corpus line"}\n')
    result = CliRunner().invoke(main, ["eval", "report", str(tmp_path)])
    assert result.exit_code == 1 and "line 1 is not an eval record (no call_id" in result.output
