"""`ragkit compare` end to end: stand-in models with exact, known accuracies (tests/model_world.py) behind
the real openai SDK over real HTTP; the real ask path (Session.prepare/complete), cache, log and ledger."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import model_world as w
from helpers import run
from llm_server import LLMServer
from ragkit.compare import load_golden
from ragkit.evals.compare_report import paired_bootstrap
from ragkit.ledger import Ledger
from ragkit.models import get_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def world(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        w.register_models(srv)
        yield srv, w.make_corpus(tmp_path), w.make_golden(tmp_path), tmp_path


def test_compare_recovers_known_accuracies_costs_and_the_switching_verdicts(world):
    srv, corpus, golden, tmp = world
    out = tmp / "out"
    code, stdout, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "twin",
                             "-m", "close", "-m", "small", "--tasks-per-day", "5000", "-o", str(out),
                             "--cache", str(tmp / "cache.sqlite"), "--json"])
    assert code == 0, err
    summary = json.loads(stdout)["summary"]
    groups = {g["label"]: g for g in summary["groups"]}
    for model, accuracy in {"big": 0.9, "twin": 0.9, "close": 0.8, "small": 0.7}.items():
        g = groups[model]
        assert g["n"] == 40 and g["accuracy"] == pytest.approx(accuracy)
        assert g["low"] < accuracy < g["high"]
        assert g["cost_per_task_usd"] == pytest.approx(w.cost_per_task(model))     # API-reported usage x prices
        assert g["cost_per_month_usd"] == pytest.approx(w.cost_per_task(model) * 5000 * 30)
        assert (g["input_tokens_per_task"], g["output_tokens_per_task"]) == (w.INPUT_TOKENS, w.OUTPUT_TOKENS)
        assert g["ttft_p50_s"] is not None and g["latency_p95_s"] >= g["latency_p50_s"]
        assert g["strategies_used"] == {"stuff": 40}                                # auto: the planner stuffed
    assert groups["small"]["abstained"] == 4 and groups["big"]["abstained"] == 0
    assert groups["big"]["citation_accuracy"] == 1.0                                # [1] holds every code
    # the most accurate at the lowest cost is the reference; each verdict on the same 40 questions
    assert summary["most_accurate"] == "twin"
    verdicts = {v["label"]: v for v in summary["verdicts"]}
    assert verdicts["big"]["decision"] == "keep" and "costs $1,390.50/month more" in verdicts["big"]["sentence"]
    assert verdicts["close"]["decision"] == "undecided" and verdicts["close"]["diff_points"] == pytest.approx(-10)
    assert verdicts["close"]["questions_needed"] > 40 and "questions would decide it" in verdicts["close"]["sentence"]
    assert verdicts["small"]["decision"] == "keep" and verdicts["small"]["high_points"] < -5
    assert summary["pareto"] == ["small", "close", "twin"]
    for name in ("report.md", "summary.json", "results.jsonl", "run.json", "cost_accuracy.png", "latency.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "not decisive at n=40" in report
    # the models as this run saw them (an override of the limit or prices changes the answers and costs)
    big = get_model("big")
    assert json.loads((out / "run.json").read_text())["model_specs"]["big"] == big.to_dict()
    assert f"| big | {big.practical_limit_tokens:,} | {big.max_output_tokens:,} | " in report
    # every call reached the ledger under task "compare", once
    assert {e.task for e in Ledger().entries()} == {"compare"} and len(Ledger().entries()) == 160 == len(srv.requests)


def test_an_equally_accurate_dearer_model_is_kept_out_and_a_close_one_is_undecided(world):
    srv, corpus, golden, tmp = world
    code, stdout, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "twin",
                             "--tasks-per-day", "5000", "-o", str(tmp / "o2"), "--cache", str(tmp / "c.sqlite")])
    assert code == 0, err
    assert "big is no more accurate than twin" in stdout      # tie: the cheaper one is the reference


def test_a_cheaper_model_decisively_within_five_points_is_told_what_switching_saves():
    """The article's case: 1 point below on 100 shared questions, the whole interval within 5 points."""
    from ragkit.evals.compare_report import Group, verdict

    def g(label, acc, month):
        return Group(label, label, "auto", 100, 0, acc, 0, 1, None, None, 0, None, month / 150000, None, None,
                     None, None, None, None, month / 30, month, {})

    by_q = {"a": {str(i): 1.0 for i in range(100)}, "b": {str(i): float(i != 0) for i in range(100)}}
    v = verdict(g("b", 0.99, 390.0), g("a", 1.0, 11250.0), by_q, 5000)
    assert v.decision == "switch" and v.low_points >= -5 and v.diff_points == pytest.approx(-1)
    assert v.sentence.startswith("b is within 5 points of a (-1.0, 95% CI")
    assert v.sentence.endswith("switching saves $10,860.00/month at 5,000 tasks/day.")


