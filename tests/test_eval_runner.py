"""The grid runner's stages: every prompt rendered once, the cache asked once per prompt, and what a
run pays reaching the ledger. Real tasks, the real cache and the real SDK over HTTP to a local server."""
from __future__ import annotations

from llm_server import LLMServer, Reply

from ragkit.evals.cache import ResponseCache
from ragkit.evals.runner import GridSpec, run_grid
from ragkit.evals.tasks import NeedleTask
from ragkit.ledger import Ledger


class CountingNeedles(NeedleTask):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.rendered: list[str] = []

    def render(self, sample, units, *, retrieved):
        prompt = super().render(sample, units, retrieved=retrieved)
        if units:  # (the empty scaffold is measured once per sample for the cost bound)
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
            assert len(task.rendered) == 8                    # one render per call: 4 samples x 2 strategies
            distinct = len(set(task.rendered))                # (a retrieve prompt may equal another's)
            assert len(cache.asked) == len(set(cache.asked)) == distinct   # one lookup per distinct prompt
        assert len(srv.requests) == distinct                  # and one paid call per distinct prompt
    assert result.calls_made == 0 and result.estimate.cached == 8
    rows = Ledger().entries()
    assert len(rows) == distinct and {r.task for r in rows} == {"eval:needle"}
    assert {r.strategy for r in rows} == {"stuff", "retrieve"}
