"""What a run's reports read back, damaged: a cache row with wrong column types, a run.json that is not an
object, a record of an unknown format version (named by its real line), a line with wrong field types.
Each is one sentence (or, for the cache, one warning and the call asked again), never a traceback."""
from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from llm_server import LLMServer, Reply

from ragkit.cli import main
from ragkit.evals.cache import ResponseCache
from ragkit.evals.records import EvalRecord, read, write_meta
from ragkit.evals.runner import GridSpec, run_grid
from ragkit.evals.tasks import NeedleTask

GRID = GridSpec(task="needle", model="gpt-4o-mini", lengths=(500,), depths=(0, 100), samples=1, strategies=("stuff",))


def _run(tmp_path, srv, name: str):
    return run_grid(NeedleTask(), GRID, tmp_path / name, base_url=srv.openai_base_url,
                    cache=ResponseCache(tmp_path / "cache.sqlite"), max_cost_usd=1.0, progress=False,
                    echo=lambda m: None, render=False)


def test_a_cache_row_with_wrong_column_types_is_asked_again_with_one_warning(tmp_path, capfd):
    with LLMServer(responder=lambda r: Reply("no idea", input_tokens=300, output_tokens=2)) as srv:
        _run(tmp_path, srv, "first")
        assert len(srv.requests) == 2
        with sqlite3.connect(tmp_path / "cache.sqlite") as db:  # SQLite lets any cell hold anything
            db.execute("UPDATE responses SET text = X'00ff', input_tokens = 'many'")
        capfd.readouterr()
        result = _run(tmp_path, srv, "second")
        assert len(srv.requests) == 4  # both damaged answers asked again, none scored from garbage
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "damaged row (text is b'\\x00\\xff' (bytes), not str)" in warnings[0]
    assert result.calls_made == 2 and all(r.prediction == "no idea" for r in read(tmp_path / "second"))
    cache = ResponseCache(tmp_path / "cache.sqlite")  # the rows were replaced with the new answers
    assert {cache.get(r.key).text for r in read(tmp_path / "second")} == {"no idea"}


def _record(i: int) -> dict:
    return EvalRecord(call_id=f"stuff/L1000/D{i}/S0", task="needle", model="gpt-4o", length=1000,
                      length_unit="tokens", depth=float(i), depth_unit="percent", strategy="stuff", sample=0,
                      status="ok", score=1.0, prediction="x").to_dict()


def _folder(tmp_path, lines: list[str | bytes], meta) -> str:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n"
                                                 for line in lines))
    if isinstance(meta, dict):
        write_meta(out, meta)
    else:
        (out / "run.json").write_text(meta)
    return str(out)


def _error_line(args) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    [line] = res.output.strip().splitlines()
    assert line.startswith("Error: "), line
    return line


@pytest.mark.parametrize("command", ["compare", "eval"])
@pytest.mark.parametrize("meta", ["[]", "null", '{"format": 5}', "{not json", '"ragkit-compare/1"'])
def test_report_on_a_folder_whose_run_json_is_not_an_object_is_one_sentence(tmp_path, command, meta):
    out = _folder(tmp_path, [json.dumps(_record(0))], meta)
    assert "run.json is not a run's run.json" in _error_line([command, "report", out])


@pytest.mark.parametrize("command, fmt", [("eval", "ragkit-eval/1"), ("compare", "ragkit-compare/1")])
def test_an_unknown_record_version_is_reported_on_its_real_line(tmp_path, command, fmt):
    lines = [json.dumps(_record(i)) for i in range(12)] + [json.dumps({**_record(12), "v": 99})]
    # a torn line with a stray carriage return, a blank line and one with a byte that is not UTF-8 are
    # each one line, as `wc -l` and an editor count them
    lines[3] = lines[3][:40] + "\r" + lines[3][40:60]
    lines[5] = ""
    lines[7] = lines[7].encode()[:30] + b"\xff"
    out = _folder(tmp_path, lines, {"format": fmt, "task": "needle"})
    line = _error_line([command, "report", out])
    assert "results.jsonl line 13 was written by a newer ragkit (results format v99" in line


@pytest.mark.parametrize("field, value, words", [
    ("score", "high", "score is 'high' (str), not float or null"),
    ("prediction", 42, "prediction is 42 (int), not str or null"),
    ("answers", "Paris", "answers is 'Paris' (str), not a list of strings"),
    ("length", True, "length is True (bool), not int"),
])
def test_a_record_with_a_wrong_field_type_is_named_with_its_line(tmp_path, field, value, words):
    lines = [json.dumps(_record(i)) for i in range(3)]
    lines[2] = json.dumps({**_record(2), field: value})
    out = _folder(tmp_path, lines, {"format": "ragkit-eval/1", "task": "needle"})
    line = _error_line(["eval", "report", out])
    assert "results.jsonl line 3 is damaged (" + words + ")" in line


def test_a_record_that_is_not_an_object_is_one_sentence(tmp_path):
    out = _folder(tmp_path, [json.dumps(_record(0)), "[1, 2]"], {"format": "ragkit-eval/1", "task": "needle"})
    assert "line 2 is not an eval record (it holds list" in _error_line(["eval", "report", out])
