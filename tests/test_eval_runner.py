"""The grid runner's stages: every prompt rendered once, the cache asked once per prompt, and what a
run pays reaching the ledger. Real tasks, the real cache and the real SDK over HTTP to a local server."""
from __future__ import annotations

from llm_server import LLMServer, Reply

from ragkit.evals.cache import ResponseCache
from ragkit.evals.records import RecordLog
from ragkit.evals.runner import GridSpec, run_grid
from ragkit.evals.tasks import NeedleTask
from ragkit.ledger import Ledger


class CountingNeedles(NeedleTask):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.rendered: list[str] = []
        self.measured: list[str] = []

    def render(self, sample, units, *, retrieved):
        prompt = super().render(sample, units, retrieved=retrieved)
        if retrieved and len(units) == len(sample.units):
            self.measured.append(prompt)
        elif units:  # (the empty scaffold is measured once per sample for the cost bound)
            self.rendered.append(prompt)
        return prompt


class CountingCache(ResponseCache):
    def __init__(self, path):
        super().__init__(path)
        self.asked: list[str] = []

    def get(self, key):
        self.asked.append(key)
        return super().get(key)


def last_units_first(units, question):
    """A trivial ranker (no embedder): the last units first."""
    return list(range(len(units)))[::-1]


def test_each_prompt_is_rendered_once_and_the_cache_asked_once_per_prompt(tmp_path):
    grid = GridSpec(task="needle", model="gpt-4o-mini", lengths=(500, 1000), depths=(0, 50), samples=1,
                    strategies=("stuff", "retrieve"), retrieve_budget_tokens=200)
    with LLMServer(responder=lambda req: Reply("no idea", input_tokens=300, output_tokens=2)) as srv:
        for run in range(2):  # a fresh run, then a rerun answered from the cache
            task, cache = CountingNeedles(), CountingCache(tmp_path / "cache.sqlite")
            result = run_grid(task, grid, tmp_path / f"run{run}", base_url=srv.openai_base_url, cache=cache,
                              max_cost_usd=1.0, ranker=last_units_first, progress=False, echo=lambda m: None,
                              render=False)
            # one render per call (4 samples x 2 strategies), plus one per sample of all its units joined
            # as retrieve joins them, which measures the framing retrieve reserves per unit
            # (the retrieve budget, 200 tokens, never holds all of a 500-token sample's units)
            assert len(task.measured) == 4 and len(task.rendered) == 8
            sent = task.rendered
            distinct = len(set(sent))                         # (a retrieve prompt may equal another's)
            assert len(cache.asked) == len(set(cache.asked)) == distinct   # one lookup per distinct prompt
        assert len(srv.requests) == distinct                  # and one paid call per distinct prompt
    assert result.calls_made == 0 and result.estimate.cached == 8
    rows = Ledger().entries()
    assert len(rows) == distinct and {r.task for r in rows} == {"eval:needle"}
    assert {r.strategy for r in rows} == {"stuff", "retrieve"}


def first_title(req) -> Reply:
    """Answers with the title of the prompt's first document: an answer only its own order gives."""
    import re

    return Reply(re.search(r"Document \[1\]\(Title: ([^)]*)\)", req.prompt).group(1), input_tokens=300, output_tokens=2)


def qa_grid(stuff_order: str) -> GridSpec:
    return GridSpec(task="qa", model="gpt-4o-mini", lengths=(10,), depths=(0, 4, 9), samples=2,
                    stuff_order=stuff_order, task_options={"distractors": "random"})


def test_the_two_stuff_orders_never_share_a_cached_answer(tmp_path):
    """Same questions, same documents, same cache: the edges run pays for every prompt its order
    changed and logs the answer to its own prompt, never the file-order run's."""
    from ragkit.evals.retrieval import stuff_units
    from ragkit.evals.tasks import QATask
    from ragkit.tokens import counter_for
    from ragkit.models import get_model

    cache = ResponseCache(tmp_path / "cache.sqlite")
    runs = {}
    with LLMServer(responder=first_title) as srv:
        for stuff_order in ("document", "edges"):
            before = len(srv.requests)
            runs[stuff_order] = run_grid(QATask(distractors="random"), qa_grid(stuff_order), tmp_path / stuff_order,
                                         base_url=srv.openai_base_url, cache=cache, max_cost_usd=1.0,
                                         progress=False, echo=lambda m: None, render=False, ledger=None)
            runs[stuff_order + "_paid"] = len(srv.requests) - before
    task = QATask(distractors="random")
    samples = task.samples(counter_for(get_model("gpt-4o-mini")), (10,), (0, 4, 9), 2)
    def prompts(stuff_order):
        return {tuple(s.meta["passage_ids"][i] for i in stuff_units(task.ranking_texts(s), s.question,
                                                                     order=stuff_order)) for s in samples}

    # Edges ranks the same documents the same wherever the gold was placed: one prompt per question.
    assert runs["document_paid"] == len(prompts("document")) == 6 and len(prompts("edges")) == 2
    assert runs["edges_paid"] == len(prompts("edges") - prompts("document")) == 2   # (so a shared answer would show)
    for stuff_order in ("document", "edges"):
        for r in RecordLog(tmp_path / stuff_order).read():
            s = next(x for x in samples if (x.depth, x.sample) == (r.depth, r.sample))
            first = stuff_units(task.ranking_texts(s), s.question, order=stuff_order)[0]
            assert r.prediction == task.by_id[s.meta["passage_ids"][first]]["title"]


def test_a_run_folder_keeps_one_stuff_order(tmp_path):
    """Resuming a file-order folder with the other order would replace its answers: refused, nothing lost."""
    import pytest

    from ragkit.errors import InputError
    from ragkit.evals.tasks import QATask

    with LLMServer(responder=first_title) as srv:
        kw = dict(base_url=srv.openai_base_url, cache=ResponseCache(tmp_path / "cache.sqlite"), max_cost_usd=1.0,
                  progress=False, echo=lambda m: None, render=False, ledger=None)
        run_grid(QATask(distractors="random"), qa_grid("document"), tmp_path / "run", **kw)
        log = (tmp_path / "run" / "results.jsonl").read_text()
        with pytest.raises(InputError, match="--stuff-order document"):
            run_grid(QATask(distractors="random"), qa_grid("edges"), tmp_path / "run", **kw)
        assert (tmp_path / "run" / "results.jsonl").read_text() == log
        run_grid(QATask(distractors="random"), qa_grid("document"), tmp_path / "run", **kw)  # resuming is fine


def test_an_unknown_stuff_order_is_refused_when_the_grid_is_made():
    import pytest

    from ragkit.errors import InputError

    with pytest.raises(InputError, match="stuff order 'middle': use document or edges"):
        qa_grid("middle")