def test_paired_bootstrap_is_seeded_and_centred():
    diffs = [0.0] * 30 + [-1.0] * 10
    assert paired_bootstrap(diffs) == paired_bootstrap(diffs)
    lo, hi = paired_bootstrap(diffs)
    assert lo < -0.25 < hi and hi < 0


def test_golden_set_bundled_nq_file_and_fixed_sample():
    path = ROOT / "corpora" / "questions" / "nq-wiki.jsonl"
    questions, sha = load_golden(path, sample=25)
    again, _ = load_golden(path, sample=25)
    assert [q.question for q in questions] == [q.question for q in again] and len(questions) == 25
    assert all(q.gold and q.gold[0].startswith("p") for q in questions)   # passage_id counts as gold
    assert len(sha) == 64


def test_bad_golden_line_is_one_sentence(tmp_path, world):
    _srv, corpus, _golden, _ = world
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x?", "answers": ["a"]}\n{"question": "y?"}\n')
    code, _out, err = run(["compare", str(corpus), "--questions", str(bad), "-m", "big", "-o", str(tmp_path / "o")])
    assert code == 1 and err.startswith("Error: ") and "line 2" in err and "answers" in err


def test_max_cost_refuses_before_any_call(world):
    srv, corpus, golden, tmp = world
    code, _out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "small",
                           "--max-cost", "0.001", "-o", str(tmp / "o"), "--cache", str(tmp / "c.sqlite")])
    assert code == 1 and "exceeds --max-cost" in err and "the first 1 of 80 calls may already cost $" in err
    assert srv.requests == [] and Ledger().entries() == []


def test_report_rerenders_without_calls_and_save_writes_accuracy_the_registry_reads(world):
    srv, corpus, golden, tmp = world
    out = tmp / "o"
    code, _out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "small",
                           "--sample", "20", "-o", str(out), "--cache", str(tmp / "c.sqlite"), "--task", "lookup"])
    assert code == 0, err
    sent = len(srv.requests)
    (out / "report.md").unlink()
    code, stdout, err = run(["compare", "report", str(out), "--tasks-per-day", "100", "--save"])
    assert code == 0, err
    assert len(srv.requests) == sent and (out / "report.md").is_file()
    big = get_model("big").measured_accuracy("lookup")
    assert big["n"] == 20 and 0 < big["accuracy"] <= 1 and big["golden"].startswith("sha256:")
    assert big["source"] == "measured: ragkit compare" and big["date"]
    assert get_model("small").measured_accuracy("lookup")["accuracy"] < big["accuracy"]
    assert "Saved big's accuracy on lookup" in stdout


def test_registry_refuses_a_malformed_accuracy_table(tmp_path):
    Path(os.environ["RAGKIT_CONFIG"]).write_text('[models."gpt-4o"]\naccuracy = { qa = { accuracy = 1.5, n = 3 } }\n')
    from ragkit.errors import ConfigError

    with pytest.raises(ConfigError, match="accuracy for task \"qa\" must be a fraction from 0 to 1"):
        get_model("gpt-4o")


