"""`ragkit eval` end to end against a real local OpenAI-compatible server whose behaviour is known.

The server plays a simulated reader that answers correctly only when the needle lies within the
first or last K tokens of the document it is given (a caricature of lost in the middle). The
report must recover that behaviour: the U-shape across depths, the decline across lengths, a
measured limit at the grid step where the reader stops coping, and retrieve overtaking stuff.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm_server import Fault, LLMServer, Reply

from ragkit.cli import main
from ragkit.evals.cache import call_key
from ragkit.models import get_model
from ragkit.tokens import counter_for

COUNTER = counter_for("gpt-4o-mini")  # the model under test counts in o200k, exactly
K = 600  # the simulated reader sees only the first and last K tokens of its document
NEEDLE_FACT = re.compile(r"archive vault is (\S+)\.|lighthouse soup is ([^.]+)\.|repainted ([^.]+)\."
                         r"|chess club is (?:a |an )?([^.]+)\.")


def simulated_reader(k: int = K):
    def respond(req) -> Reply:
        doc = re.search(r"<document>\n(.*)\n</document>", req.prompt, re.S).group(1)
        ids = COUNTER.encode(doc)
        visible = COUNTER.decode(ids[:k]) + "\n" + COUNTER.decode(ids[-k:])
        m = NEEDLE_FACT.search(visible)
        text = next(g for g in m.groups() if g) if m else "The document does not say."
        return Reply(text, input_tokens=COUNTER.count(req.system) + COUNTER.count(req.prompt), output_tokens=5)

    return respond


def _read_log(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the kill
            pass
    return out


def _cache_keys(path: Path) -> set[str]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT key FROM responses")}
    finally:
        db.close()


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_report_recovers_the_simulated_readers_u_shape_decline_and_limit(tmp_path):
    out, overrides = tmp_path / "run", tmp_path / "ragkit.toml"
    with LLMServer(responder=simulated_reader()) as srv:
        data = invoke("eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url,
                      "-l", "500,1k,2k,4k", "--depths", "0,50,100", "-n", "1", "-s", "stuff,retrieve",
                      "--retrieve-budget", "400", "--cache", str(tmp_path / "cache.sqlite"), "-o", str(out),
                      "--save-limit", "--force", "--overrides", str(overrides), "--json")  # n=3 per length: not significant
        assert len(srv.requests) == 4 * 3 * 2  # nothing answered twice within a run
    summary = data["summary"]
    stuff = summary["strategies"]["stuff"]
    by_length = {int(L): c["accuracy"] for L, c in stuff["by_length"].items()}
    # Decline across lengths: everything visible up to 1K; the middle is lost beyond.
    assert by_length == {500: 1.0, 1000: 1.0, 2000: pytest.approx(2 / 3), 4000: pytest.approx(2 / 3)}
    cells = {(c["length"], c["depth"]): c["accuracy"] for c in stuff["cells"]}
    # The U-shape: the edges are found at every length, the middle only while it is within K tokens.
    for length in (2000, 4000):
        assert cells[(length, 0)] == cells[(length, 100)] == 1.0 and cells[(length, 50)] == 0.0
    # The measured limit is the last grid step before the reader stops coping; retrieve (which packs the
    # needle's chunk into a 400-token context) overtakes stuff exactly there.
    limit = summary["limit"]
    assert limit["length"] == 1000 and limit["strategy"] == "stuff" and limit["floor"] == pytest.approx(0.9)
    assert limit["retrieve_overtakes_at"] == 2000
    retrieve = summary["strategies"]["retrieve"]
    assert all(c["accuracy"] == 1.0 for c in retrieve["by_length"].values())

    # The results log: one line per call, with the fields the report is built from.
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and len({r["call_id"] for r in lines}) == 24
    r = lines[0]
    for field in ("task", "model", "length", "depth", "strategy", "sample", "prediction", "score",
                  "input_tokens", "output_tokens", "cost_usd", "latency_s", "context_tokens"):
        assert field in r
    retrieved = [x for x in lines if x["strategy"] == "retrieve"]
    assert all(x["context_tokens"] <= 400 and x["gold_in_context"] for x in retrieved)
    report = (out / "report.md").read_text()
    assert "**1K tokens** (prompts of about" in report and "Retrieve overtakes stuff at **2K**" in report
    assert "| 2K | 100% " in report  # the table row for 2K starts with the depth-0 cell
    for png in ("heatmap-stuff.png", "heatmap-retrieve.png", "accuracy-vs-length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --save-limit: the planner now uses the measured limit, and says it is measured, when and by what.
    os.environ["RAGKIT_CONFIG"] = str(overrides)  # the autouse fixture restores it
    from ragkit.models import get_model, _cache

    _cache.clear()
    spec = get_model("gpt-4o-mini")
    assert spec.limit_is_measured and "by ragkit eval needle" in spec.limit_source
    assert spec.practical_limit_tokens == data["saved_limit"]["practical_limit_tokens"]
    assert 1000 < spec.practical_limit_tokens < 1200  # the prompts at 1K context, as the model counted them


def test_report_rerenders_from_results_without_calling_a_model(tmp_path):
    out = tmp_path / "run"
    with LLMServer(responder=simulated_reader()) as srv:
        first = invoke("eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url, "-l", "500,2k",
                       "--depths", "0,50", "-n", "1", "--cache", str(tmp_path / "c.sqlite"), "-o", str(out), "--json")
        made = len(srv.requests)
        (out / "report.md").unlink()
        again = invoke("eval", "report", str(out), "--json")
        rerun = invoke("eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url, "-l", "500,2k",
                       "--depths", "0,50", "-n", "1", "--cache", str(tmp_path / "c.sqlite"), "-o", str(tmp_path / "b"),
                       "--json")
        assert len(srv.requests) == made == 4  # re-rendering and re-running cost nothing
    assert again["summary"]["strategies"] == first["summary"]["strategies"] == rerun["summary"]["strategies"]
    assert (out / "report.md").exists()
    assert rerun["run"]["calls_made"] == 0 and rerun["run"]["estimate"]["cached"] == 4


def test_max_cost_refuses_before_any_call(tmp_path):
    with LLMServer(responder=simulated_reader()) as srv:
        result = CliRunner().invoke(main, ["eval", "needle", "-m", "gpt-4o", "--base-url", srv.openai_base_url,
                                           "-l", "30k", "--depths", "0,50,100", "-n", "2", "--max-cost", "0.05",
                                           "-s", "stuff,retrieve",
                                           "--cache", str(tmp_path / "c.sqlite"), "-o", str(tmp_path / "o")])
        assert result.exit_code == 1
        assert "exceeds --max-cost $0.05" in result.output
        assert "12 calls to gpt-4o still to make" in result.output  # refused before any retrieval ranking
        assert srv.requests == []


def test_failed_calls_are_unscored_and_retried_on_resume(tmp_path):
    broken = {"on": True}
    reader = simulated_reader()

    def flaky(req):
        if broken["on"] and "chess club" in req.prompt:
            return Fault.status(400, "bad request")  # not retried by the SDK
        return reader(req)

    args = ["eval", "needle", "-m", "gpt-4o-mini", "-l", "500", "--depths", "0,100", "-n", "4",
            "--cache", str(tmp_path / "c.sqlite"), "-o", str(tmp_path / "o"), "--json"]
    with LLMServer(responder=flaky) as srv:
        first = invoke(*args, "--base-url", srv.openai_base_url)
        lines = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
        failed = [x for x in lines if x["status"] == "failed"]
        assert failed and all(x["score"] is None for x in failed)  # unscored, never "wrong"
        stuff = first["summary"]["strategies"]["stuff"]["overall"]
        assert stuff["accuracy"] == 1.0 and stuff["failed"] == len(failed) and stuff["n"] == 8 - len(failed)
        broken["on"] = False
        n = len(srv.requests)
        second = invoke(*args, "--base-url", srv.openai_base_url)
        assert len(srv.requests) - n == len(failed)  # only the failed ones are called again
    assert second["summary"]["strategies"]["stuff"]["overall"]["n"] == 8
    lines = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(x["status"] == "ok" for x in lines)


def test_kill_9_and_resume_pays_no_call_twice_and_loses_nothing(tmp_path):
    """A run killed mid-way resumes from the cache and the log: every call answered before the kill is
    never sent again, and the final log has exactly one line per call."""
    answered: list[str] = []
    lock = threading.Lock()
    reader = simulated_reader()

    def slow_reader(req):
        time.sleep(0.4)  # slow enough that the kill lands mid-run even on a loaded machine
        reply = reader(req)
        with lock:
            answered.append(req.prompt)
        return reply

    out, cache = tmp_path / "run", tmp_path / "cache.sqlite"
    args = [sys.executable, "-c", "from ragkit.cli import main; main()", "eval", "needle", "-m", "gpt-4o-mini",
            "-l", "500,1k", "--depths", "0,25,50,75,100", "-n", "2", "--concurrency", "2", "--cache", str(cache),
            "-o", str(out), "--no-progress"]
    total = 2 * 5 * 2
    with LLMServer(responder=slow_reader) as srv:
        proc = subprocess.Popen(args + ["--base-url", srv.openai_base_url], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = (out / "results.jsonl").read_text().splitlines() if (out / "results.jsonl").exists() else []
            if len(lines) >= 6:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(1.0)  # let the server finish the in-flight answers the dead client will never read
        with lock:
            before_kill = set(answered)
        logged = _read_log(out / "results.jsonl")
        cached_keys = _cache_keys(cache)
        assert 6 <= len(before_kill) < total, "the kill must land mid-run"
        sent_before = len(srv.requests)

        resumed = subprocess.run(args + ["--base-url", srv.openai_base_url], capture_output=True, text=True,
                                 timeout=120)
        assert resumed.returncode == 0, resumed.stderr + resumed.stdout
        resent = srv.requests[sent_before:]
    spec = get_model("gpt-4o-mini")
    resent_keys = [call_key(spec.id, spec.api_model, r.system, r.prompt, 64, 0.0) for r in resent]
    # Every call logged before the kill had been cached first, and counts as done on resume.
    assert {r["key"] for r in logged} <= cached_keys
    assert f"{len(logged)} already done" in resumed.stderr
    # No call is paid twice: nothing in the cache at the kill is sent again. Only answers that were in
    # flight when the client died (at most --concurrency of them) can be asked again.
    assert not set(resent_keys) & cached_keys
    assert len({r.prompt for r in resent} & before_kill) <= 2
    assert len(set(resent_keys)) == len(resent_keys)
    # Nothing lost or duplicated: one line per call, all scored.
    final = _read_log(out / "results.jsonl")
    assert len(final) == total and len({r["call_id"] for r in final}) == total
    assert all(r["status"] == "ok" for r in final)
    assert {r["call_id"]: r["key"] for r in logged}.items() <= {r["call_id"]: r["key"] for r in final}.items()
    # And a third run pays nothing at all.
    with LLMServer(responder=slow_reader) as srv:
        again = subprocess.run(args + ["--base-url", srv.openai_base_url], capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 0 and srv.requests == []


def edge_reader(answer_of, k: int):
    """A reader that finds the answer only in the first/last k tokens of the context block.

    answer_of(prompt) -> (context, answer) locates the context and the answer the test knows.
    """
    def respond(req) -> Reply:
        context, answer = answer_of(req.prompt)
        ids = COUNTER.encode(context)
        visible = COUNTER.decode(ids[:k]) + "\n" + COUNTER.decode(ids[-k:])
        return Reply(answer if answer in visible else "unknown", input_tokens=COUNTER.count(req.prompt),
                     output_tokens=3)

    return respond


def test_suite_runs_kv_and_paper_qa_and_recovers_the_edges(tmp_path):
    from ragkit.evals.tasks import BUNDLED_QUESTIONS

    answers = {q["question"]: q["answers"][0] for q in map(json.loads, BUNDLED_QUESTIONS.read_text().splitlines())}

    def answer_of(prompt: str):
        if prompt.startswith("Extract the value"):
            key = re.search(r'Key: "([^"]+)"\nCorresponding value:$', prompt).group(1)
            data = prompt[prompt.index("JSON data:"):prompt.index("\n\nKey:")]
            return data, re.search(f'"{key}": "([^"]+)"', data).group(1)
        question = re.search(r"Question: (.*)\nAnswer:$", prompt).group(1)
        return prompt[:prompt.index("\n\nQuestion:")], answers[question]

    suite = tmp_path / "edges.toml"
    suite.write_text('''
name = "edges"
samples = 2
max_tokens = 16
[[runs]]
name = "kv"
task = "kv"
lengths = [500, 3000]
depths = [0, 50, 100]
[[runs]]
name = "qa"
task = "qa"
lengths = [10]
depths = [0, 4, 9, 14]
[runs.options]
distractors = "random"
''')
    with LLMServer(responder=edge_reader(answer_of, 300)) as srv:
        data = invoke("eval", "suite", str(suite), "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url,
                      "--cache", str(tmp_path / "c.sqlite"), "-o", str(tmp_path / "out"), "--json")
        assert len(srv.requests) == 2 * 3 * 2 + 3 * 2  # position 14 does not exist among 10 documents
    kv = {(c["length"], c["depth"]): c["accuracy"] for c in data["runs"]["kv"]["summary"]["strategies"]["stuff"]["cells"]}
    assert kv == {(500, 0): 1.0, (500, 50): 1.0, (500, 100): 1.0, (3000, 0): 1.0, (3000, 50): 0.0, (3000, 100): 1.0}
    qa = data["runs"]["qa"]["summary"]
    assert qa["length_unit"] == "docs" and qa["depth_unit"] == "position"
    assert {c["depth"]: c["accuracy"] for c in qa["strategies"]["stuff"]["cells"]} == {0: 1.0, 4: 0.0, 9: 1.0}
    report = (tmp_path / "out" / "qa" / "report.md").read_text()
    assert "| 10 docs |" in report and "pos 4" in report
    assert (tmp_path / "out" / "kv" / "heatmap-stuff.png").exists()


def test_bundled_and_custom_suites_load(tmp_path):
    from ragkit.evals.suites import load_suite

    litm = load_suite("lost-in-the-middle")
    assert {r.task for r in litm.runs} == {"needle", "qa", "kv"}
    from ragkit.evals.tasks import make_task

    custom = tmp_path / "mine.toml"
    custom.write_text('[[runs]]\ntask = "needle"\nlengths = [500]\ndepths = [50]\n'
                      '[[runs.options.needles]]\ntext = "The build server is named Orca."\n'
                      'question = "What is the build server named?"\nanswers = ["Orca"]\n')
    run = load_suite(str(custom)).runs[0]
    sample = make_task(run.task, **run.options).make_sample(COUNTER, 500, 50, 0)
    assert sample.answers == ("Orca",) and "named Orca." in "".join(sample.units)
    paper = load_suite("litm-paper-qa")
    qa = next(r for r in paper.runs if r.task == "qa")
    assert qa.lengths == (10, 20, 30) and qa.depths[:4] == (0, 4, 9, 14) and qa.options["distractors"] == "hard"
    assert qa.stuff_order == "document"                               # the paper's setting: as placed
    reordered = tmp_path / "edges.toml"
    reordered.write_text('[[runs]]\ntask = "qa"\nlengths = [10]\ndepths = [4]\nstuff_order = "edges"\n')
    assert load_suite(str(reordered)).runs[0].stuff_order == "edges"
    assert "stuffed in edges order" in load_suite(str(reordered)).runs[0].describe()


def test_a_smaller_rerun_into_the_same_folder_keeps_earlier_results(tmp_path):
    out, cache = tmp_path / "o", str(tmp_path / "c.sqlite")
    with LLMServer(responder=simulated_reader()) as srv:
        base = ["eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url, "--depths", "0,50", "-n", "1",
                "--cache", cache, "-o", str(out), "--json"]
        invoke(*base, "-l", "500,2k")
        data = invoke(*base, "-l", "2k", "-s", "stuff,retrieve", "--retrieve-budget", "300")
        assert len(srv.requests) == 4 + 2  # only the new retrieve calls
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["call_id"] for r in lines) == sorted(
        ["stuff/L500/D0/S0", "stuff/L500/D50/S0", "stuff/L2000/D0/S0", "stuff/L2000/D50/S0",
         "retrieve/L2000/D0/S0", "retrieve/L2000/D50/S0"])
    assert set(data["summary"]["strategies"]["stuff"]["by_length"]) == {"500", "2000"}
    assert "results for lengths 500, 2000 (tokens)" in (out / "report.md").read_text()


def test_identical_prompts_in_a_grid_are_paid_once(tmp_path):
    # depth 0.5% of 500 tokens backs off to the same sentence boundary as depth 0: the same prompt
    with LLMServer(responder=simulated_reader()) as srv:
        data = invoke("eval", "needle", "-m", "gpt-4o-mini", "--base-url", srv.openai_base_url, "-l", "500",
                      "--depths", "0,0.5", "-n", "1", "--concurrency", "4", "--cache", str(tmp_path / "c.sqlite"),
                      "-o", str(tmp_path / "o"), "--json")
        assert len(srv.requests) == 1
    lines = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["key"] == lines[1]["key"] and all(r["score"] == 1.0 for r in lines)
    assert data["run"]["calls_made"] == 1


def test_eval_qa_stuff_order_reaches_the_prompt_and_keeps_its_folder(tmp_path):
    """`ragkit eval qa --stuff-order edges` sends ask's order (the gold, the best match, first wherever
    it was placed); the default stays the paper's file order, and mixing the two in one folder is refused."""
    from ragkit.evals.retrieval import stuff_units
    from ragkit.evals.tasks import QATask

    def first_document(req) -> Reply:
        return Reply(re.search(r"Document \[1\]\(Title: ([^)]*)\)", req.prompt).group(1), input_tokens=900,
                     output_tokens=3)

    base = ["eval", "qa", "-m", "gpt-4o-mini", "--docs", "10", "--positions", "0,4,9", "-n", "1", "--distractors",
            "random", "--cache", str(tmp_path / "c.sqlite"), "--json"]
    with LLMServer(responder=first_document) as srv:
        invoke(*base, "--base-url", srv.openai_base_url, "--stuff-order", "edges", "-o", str(tmp_path / "edges"))
        invoke(*base, "--base-url", srv.openai_base_url, "-o", str(tmp_path / "file"))
        refused = CliRunner().invoke(main, [*base, "--base-url", srv.openai_base_url, "-o", str(tmp_path / "edges")])
    assert refused.exit_code == 1 and "holds a --stuff-order edges run" in refused.output
    task = QATask(distractors="random")
    sample = task.make_sample(COUNTER, 10, 4, 0)
    gold_title = task.by_id[sample.meta["gold_passage_id"]]["title"]
    assert stuff_units(task.ranking_texts(sample), sample.question, order="edges")[0] == 4  # (the gold ranks first)
    for folder, first_at in (("edges", {0: 0, 4: 0, 9: 0}), ("file", {0: 0, 4: 4, 9: 9})):
        meta = json.loads((tmp_path / folder / "run.json").read_text())
        assert meta["grid"]["stuff_order"] == {"edges": "edges", "file": "document"}[folder]
        report = (tmp_path / folder / "report.md").read_text()
        assert ("a position is where the gold was placed before that reordering" in report) == (folder == "edges")
        for r in _read_log(tmp_path / folder / "results.jsonl"):
            assert (r["prediction"] == gold_title) == (first_at[int(r["depth"])] == 0)
