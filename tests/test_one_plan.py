"""One plan: `ragkit plan`, Session.prepare (`ragkit ask` and its dry run) and the eval decide the same,
and ask sends what the plan promised. Real files in tmp folders, the real CLI, real counting; the slow
sweep also retrieves through the real index."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragkit.answer import Session
from ragkit.budget import plan, plan_for_sources
from ragkit.cli import main
from ragkit.errors import InputError
from ragkit.loaders import Document
from ragkit.models import get_model
from ragkit.prompt import Framing, as_sources, build_prompt
from ragkit.tokens import counter_for

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "when did the railway bridge open?"
# Words that tokenize differently at a fence's edge: digits, punctuation, quotes, brackets, tags, non-Latin.
VOCAB = ("river bridge city council museum railway opened century harbour market tower library garden school "
         "festival 1932 2,579 Röntgen naïve — “quoted” (aside) [note] <b> x=1 a/b 漢字 🎉 don't e.g. ...").split()
MODELS = ("gpt-4o-mini", "claude-3.5-haiku", "qwen2.5-coder-0.5b-local")  # exact, estimated, tiny budget


def texts(seed: int, n: int, words=(30, 45)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(*words))) + rng.choice([".", "", " 42", "!"])
            for _ in range(n)]


def write_corpus(folder: Path, docs: list[str]) -> Path:
    """doc0000.txt ... as given; files beyond them are removed (the folder, and its index, is reused)."""
    folder.mkdir(exist_ok=True)
    names = {f"doc{i:04d}.txt" for i in range(len(docs))}
    for old in folder.glob("doc*.txt"):
        if old.name not in names:
            old.unlink()
    for i, text in enumerate(docs):
        path = folder / f"doc{i:04d}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return folder


def cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def subprocess_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ragkit.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def whole_prompt_tokens(counter, question: str, docs) -> int:
    """Every document rendered into the real prompt and counted as the plan counts (margin included)."""
    system, user = build_prompt(question, as_sources(docs))
    return counter.planning_tokens(counter.count(system) + counter.count(user))


# ---- the reported case -------------------------------------------------------------------------

def test_plan_and_ask_agree_on_400_short_documents(tmp_path):
    """The issue's case: plan said stuff (a 20-token fence per document), ask said retrieve (the real ~47)."""
    docs = texts(400, 400, words=(26, 28))
    corpus = write_corpus(tmp_path / "c400", docs)
    counter = counter_for("gpt-4o-mini")
    assert 45 <= sum(counter.count_many(docs)) / 400 <= 55          # ~50 o200k tokens each
    planned = subprocess_cli("plan", corpus, "-m", "gpt-4o-mini", "--question", QUESTION, "--json")
    asked = subprocess_cli("ask", corpus, QUESTION, "-m", "gpt-4o-mini", "--dry-run", "--json")
    assert planned.returncode == 0 and asked.returncode == 0, planned.stderr + asked.stderr
    p, a = json.loads(planned.stdout), json.loads(asked.stdout)
    assert a["plan"] == p and a["strategy"] == p["strategy"] == "stuff"
    assert a["estimated_input_tokens"] == p["estimated_input_tokens"]   # exact model: the very figure
    assert a["estimated_cost_usd"] == p["estimated_cost_usd"]
    assert len(a["context"]) == 400
    # and the decision is right: the whole prompt really fits the practical limit with the answer
    whole = whole_prompt_tokens(counter, QUESTION, [Document(d.name, d.name, d.read_text()) for d in
                                                    sorted(corpus.glob("doc*.txt"))])
    assert whole == p["estimated_input_tokens"] and whole + p["answer_tokens"] <= p["practical_limit_tokens"]