def test_kill_9_mid_compare_resumes_without_paying_twice(tmp_path):
    """Killed mid-run, the comparison resumes: every answer received before the kill comes back from the
    cache or the log and is never asked again; only the calls in flight at the kill (at most --concurrency)
    are sent again, and the ledger holds one row per answered call."""
    with LLMServer(responder=lambda req: (time.sleep(0.15), w.responder(req))[1]) as srv:
        w.register_models(srv)
        corpus, golden = w.make_corpus(tmp_path), w.make_golden(tmp_path, 24)
        out = tmp_path / "o"
        args = [sys.executable, "-m", "ragkit.cli", "compare", str(corpus), "--questions", str(golden), "-m", "big",
                "-m", "small", "-o", str(out), "--cache", str(tmp_path / "c.sqlite"), "--concurrency", "2", "-q"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(srv.requests) < 10:
            time.sleep(0.05)
        os.killpg(proc.pid, 9)
        proc.wait()
        time.sleep(0.5)  # the server finishes the answers the dead client will never read
        logged = {(r["model"], r["question"]) for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
                  if r["status"] == "ok"}
        sent_before = len(srv.requests)
        assert 5 <= len(logged) < 48, "the kill must land mid-run"
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        resent = [(r.model.removesuffix("-served"), f"What is the code of item {w.item_of(r)}?")
                  for r in srv.requests[sent_before:]]
    assert f"{len(logged)} already done" in done.stderr
    assert not set(resent) & logged                          # nothing answered before the kill is paid again
    assert sent_before + len(resent) - 48 <= 2               # only the in-flight calls were sent twice
    assert len(Ledger().entries()) == 48                     # one ledger row per answered call
    summary = json.loads((out / "summary.json").read_text())
    assert {g["label"]: g["n"] for g in summary["groups"]} == {"big": 24, "small": 24}


def test_judge_grades_free_form_references_and_its_cost_is_counted_apart(world):
    srv, corpus, _golden, tmp = world
    golden, out, cache = w.make_free_form_golden(tmp), tmp / "o", str(tmp / "c.sqlite")
    base = ["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "small", "-o", str(out),
            "--cache", cache, "--json"]
    code, stdout, err = run([*base, "--judge", "judge"])
    assert code == 0, err
    summary = json.loads(stdout)["summary"]
    groups = {g["label"]: g for g in summary["groups"]}
    # no answer is a subspan of a sentence reference; the judge recovers the stand-ins' true accuracies
    assert groups["big"]["accuracy"] == pytest.approx(0.9) and groups["small"]["accuracy"] == pytest.approx(0.7)
    assert groups["big"]["cost_per_task_usd"] == pytest.approx(w.cost_per_task("big"))   # the judge is not in it
    judge_usd = (w.JUDGE_INPUT_TOKENS * 2.0 + w.JUDGE_OUTPUT_TOKENS * 8.0) / 1e6
    # a grade is cached by its prompt: where big and small gave the same answer (28 items) it is paid once
    graded = 80 - 28
    rows = Ledger().entries()
    assert sorted(e.task for e in rows) == ["compare"] * 80 + ["compare:judge"] * graded
    assert summary["judge"]["model"] == "judge" and summary["judge_calls"] == graded
    assert summary["judge_cost_usd"] == pytest.approx(graded * judge_usd)
    report = (out / "report.md").read_text()
    assert "## Judge" in report and "Reply with exactly one word: CORRECT or INCORRECT." in report
    assert "Accuracy is the judge's verdict (judge" in report
    sent = len(srv.requests)
    # the same judge again: nothing is paid twice
    code, _stdout, err = run([*base, "--judge", "judge"])
    assert code == 0, err
    assert len(srv.requests) == sent
    # without a judge the cached answers are scored by exact match again, with no call at all
    code, stdout, err = run(base)
    assert code == 0, err
    assert len(srv.requests) == sent and len(Ledger().entries()) == 80 + graded
    plain = {g["label"]: g for g in json.loads(stdout)["summary"]["groups"]}
    assert plain["big"]["accuracy"] == 0.0 and json.loads(stdout)["summary"]["judge"] is None


def test_judge_verdict_parsing():
    from ragkit.judge import JudgeError, parse_verdict

    assert parse_verdict("CORRECT") == 1 and parse_verdict("Correct.") == 1
    assert parse_verdict("INCORRECT") == 0 and parse_verdict("The candidate is incorrect.") == 0
    with pytest.raises(JudgeError, match="neither CORRECT nor INCORRECT"):
        parse_verdict("It depends.")


def test_compare_exits_1_and_says_so_when_a_model_failed_on_every_question(tmp_path):
    from llm_server import Fault

    with LLMServer(responder=lambda r: Fault.status(401, "bad key") if r.model == "limited-served" else w.responder(r)) as srv:
        w.register_models(srv)
        corpus, golden = w.make_corpus(tmp_path), w.make_golden(tmp_path, 3)
        code, out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "-m", "limited",
                              "-o", str(tmp_path / "o"), "--cache", str(tmp_path / "c.sqlite"), "-q"])
    assert code == 1
    assert "big: accuracy" in out                            # the model that answered is still reported
    assert "ragkit: warning: limited failed on every question (3 failures)" in err


@pytest.mark.slow   # two CLI processes: ~11 s on a loaded machine
def test_ctrl_c_mid_compare_exits_130_and_the_run_resumes(tmp_path):
    """SIGINT (Ctrl-C) is not a failure: exit 130 as shells expect, one line, no 'Aborted!'; the answers
    received before it are kept and not asked again."""
    import signal

    with LLMServer(responder=lambda req: (time.sleep(0.3), w.responder(req))[1]) as srv:
        w.register_models(srv)
        corpus, golden = w.make_corpus(tmp_path), w.make_golden(tmp_path, 4)
        args = [sys.executable, "-m", "ragkit.cli", "compare", str(corpus), "--questions", str(golden), "-m", "twin",
                "-o", str(tmp_path / "o"), "--cache", str(tmp_path / "c.sqlite"), "--concurrency", "1", "-q"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # A job started in the background by a non-interactive shell (as CI may run us) inherits SIGINT
        # ignored, and Python then keeps ignoring it: give the child the default disposition, as a terminal would.
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(srv.requests) < 2:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Aborted!" not in err and "Traceback" not in err
        sent_before = len(srv.requests)
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr and len(srv.requests) - sent_before < 4
