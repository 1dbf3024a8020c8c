"""Money and number flags: one validated click type per kind of number (ragkit/cli/params.py), so nan, inf,
negatives and out-of-range values are refused by click in one sentence before anything is read or paid;
the library refuses a nan cost cap too; dollars are printed by one helper (ragkit.costs.usd) with enough
digits that a small amount is not shown as $0.00."""
from __future__ import annotations

import pytest

import model_world as w
from helpers import SAMPLE, run
from llm_server import LLMServer
from ragkit.errors import InputError
from ragkit.ledger import Ledger

COMPARE = ["compare", str(SAMPLE), "--questions", str(SAMPLE.parent / "questions" / "nq-wiki.jsonl"), "-m", "gpt-4o"]
ASK = ["ask", str(SAMPLE), "who wrote the origin of species", "-m", "gpt-4o-mini"]
NEEDLE = ["eval", "needle", "-m", "gpt-4o", "-l", "1k"]
ROUTE = ["route", str(SAMPLE), "who wrote the origin of species"]

REFUSED = [
    (ASK + ["--max-cost", "nan"], "--max-cost", "'nan' is not a finite number"),
    (ASK + ["--max-cost", "inf"], "--max-cost", "'inf' is not a finite number"),
    (ASK + ["--max-cost", "-1"], "--max-cost", "-1.0 is not in the range x>=0"),
    (ASK + ["--floor", "nan"], "--floor", "'nan' is not a finite number"),
    (ASK + ["--timeout", "nan"], "--timeout", "'nan' is not a finite number"),
    (COMPARE + ["--max-cost", "nan"], "--max-cost", "'nan' is not a finite number"),
    (COMPARE + ["--concurrency", "0"], "--concurrency", "0 is not in the range x>=1"),
    (NEEDLE + ["--max-cost", "nan"], "--max-cost", "'nan' is not a finite number"),
    (["eval", "schema", "-m", "gpt-4o", "--max-cost", "nan"], "--max-cost", "'nan' is not a finite number"),
    (["eval", "schema", "-m", "gpt-4o", "--concurrency", "0"], "--concurrency", "0 is not in the range x>=1"),
    (["eval", "suite", "lost-in-the-middle", "--max-cost", "nan"], "--max-cost", "'nan' is not a finite number"),
    (["eval", "needle", "-m", "gpt-4o", "-l", "0"], "--lengths", "'0' is not a size"),
    (["eval", "kv", "-m", "gpt-4o", "-l", "2k,,x"], "--lengths", "'x' is not a size"),
    (NEEDLE + ["--depths", "150"], "--depths", "'150' is not a number from 0 to 100"),
    (NEEDLE + ["--depths", "-5"], "--depths", "'-5' is not a number from 0 to 100"),
    (NEEDLE + ["--depths", "nan"], "--depths", "'nan' is not a number from 0 to 100"),
    (NEEDLE + ["--floor", "2"], "--floor", "2.0 is not in the range 0<=x<=1"),
    (NEEDLE + ["--concurrency", "0"], "--concurrency", "0 is not in the range x>=1"),
    (["eval", "qa", "-m", "gpt-4o", "--positions", "-1"], "--positions", "'-1' is not a number of 0 or more"),
    (["eval", "report", ".", "--floor", "nan"], "--floor", "'nan' is not a finite number"),
    (ROUTE + ["--max-ttft", "nan"], "--max-ttft", "'nan' is not a finite number"),
    (ROUTE + ["--floor", "nan"], "--floor", "'nan' is not a finite number"),
]


@pytest.mark.parametrize("args, flag, message", REFUSED, ids=[" ".join(a[-2:]) + f"-{i}" for i, (a, _f, _m) in enumerate(REFUSED)])
def test_a_bad_number_is_refused_by_click_in_one_sentence(args, flag, message):
    code, out, err = run(args)
    assert code == 2 and out == ""
    [error] = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert flag in error and message in error and "Traceback" not in err
    assert Ledger().entries() == []          # nothing was paid


def test_the_library_refuses_a_nan_cost_cap_before_any_call(sample_corpus, tmp_path):
    from ragkit.answer import Session
    from ragkit.compare import run_compare
    from ragkit.evals.runner import GridSpec, run_grid
    from ragkit.evals.tasks import make_task

    with LLMServer(responder=lambda req: "Darwin [1]") as srv:
        with Session(sample_corpus, model="gpt-4o-mini", base_url=srv.openai_base_url) as s:
            for bad in (float("nan"), float("inf"), -0.5):
                with pytest.raises(InputError, match="max_cost_usd must be a finite number of dollars"):
                    s.ask("who wrote the origin of species", max_cost_usd=bad)
        grid = GridSpec(task="needle", model="gpt-4o", lengths=(500,), depths=(50.0,), samples=1, strategies=("stuff",))
        with pytest.raises(InputError, match="max_cost_usd must be a finite number"):
            run_grid(make_task("needle"), grid, tmp_path / "grid", base_url=srv.openai_base_url,
                     max_cost_usd=float("nan"), progress=False, echo=lambda m: None)
        with pytest.raises(InputError, match="max_cost_usd must be a finite number"):
            run_compare(sample_corpus, SAMPLE.parent / "questions" / "nq-wiki.jsonl", ["gpt-4o"], tmp_path / "cmp",
                        max_cost_usd=float("nan"), base_url=srv.openai_base_url, progress=False, echo=lambda m: None)
        assert srv.requests == []


@pytest.mark.parametrize("amount, shown", [(0, "$0.00"), (0.0001, "$0.0001"), (0.001, "$0.001"), (0.0042, "$0.0042"),
                                           (0.5, "$0.50"), (0.123456789, "$0.123457"), (5, "$5.00"),
                                           (1234.5, "$1,234.50"), (None, "-")])
def test_dollars_keep_the_digits_that_matter(amount, shown):
    from ragkit.costs import usd

    assert usd(amount) == shown


def test_a_compare_refusal_prints_a_tiny_cap_as_itself(tmp_path):
    with LLMServer(responder=w.responder) as srv:
        w.register_models(srv)
        corpus, golden = w.make_corpus(tmp_path), w.make_golden(tmp_path)
        code, _out, err = run(["compare", str(corpus), "--questions", str(golden), "-m", "big", "--max-cost", "0.0001",
                               "-o", str(tmp_path / "out"), "--cache", str(tmp_path / "c.sqlite"), "-q"])
        assert code == 1 and "exceeds --max-cost $0.0001" in err and "$0.00 " not in err and srv.requests == []