# ---- the counting underneath ---------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_framing_adds_up_to_the_rendered_prompt_exactly(model):
    counter = counter_for(model)
    framing = Framing(counter)
    rng = random.Random(model)
    for trial in range(60):
        n = rng.choice([1, 2, 5, 13])
        docs = [Document(f"notes/f{i}.jsonl#r{i}" if i % 2 else f"d{i}.md", f"notes/f{i}.jsonl" if i % 2 else f"d{i}.md",
                         f"  {t}\n" if i % 3 == 0 else t, {"title": texts(trial + i, 1, (1, 4))[0]} if i % 2 else {})
                for i, t in enumerate(texts(trial, n, (1, 30)))]
        question = texts(-trial, 1, (1, 12))[0]
        system, user = build_prompt(question, docs)
        assert counter.count(system) + counter.count(user) == \
            framing.scaffold_tokens(question) + framing.count_sources(as_sources(docs), use_cache=False).prompt_tokens
    # past 999 sources the numbers take two digit groups; still exact
    docs = [Document(f"big.jsonl#{i}", "big.jsonl", f"fact {i}.") for i in range(1003)]
    system, user = build_prompt("q?", docs)
    assert counter.count(system) + counter.count(user) == \
        framing.scaffold_tokens("q?") + framing.count_sources(as_sources(docs), use_cache=False).prompt_tokens


def test_fence_tags_cost_the_same_whatever_the_content():
    counter = counter_for("gpt-4o")
    tags = {re.search(r"<(source-\d{8}) n=", build_prompt("q", [Document("a", "a", t)])[1]).group(1)
            for t in texts(5, 200, (1, 5))}
    assert len(tags) > 150 and len({counter.count(f"<{t} n=") for t in tags}) == 1


# ---- plan == ask around the boundary ---------------------------------------------------------------

