"""The lost-in-the-middle eval harness: tasks, grid runner, scorers, reports.

    from ragkit.evals import GridSpec, make_task, run_grid, render_report
"""
from __future__ import annotations

from ragkit.evals.records import EvalRecord
from ragkit.evals.report import measured_limit, render_report, save_measured_limit
from ragkit.evals.runner import GridSpec, RunResult, run_grid
from ragkit.evals.scoring import best_subspan_em, normalize_answer
from ragkit.evals.tasks import Needle, Sample, make_task

__all__ = ["EvalRecord", "GridSpec", "RunResult", "run_grid", "render_report", "measured_limit", "save_measured_limit",
           "best_subspan_em", "normalize_answer", "Needle", "Sample", "make_task"]
