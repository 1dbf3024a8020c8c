"""The measured limit, the crossover and the intervals, on hand-made results (no model, no server)."""
from __future__ import annotations

import json

import pytest

from ragkit.evals.records import EvalRecord
from ragkit.evals.report import measured_limit, render_report, summarize, wilson


def records(acc: dict, strategy: str = "stuff", n: int = 10, failed: int = 0) -> list[EvalRecord]:
    """acc: {length: accuracy} -> n scored records per length (+ failed ones), depth 50."""
    return [EvalRecord.from_dict(d) for d in raw_records(acc, strategy, n, failed)]


def raw_records(acc: dict, strategy: str = "stuff", n: int = 10, failed: int = 0) -> list[dict]:
    """The same as JSON objects with only some of a record's fields, like a hand-written or old log."""
    out = []
    for length, a in acc.items():
        hits = round(a * n)
        for i in range(n + failed):
            ok = i < n
            out.append({"call_id": f"{strategy}/L{length}/D50/S{i}", "task": "needle", "model": "gpt-4o-mini",
                        "length": length, "length_unit": "tokens", "depth": 50, "depth_unit": "percent",
                        "strategy": strategy, "sample": i, "status": "ok" if ok else "failed",
                        "score": (1.0 if i < hits else 0.0) if ok else None, "input_tokens": length + 40,
                        "cost_usd": 0.0, "latency_s": 0.1, "prediction": "x" if ok else None})
    return out


def test_limit_is_the_longest_length_before_accuracy_drops_below_90_percent_of_the_shortest():
    limit = measured_limit(records({1000: 1.0, 2000: 0.9, 4000: 0.8, 8000: 1.0}))
    assert limit.floor == pytest.approx(0.9) and limit.length == 2000  # 8K recovering later does not count
    assert not limit.all_passed and limit.prompt_tokens == 2040
    assert limit.first_below == 4000 and not limit.drop_significant  # 8/10 could still be >= 0.9
    sharp = measured_limit(records({1000: 1.0, 2000: 0.2}, n=20))
    assert sharp.length == 1000 and sharp.drop_significant


def test_absolute_floor_and_edge_cases():
    rs = records({1000: 0.8, 2000: 0.7, 4000: 0.5})
    assert measured_limit(rs).length == 1000                       # relative floor 0.72
    assert measured_limit(rs, floor=0.6).length == 2000
    assert measured_limit(rs, floor=0.9).length is None            # below the floor everywhere
    assert measured_limit(records({1000: 0.0, 2000: 0.0})).length is None  # nothing to measure from zero
    flat = measured_limit(records({1000: 1.0, 2000: 1.0}))
    assert flat.length == 2000 and flat.all_passed


def test_failed_calls_are_unscored_not_wrong():
    s = summarize(records({1000: 1.0}, failed=5))["stuff"]["overall"]
    assert s.accuracy == 1.0 and s.n == 10 and s.failed == 5


def test_retrieve_overtakes_stuff_at_the_first_length_it_is_better():
    rs = records({1000: 1.0, 2000: 0.6, 4000: 0.3}) + records({1000: 0.9, 2000: 0.8, 4000: 0.8}, "retrieve")
    assert measured_limit(rs).retrieve_overtakes_at == 2000


def test_wilson_interval():
    lo, hi = wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)


def test_render_report_from_a_log(tmp_path):
    rs = raw_records({1000: 1.0, 2000: 0.5})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs) + '{"cut sho')
    data = render_report(tmp_path, floor=0.4)
    assert data["limit"]["length"] == 2000 and data["limit"]["floor_rule"] == "absolute (--floor)"
    md = (tmp_path / "report.md").read_text()
    assert "| 1K | 100% (72–100) n=10 |" in md and "| 2K | 50% (24–76) n=10 |" in md


def qa_records(scores: dict) -> list[EvalRecord]:
    """scores: {(length, position): [score per question]} -> stuffed QA records (gold placed by position)."""
    return [EvalRecord.from_dict({"call_id": f"stuff/L{L}/D{D}/S{i}", "task": "qa", "model": "gpt-4o-mini",
                                  "length": L, "length_unit": "docs", "depth": D, "depth_unit": "position",
                                  "strategy": "stuff", "sample": i, "status": "ok", "score": s,
                                  "input_tokens": 100, "cost_usd": 0.0, "latency_s": 0.1, "prediction": "x"})
            for (L, D), ss in scores.items() for i, s in enumerate(ss)]


def test_edges_vs_middle_pairs_each_question_and_says_when_the_middle_is_lost():
    from ragkit.evals.report import edges_vs_middle

    # 20 questions at 10 documents: answered at positions 0 and 9 by the first 10, never at 4;
    # position 9 is the last document, so it counts as an edge
    lost = qa_records({(10, 0): [1.0] * 10 + [0.0] * 10, (10, 4): [0.0] * 20, (10, 9): [1.0] * 10 + [0.0] * 10})
    lines = edges_vs_middle(lost)
    row = next(line for line in lines if line.startswith("| stuff | 10 docs"))
    assert "| 50% (n=40) | 0% (n=20) | +50.0 pp [+" in row and row.endswith("| 20 |")
    low = float(row.split("[")[1].split(",")[0])
    assert low > 0  # the interval excludes 0: a dip
    flat = qa_records({(10, 0): [1.0, 0.0] * 10, (10, 4): [1.0, 0.0] * 10, (10, 9): [1.0, 0.0] * 10})
    assert "| +0.0 pp [+0.0, +0.0] | 20 |" in next(line for line in edges_vs_middle(flat) if "10 docs" in line)
    # needle depths are percent of a haystack, not documents: no such table
    assert edges_vs_middle(records({1000: 1.0})) == []


def test_the_report_tests_the_middle_only_where_the_gold_was_read_where_it_was_placed(tmp_path):
    from ragkit.evals.records import RecordLog

    lost = qa_records({(10, 0): [1.0] * 10 + [0.0] * 10, (10, 4): [0.0] * 20, (10, 9): [1.0] * 10 + [0.0] * 10})
    for order, shown in (("document", True), ("edges", False)):
        out = tmp_path / order
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"format": "ragkit-eval/1", "grid": {"stuff_order": order}}))
        log = RecordLog(out)
        for r in lost:
            log.append(r)
        render_report(out, plots=False)
        assert ("## Edges vs middle" in (out / "report.md").read_text()) is shown, order