def boundary_corpora(model: str, pool: list[str], answer_tokens: int) -> list[list[str]]:
    """Document lists whose stuffed prompts land on both sides of the model's budget: n* - 4 .. n* + 3
    whole documents around the most that fit, and the last of the n* grown word by word across the
    budget (the nearest a token or two either side)."""
    spec = get_model(model)
    framing = Framing(counter_for(spec))

    def fits(docs: list[str]) -> bool:
        sources = as_sources([Document(f"doc{i:04d}.txt", f"doc{i:04d}.txt", t) for i, t in enumerate(docs)])
        counts = framing.count_sources(sources, use_cache=False)
        return plan_for_sources(spec, sources, QUESTION, answer_tokens=answer_tokens, counts=counts).strategy == "stuff"

    lo, hi = 1, len(pool)
    assert fits(pool[:lo]) and not fits(pool[:hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(pool[:mid]) else (lo, mid)
    n = lo                                                     # pool[:n] fits, pool[:n + 1] does not
    extra = pool[n].split()
    grown = [pool[:n - 1] + [" ".join([pool[n - 1], *extra[:i]])] for i in range(len(extra) + 1)]
    last = max(i for i, docs in enumerate(grown) if fits(docs))
    assert last < len(extra)
    return [pool[:m] for m in (n - 4, n - 2, n, n + 1, n + 3)] + grown[max(0, last - 1):last + 3]


def check_plan_equals_ask(folder: Path, model: str, answer_tokens: int, *, retrieve: bool) -> str:
    """`ragkit plan` (the CLI), Session.plan and Session.prepare agree; the prompt prepared is within
    the plan's figure (equal to it when stuffing); the decision is right about the real whole prompt."""
    spec = get_model(model)
    counter = counter_for(spec)
    code, out, err = cli("plan", folder, "-m", model, "--question", QUESTION, "--answer-tokens", answer_tokens, "--json")
    assert code == 0, err
    planned = json.loads(out)
    with Session(folder, model=model, ledger=False) as s:
        p = s.plan(QUESTION, answer_tokens=answer_tokens)
        docs = s.documents()
        assert p.to_dict() == planned
        whole = whole_prompt_tokens(counter, QUESTION, docs)
        assert (p.strategy == "stuff") == (whole + answer_tokens <= spec.practical_limit_tokens), (whole, p)
        if p.strategy == "retrieve" and not retrieve:
            return p.strategy
        prepared = s.prepare(QUESTION, answer_tokens=answer_tokens)
    assert prepared.plan == p                                   # same strategy, budget, reserve, reason, cost
    sent = counter.planning_tokens(counter.count(prepared.system) + counter.count(prepared.user))
    assert sent == prepared.estimated_input_tokens <= p.estimated_input_tokens
    assert sent + p.answer_tokens <= spec.practical_limit_tokens
    assert prepared.estimated_cost_usd <= p.estimated_cost_usd
    if p.strategy == "stuff":
        assert sent == whole == p.estimated_input_tokens and len(prepared.context) == len(docs)
        assert prepared.estimated_cost_usd == p.estimated_cost_usd
    return p.strategy


@pytest.mark.parametrize("model", MODELS)
def test_plan_equals_ask_around_the_boundary(tmp_path, model):
    """Around each model's real boundary: plan and ask agree on every corpus; ask's side is prepared
    whenever it stuffs (retrieving it needs the index: the slow sweep below)."""
    answer_tokens = 200
    corpora = boundary_corpora(model, texts(11, 1200), answer_tokens)
    seen = [check_plan_equals_ask(write_corpus(tmp_path / "c", docs), model, answer_tokens, retrieve=False)
            for docs in corpora]
    assert len(corpora) >= 8 and {"stuff", "retrieve"} <= set(seen)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_plan_equals_ask_around_the_boundary_retrieving_too(tmp_path, model):
    """As above, with ask's retrieve side prepared through the real index (one folder, updated in
    place, so each corpus embeds only its changed file), and `ask --dry-run` in a real process on
    both sides of the boundary; and `ragkit plan` on an indexed folder still loads no FAISS."""
    answer_tokens = 200
    corpora = boundary_corpora(model, texts(11, 1200), answer_tokens)
    folder = tmp_path / "c"
    seen = [check_plan_equals_ask(write_corpus(folder, docs), model, answer_tokens, retrieve=True) for docs in corpora]
    assert {"stuff", "retrieve"} <= set(seen)
    for docs in (corpora[0], corpora[-1]):
        write_corpus(folder, docs)
        planned = subprocess_cli("plan", folder, "-m", model, "--question", QUESTION, "--answer-tokens", answer_tokens, "--json")
        asked = subprocess_cli("ask", folder, QUESTION, "-m", model, "--answer-tokens", answer_tokens, "--dry-run",
                               "--json")
        assert planned.returncode == asked.returncode == 0, planned.stderr + asked.stderr
        assert json.loads(asked.stdout)["plan"] == json.loads(planned.stdout)
    code = ("import sys; from click.testing import CliRunner; from ragkit.cli import main;"
            f"r = CliRunner().invoke(main, ['plan', {str(folder)!r}, '-m', {model!r}]); assert r.exit_code == 0, r.output;"
            "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'faiss', 'sentence_transformers', 'openai', 'anthropic')])")
    assert (folder / ".ragkit").is_dir()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


# ---- the plan's words ----------------------------------------------------------------------------

def test_forced_strategies_say_what_happens(tmp_path):
    corpus = write_corpus(tmp_path / "c", texts(7, 400, words=(26, 28)))
    with Session(corpus, model="gpt-4o-mini", ledger=False) as s:
        chosen = s.plan(QUESTION)
        forced = s.plan(QUESTION, strategy="retrieve")
    assert chosen.strategy == "stuff" and not chosen.forced
    assert forced.strategy == "retrieve" and forced.forced and forced.budget_tokens == chosen.budget_tokens
    assert forced.reason.startswith("Retrieval forced (--strategy retrieve): the 400 documents")
    assert "would fit" in forced.reason and "packs them into that budget" in forced.reason
    assert "all of them go into the prompt" not in forced.reason
    code, out, _ = cli("plan", corpus, "-m", "gpt-4o-mini", "--question", QUESTION, "-s", "retrieve")
    assert code == 0 and "strategy:        retrieve (forced)" in out and "would fit" in out

    # Stuffing past the practical limit (a 6,000-token answer leaves too little) but inside the window:
    # allowed, with a warning, so a user can test the limit by hand.
    code, out, err = cli("ask", corpus, QUESTION, "-m", "gpt-4o-mini", "-s", "stuff", "--answer-tokens", 6000, "--dry-run", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["strategy"] == "stuff" and data["plan"]["forced"] and len(data["context"]) == 400
    assert data["plan"]["reason"].startswith("Stuffing forced (--strategy stuff)") and "context window" in data["plan"]["reason"]
    assert err.startswith("ragkit: warning: stuffing passes GPT-4o-mini's practical limit of 32,000 tokens by ")
    assert data["input_tokens"] + 6000 > 32_000

    # Past the context window: refused in one sentence that says what to do.
    code, out, err = cli("ask", corpus, QUESTION, "-m", "local", "-s", "stuff", "--dry-run")
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("Error: the 400 documents in their source fences (") and "32,768-token context window" in line
    assert line.endswith("so they cannot be stuffed; use --strategy retrieve.")
    assert not re.search(r"[.;:]\s+[A-Z]", line[len("Error: "):])        # no sentence inside the sentence


# ---- stuffed documents ordered against lost-in-the-middle --------------------------------------------

def test_stuffed_documents_put_the_best_matches_at_the_edges(tmp_path):
    rng = random.Random(3)
    docs = [" ".join(rng.choice("museum harbour market tower library garden school festival".split()) for _ in range(25))
            for _ in range(6)]
    docs[2] = "The railway bridge opened in 1932; when did it open to walkers? The bridge did a year later."  # best
    docs[4] = "A bridge crossed the river long before the railway came."                                        # second
    corpus = write_corpus(tmp_path / "c", docs)
    with Session(corpus, model="gpt-4o-mini", ledger=False) as s:
        edged = s.prepare(QUESTION)
        in_files = s.prepare(QUESTION, order="document")
        with pytest.raises(InputError, match="use edges or document"):
            s.prepare(QUESTION, order="score")
    assert edged.strategy == "stuff" and edged.plan == in_files.plan
    order = [c.doc_id for c in edged.context]
    assert order[0] == "doc0002.txt" and order[-1] == "doc0004.txt" and sorted(order) == sorted(f.name for f in corpus.glob("*.txt"))
    assert [c.number for c in edged.context] == list(range(1, 7))
    assert re.findall(r'n="(\d+)" path="([^"]+)"', edged.user) == [(str(c.number), c.doc_id) for c in edged.context]
    assert [c.doc_id for c in in_files.context] == [f"doc{i:04d}.txt" for i in range(6)]
    assert edged.input_tokens == in_files.input_tokens                    # the order costs nothing
    code, out, err = cli("ask", corpus, QUESTION, "--order", "document", "--dry-run", "--json")
    assert code == 0, err
    assert [c["doc_id"] for c in json.loads(out)["context"]] == [f"doc{i:04d}.txt" for i in range(6)]


# ---- the eval uses the same planner and ordering ---------------------------------------------------

def test_eval_retrieve_budget_reserves_the_eval_prompt_as_rendered():
    from ragkit.evals.retrieval import planner_budget, stuff_units
    from ragkit.evals.tasks import NeedleTask

    spec = get_model("gpt-4o-mini")
    counter = counter_for(spec)
    task = NeedleTask()
    sample = task.make_sample(counter, 2000, 50, 0)
    scaffold = counter.count(task.system) + counter.count(task.render(sample, [], retrieved=True))
    assert planner_budget(spec, task, sample, 64) == spec.practical_limit_tokens - scaffold - 64
    assert planner_budget(spec, task, sample, 64) == plan(spec, corpus_tokens=0, instructions_tokens=scaffold,
                                                          question_tokens=0, answer_tokens=64).budget_tokens
    units = ["nothing here", "the railway bridge opened in 1932", "more filler", "a bridge", "filler again"]
    assert stuff_units(units, QUESTION) == [0, 1, 2, 3, 4]
    edged = stuff_units(units, QUESTION, order="edges")
    assert edged[0] == 1 and edged[-1] == 3 and sorted(edged) == [0, 1, 2, 3, 4]
    with pytest.raises(InputError):
        stuff_units(units, QUESTION, order="middle")


def qa_task(tmp_path, passages: list[dict], question: str, answer: str):
    """(corpus folder, QATask) over these passages (one JSONL file) and one question whose gold passage is "gold"."""
    from ragkit.evals.tasks import QATask

    corpus = tmp_path / "passages"
    corpus.mkdir()
    (corpus / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": question, "answers": [answer], "passage_id": "gold"}) + "\n")
    return corpus, QATask(corpus=corpus, questions=questions, distractors="random")


def test_eval_stuffs_qa_documents_in_the_order_ask_would_send_them(tmp_path):
    """The eval's `--stuff-order edges` is ask's order, not a look-alike: the same passages as a JSONL
    corpus, the same question, the same prompt order. The question shares only the word "title" with
    the distractors, which ask never sees (a JSONL title is a field) and the eval's rendered
    "(Title: ...)" units all hold: ranking those would sort the distractors by length, not keep file order."""
    from ragkit.evals.retrieval import stuff_units
    from ragkit.evals.tasks import QATask

    rng = random.Random(5)
    filler = "museum harbour market tower library garden school festival council century".split()
    passages = [{"id": "gold", "title": "Skyfall", "text": "Adele sang the Skyfall theme song in 2012."}]
    passages += [{"id": f"d{i}", "title": f"Place {i}",
                  "text": " ".join(rng.choice(filler) for _ in range(rng.randint(8, 60))) + "."} for i in range(9)]
    corpus, task = qa_task(tmp_path, passages, "who sang the skyfall title song", "Adele")
    counter = counter_for(get_model("gpt-4o-mini"))
    by_unit = {QATask.unit(p): p["id"] for p in passages}
    for position in (0, 4, 9):
        sample = task.make_sample(counter, 10, position, 0)
        ids = [by_unit[u] for u in sample.units]
        # ask, over the same passages in the same file order
        (corpus / "passages.jsonl").write_text(
            "".join(json.dumps(next(p for p in passages if p["id"] == i)) + "\n" for i in ids))
        with Session(corpus, model="gpt-4o-mini", ledger=False) as s:
            asked = s.prepare(sample.question, strategy="stuff", order="edges")
        ask_order = [c.doc_id.rsplit("#", 1)[-1] for c in asked.context]
        eval_order = [ids[i] for i in stuff_units(task.ranking_texts(sample), sample.question, order="edges")]
        assert ask_order[0] == "gold" and eval_order == ask_order


def test_eval_retrieve_in_document_order_keeps_the_units_file_order():
    """As ask's `--order document` keeps retrieved chunks in corpus order: unit 10 comes after unit 2
    (the units' ids are numbers, not strings to sort)."""
    from ragkit.evals.retrieval import retrieve_units

    units = [f"unit number {i} says something of its own, {i * 7}" for i in range(12)]
    counter = counter_for(get_model("gpt-4o-mini"))
    best_last = lambda texts, query: list(range(len(texts)))[::-1]  # noqa: E731 - a known ranking, no embedder
    assert retrieve_units(units, QUESTION, 10_000, counter, order="document", ranker=best_last) == list(range(12))
    edged = retrieve_units(units, QUESTION, 10_000, counter, order="edges", ranker=best_last)
    assert edged[0] == 11 and edged[-1] == 10


def test_eval_retrieve_fits_the_rendered_documents_into_the_budget_and_caps_at_asks_top_k(tmp_path):
    """The eval's retrieve prompt is the one ask would send: each packed QA document costs its text plus
    its "Document [i](Title: …)" framing, and the rendered documents never pass the planner's budget;
    like ask, at most DEFAULT_TOP_K units are sent however much room is left."""
    from ragkit.evals.retrieval import retrieve_units
    from ragkit.retrieve import DEFAULT_TOP_K

    rng = random.Random(11)
    words = "river bridge tower market harbour garden council library".split()
    passages = [{"id": "gold", "title": "Bridge", "text": "The railway bridge opened in 1932."}]
    passages += [{"id": f"d{i}", "title": f"A long title for place number {i}",
                  "text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "."} for i in range(39)]
    _, task = qa_task(tmp_path, passages, QUESTION, "1932")
    counter = counter_for(get_model("gpt-4o-mini"))
    sample = task.make_sample(counter, 40, 0, 0)
    unit_tokens = counter.count_many(sample.units)
    framing = task.unit_framing_tokens(sample, counter, unit_tokens)
    assert framing >= 3  # "Document [i]" and the line break: 10% of a short unit, which overfills if left out
    empty = counter.count(task.render(sample, [], retrieved=True))
    in_order = lambda texts, query: list(range(len(texts)))  # noqa: E731 - a known ranking, no embedder
    for budget in range(40, 1200, 37):
        chosen = retrieve_units(sample.units, sample.question, budget, counter, ranker=in_order,
                                per_unit_tokens=framing)
        rendered = counter.count(task.render(sample, [sample.units[i] for i in chosen], retrieved=True)) - empty
        assert rendered <= budget, (budget, len(chosen), rendered)
        assert len(chosen) <= DEFAULT_TOP_K
    assert len(chosen) == DEFAULT_TOP_K  # the largest budget holds all 40: the cap, not the budget, stopped it
